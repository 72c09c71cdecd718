"""``desomspark <command>``: sort survey exposures by image quality (see README.md, "Command line").

Each command parses its arguments, loads the configuration, builds what it
needs (Spark session, lake, MLflow) and calls one library function.  Errors a
user can act on (:class:`errors.DesomsparkError`: bad arguments, unusable
input, MLflow unreachable) end with one line on stderr and a non-zero exit
status; any other exception is a bug and shows its traceback.

The commands import their stage inside the function that runs it: ``label``
or ``--help`` must not pay for importing Spark, torch and MLflow.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from desomspark import logs
from desomspark.config import Config, conf_dir, load_config
from desomspark.errors import DesomsparkError, UserError

EXIT_BAD_ARGS = 2
EXIT_FAILED = 1


def _camera(text: str) -> str:
    from desomspark.ingest.camera import load_profiles

    if text not in load_profiles():
        raise argparse.ArgumentTypeError(
            f"unknown camera {text!r}: known are {', '.join(sorted(load_profiles()))}"
        )
    return text


def _night(value: str) -> str:
    """A night as YYYYMMDD that is a date of the calendar (20201340 is not)."""
    try:
        if re.fullmatch(r"\d{8}", value):
            datetime.strptime(value, "%Y%m%d")
            return value
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date of the calendar (YYYYMMDD)") from None
    raise argparse.ArgumentTypeError(f"night must be YYYYMMDD, not {value!r}")


def _cell(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", value)
    if not m:
        raise argparse.ArgumentTypeError(f"expected X,Y, not {value!r}")
    return int(m.group(1)), int(m.group(2))


def _exposure(value: str) -> tuple[str, str]:
    night, _, exposure_id = value.partition("/")
    if not exposure_id:
        raise argparse.ArgumentTypeError(f"expected NIGHT/ID (e.g. 20251120/1000021), not {value!r}")
    return _night(night), exposure_id


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value}")
    return n


def _command(
    sub, name: str, help: str, lake: bool = True, lake_required: bool = True
) -> argparse.ArgumentParser:
    """A sub-command with the options every command takes (--master, --conf, -v/-q, --lake)."""
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--master", default=None, help="Spark master (default: conf, local[*])")
    p.add_argument("--conf", default=None, help="YAML file merged over conf/default.yaml")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", help="show Spark's and MLflow's own log lines")
    loud.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    if lake:
        p.add_argument(
            "--lake",
            required=lake_required,
            default=None if lake_required else "./lake",
            help="lake root: a local path or a URL Spark and fsspec can write",
        )
    return p


def _files_in(p, input_help: str) -> None:
    """The arguments of the commands that read FITS files: where, which night, which camera."""
    p.add_argument("--input", required=True, help=input_help)
    p.add_argument(
        "--night",
        type=_night,
        default=None,
        metavar="YYYYMMDD",
        help="night of every file (default: each file's DATE-OBS/MJD-OBS, dayobs convention)",
    )
    p.add_argument(
        "--camera",
        type=_camera,
        default=None,
        help="camera profile of conf/cameras (default: from each file's INSTRUME)",
    )


def _pipeline_commands(sub) -> None:
    """The stages, in the order a night goes through them."""

    def command(*args, **kwargs):
        return _command(sub, *args, **kwargs)

    p = command("simulate", "write a simulated night of FITS exposures", lake=False)
    p.add_argument("--out", required=True)
    p.add_argument("--exposures", type=_positive, required=True)
    p.add_argument("--ccds", type=_positive, default=None)
    p.add_argument("--ccd-shape", type=_positive, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", choices=("balanced", "survey"), default="balanced")
    p.add_argument(
        "--classes",
        default=None,
        help="comma-separated classes the night may hold (default: the paper's six and Streak; "
        "Pickup and AmpGlow add defects of the sky between sources)",
    )
    p.add_argument("--compress", action="store_true", help="Rice-compress the CCDs (.fits.fz)")
    p.add_argument(
        "--raw",
        nargs="?",
        const="amplifiers",
        default=None,
        choices=("amplifiers", "segments"),
        help="write raw frames as the camera reads them: 'amplifiers' (the default) two amplifiers "
        "with overscan per CCD HDU, as MegaCam; 'segments' one HDU per amplifier, as LSST",
    )
    p.add_argument("--processes", type=_positive, default=None)

    p = command("ingest", "FITS exposures -> exposures/ ccds/ cutouts/ rejects/")
    _files_in(p, "file, directory or glob (local or URL)")

    p = command("train-desom1", "train DESOM-1 on the lake's cutouts (DDP via TorchDistributor)")
    p.add_argument("--iterations", type=_positive, default=None)
    p.add_argument("--processes", type=_positive, default=1)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--sample", type=_positive, default=None, help="cutouts in the training sample")
    p.add_argument("--resume", action="store_true", help="continue the last interrupted run")
    p.add_argument("--batch-size", type=_positive, default=None)
    p.add_argument("--cluster", action="store_true", help="run the processes on executors (local_mode=False)")

    p = command("histovectors", "cutouts -> DESOM-1 nodes -> 625-bin histo-vector per exposure")
    p.add_argument("--desom1", default=None, help="MLflow model URI (default models:/desom1@champion)")
    p.add_argument(
        "--night", type=_night, default=None, metavar="YYYYMMDD", help="only this night (default: all)"
    )

    p = command("train-desom2", "train DESOM-2 on the lake's histo-vectors")
    p.add_argument("--iterations", type=_positive, default=None)
    p.add_argument(
        "--draws", type=_positive, default=None, help="DESOM-2 draws to fit, one kept (default desom2.draws)"
    )
    p.add_argument("--desom1", default=None, help="DESOM-1 version whose histo-vectors to use")

    p = command("assign", "histo-vector -> DESOM-2 cell for each exposure")
    p.add_argument("--desom2", default=None, help="MLflow model URI (default models:/desom2@champion)")
    p.add_argument(
        "--night", type=_night, default=None, metavar="YYYYMMDD", help="only this night (default: all)"
    )

    p = command("nightly", "ingest -> histo-vectors -> assign for one night, with the champion models")
    p.add_argument("--input", required=True, help="file, directory or glob (local or URL)")
    p.add_argument(
        "--night", type=_night, required=True, metavar="YYYYMMDD", help="the night these files belong to"
    )
    p.add_argument(
        "--camera",
        type=_camera,
        default=None,
        help="camera profile of conf/cameras (default: from each file's INSTRUME)",
    )


def _map_commands(sub) -> None:
    """What people do with the map: look, label, promote, export, search, score."""

    def command(*args, **kwargs):
        return _command(sub, *args, **kwargs)

    p = command("serve", "the console: browse, label and search the map in a browser (README: the console)")
    p.add_argument("--host", default=None, help="address to bind (default: conf console.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: conf console.port, 8050)")

    p = command(
        "watch", "sort each exposure as it lands in a folder (Spark Structured Streaming), with alerts"
    )
    _files_in(p, "the arrival folder the camera writes to (README: the live night)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop after this many seconds (default: run until stopped)",
    )

    p = command("report", "write the HTML report of the lake")
    p.add_argument("--out", required=True)

    p = command("promote", "move alias 'champion' to a model version")
    p.add_argument("--model", choices=("desom1", "desom2"), required=True)
    p.add_argument(
        "--version",
        required=True,
        help="the registered version to promote, e.g. 3, or 'challenger': the one the last training made",
    )

    p = command("label", "label a DESOM-2 cell, or one exposure (its own label overrides its cell's)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--cell",
        type=_cell,
        metavar="X,Y",
        help="the cell: X = column, Y = row on the DESOM-2 map, from 0 (as the report shows)",
    )
    which.add_argument(
        "--exposure", type=_exposure, metavar="NIGHT/ID", help="one exposure, e.g. 20251120/1000021"
    )
    p.add_argument("--label", default=None, help="the label, e.g. Good or BT")
    p.add_argument(
        "--add",
        action="store_true",
        help="the label is a new one (not in conf labels.vocabulary nor the lake)",
    )
    p.add_argument("--unlabel", action="store_true", help="remove the label")
    p.add_argument("--undo", action="store_true", help="revert the last change of this cell or exposure")

    p = command("verdicts", "write a night's verdicts: the scheduler's feed (decision, p_bad, reason)")
    p.add_argument("--night", type=_night, required=True, help="the night, YYYYMMDD")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--format", choices=("csv", "json"), default="csv")

    p = command("check", "read every file and commit record of the lake; --repair quarantines what is broken")
    p.add_argument(
        "--repair",
        action="store_true",
        help="move unreadable files to _quarantine/, finish interrupted commits, remove staging "
        "folders of runs that died over a day ago",
    )

    p = command("export", "write exposure -> cell -> label")
    p.add_argument("--format", choices=("csv", "parquet"), required=True)
    p.add_argument("--out", required=True)

    p = command("similar", "exposures nearest to one in the DESOM-2 latent space")
    p.add_argument("--exposure", required=True, help="exposure id (EXPNUM, or the file name without suffix)")
    p.add_argument("-k", type=_positive, default=10, help="how many exposures, itself first (default 10)")

    p = command("filter", "exposures rich in one DESOM-1 node")
    p.add_argument(
        "--node",
        type=_cell,
        required=True,
        metavar="X,Y",
        help="the DESOM-1 node: X = column, Y = row on the 25x25 map, from 0",
    )
    p.add_argument(
        "--min-fraction",
        type=float,
        required=True,
        metavar="F",
        help="least share of an exposure's detections on that node, 0 to 1 (e.g. 0.02)",
    )

    p = command("evaluate", "score the map against ground-truth labels (simulated data)")
    p.add_argument(
        "--out", default=None, help="folder of the tables and t-SNE picture (default <lake>/evaluation)"
    )
    p = command("demo", "simulate a small night and run the whole chain on it", lake_required=False)
    p.add_argument("--exposures", type=_positive, default=140, help="exposures of the first night (140)")
    p.add_argument(
        "--train-desom1",
        action="store_true",
        help="train DESOM-1 too (default: the shipped one maps cutouts)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="desomspark", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _pipeline_commands(sub)
    _map_commands(sub)
    return parser


# --- commands -----------------------------------------------------------------


def _spark(args, cfg: Config):
    from desomspark.stages.spark import get_spark

    return get_spark(cfg.spark, master=args.master, quiet=not args.verbose)


def _lake(args, create: bool = False):
    """The lake of ``--lake``.  Only the commands that write a new night may create one: for the
    others a missing or empty folder is a typo, answered before Spark or MLflow touch anything.
    """
    from desomspark.lake.layout import Lake

    lake = Lake(args.lake)
    if not create:
        if not lake.fs.exists(lake._fs_path(lake.root)):
            raise UserError(f"lake {args.lake} does not exist (ingest or nightly create a lake)")
        if not lake.exists("exposures"):
            raise UserError(
                f"{args.lake} is not a desomspark lake: it has no exposures/ table (run ingest first)"
            )
    return lake


def cmd_simulate(args, cfg: Config) -> int:
    from desomspark.evaluation.simulate import CLASSES, simulate_night

    sim = cfg.simulate
    if args.ccds or args.ccd_shape:
        from desomspark.evaluation.simulate import small_config

        sim = small_config(sim, args.ccds or sim.n_ccds, tuple(args.ccd_shape or sim.ccd_shape))
    paths = simulate_night(
        args.out,
        args.exposures,
        replace(sim),
        seed=args.seed,
        mix=args.mix,
        compress=args.compress,
        raw=args.raw,
        processes=args.processes,
        classes=tuple(c.strip() for c in args.classes.split(",")) if args.classes else CLASSES,
    )
    print(f"simulate: wrote {len(paths)} exposures and truth.csv to {Path(args.out).resolve()}")
    return 0


def cmd_ingest(args, cfg: Config) -> int:
    from desomspark.ingest.fitsio import list_inputs
    from desomspark.stages.ingest import ingest, main_summary_exit

    list_inputs(args.input)  # nothing to read: say so before Spark starts
    spark = _spark(args, cfg)
    lake = _lake(args, create=True)
    summary = ingest(spark, args.input, lake, night=args.night, cfg=cfg.ingest, camera=args.camera)
    status = main_summary_exit(summary)
    if status == 0:
        print(
            f"next: desomspark histovectors --lake {args.lake} (then assign), or train-desom1 on a new lake; "
            f"a whole night in one command: desomspark nightly"
        )
    return status


def cmd_train_desom1(args, cfg: Config) -> int:
    from desomspark.stages.train_desom1 import train_desom1

    lake = _lake(args)
    train_desom1(
        _spark(args, cfg),
        lake,
        cfg,
        iterations=args.iterations,
        processes=args.processes,
        gpu=args.gpu,
        sample_size=args.sample,
        resume=args.resume,
        batch_size=args.batch_size,
        cluster=args.cluster,
    )
    return 0


def cmd_promote(args, cfg: Config) -> int:
    from desomspark.registry import CHAMPION, promote

    version = promote(_lake(args), cfg.mlflow, args.model, args.version)
    print(f"promote: {args.model} version {version} is now '{CHAMPION}'")
    return 0


def cmd_histovectors(args, cfg: Config) -> int:
    from desomspark.stages.nightly import run_histovectors

    lake = _lake(args)
    run_histovectors(_spark(args, cfg), lake, cfg, args.desom1, [args.night] if args.night else None)
    return 0


def cmd_train_desom2(args, cfg: Config) -> int:
    from desomspark.stages.train_desom2 import train_desom2

    if args.draws is not None:
        cfg = replace(cfg, desom2=replace(cfg.desom2, draws=args.draws))
    train_desom2(_lake(args), cfg, iterations=args.iterations, desom1_version=args.desom1)
    return 0


def cmd_assign(args, cfg: Config) -> int:
    from desomspark.stages.nightly import run_assign

    lake = _lake(args)
    run_assign(_spark(args, cfg), lake, cfg, args.desom2, [args.night] if args.night else None)
    return 0


def cmd_nightly(args, cfg: Config) -> int:
    from desomspark.ingest.fitsio import list_inputs
    from desomspark.stages.nightly import nightly

    list_inputs(args.input)  # nothing to read: say so before Spark starts
    lake = _lake(args, create=True)
    nightly(_spark(args, cfg), args.input, lake, args.night, cfg, camera=args.camera)
    return 0


def cmd_watch(args, cfg: Config) -> int:
    from desomspark.stages.watch import watch

    if not Path(args.input).is_dir():  # the stream needs its folder: say so before Spark starts
        raise FileNotFoundError(f"{args.input} is not a folder")
    lake = _lake(args, create=True)
    watch(
        _spark(args, cfg),
        str(Path(args.input).resolve()),
        lake,
        cfg,
        night=args.night,
        camera=args.camera,
        timeout=args.timeout,
    )
    return 0


def cmd_serve(args, cfg: Config) -> int:
    from desomspark.serve.console import serve

    serve(_lake(args), cfg, args.host, args.port)
    return 0


def cmd_demo(args, cfg: Config) -> int:
    from desomspark.evaluation.demo import demo

    if args.conf is None:  # the demo's own small settings
        cfg = load_config(conf_dir() / "local.yaml")
    lake = _lake(args, create=True)
    demo(_spark(args, cfg), lake, cfg, n_exposures=args.exposures, train_desom1_too=args.train_desom1)
    return 0


def cmd_label(args, cfg: Config) -> int:
    from desomspark import registry
    from desomspark.serve import explore

    if sum([args.unlabel, args.undo, args.label is not None]) != 1:
        raise UserError("give one of --label NAME, --unlabel or --undo")
    lake = _lake(args)
    label = None
    if args.label is not None:  # matched to the vocabulary and the lake's labels, whatever its case
        label = explore.vocabulary_label(
            args.label, explore.known_labels(lake, cfg.labels.vocabulary), args.add
        )
    desom2 = registry.registered(lake, cfg, "desom2")
    version = desom2.version
    if args.exposure:
        night, exposure_id = args.exposure
        if args.undo:
            row = explore.undo_exposure_label(lake, night, exposure_id, version)
        else:
            row = explore.label_exposure(lake, night, exposure_id, label, version)
        what = f"'{row['label']}'" if row["label"] else "without a label of its own (its cell's applies)"
        print(f"label: exposure {night}/{exposure_id} is {what} (by {row['author']})")
    else:
        if args.undo:
            row = explore.undo_label(lake, version, args.cell, desom2.map_shape)
        else:
            row = explore.label_cell(lake, version, args.cell, label, desom2.map_shape)
        what = f"'{row['label']}'" if row["label"] else "unlabelled"
        print(
            f"label: cell {args.cell[0]},{args.cell[1]} of desom2 v{version} is {what} (by {row['author']})"
        )
    print(
        "  export, similar, report and the console show it now; 'desomspark verdicts --night N' "
        "decides that night again with it, 'assign' all nights"
    )
    return 0


def cmd_verdicts(args, cfg: Config) -> int:
    from desomspark.stages.verdicts import decide_nights, write_feed

    lake = _lake(args)
    table = decide_nights(lake, cfg, [args.night])
    if table.empty:
        raise UserError(f"night {args.night} has no assigned exposure: run assign --night {args.night}")
    n = write_feed(table, args.out, args.format)
    counts = table["decision"].value_counts()
    print(
        f"verdicts {args.night}: {n} exposures, "
        + ", ".join(f"{counts.get(d, 0)} {d}" for d in ("accept", "review", "retake"))
        + f"; written to {args.out}"
    )
    return 0


def cmd_check(args, cfg: Config) -> int:
    from desomspark.lake.check import check_lake, repair

    lake = _lake(args)
    report = check_lake(lake)
    for line in report.lines():
        print(f"check: {line}")
    if args.repair and (report.problems or report.undecided):
        for line in repair(lake, report):
            print(f"check --repair: {line}")
        report = check_lake(lake)
        print(f"check: after repair, {report.lines()[-1]}")
    return 0 if not report.problems else EXIT_FAILED


def cmd_export(args, cfg: Config) -> int:
    from desomspark.serve.explore import export

    n = export(_lake(args), args.out, args.format)
    print(f"export: {n} exposures written to {args.out}")
    return 0


def cmd_similar(args, cfg: Config) -> int:
    from desomspark import registry
    from desomspark.serve.explore import similar

    lake = _lake(args)
    desom2 = registry.registered(lake, cfg, "desom2")
    table = similar(lake, desom2, args.exposure, args.k)
    print(f"similar to {args.exposure} (desom2 v{desom2.version} latent space):")
    # an unlabelled cell or an exposure not yet assigned shows as blank, not as pandas' None/NaN
    print(table.astype(object).where(table.notna(), "").to_string(index=False))
    return 0


def cmd_filter(args, cfg: Config) -> int:
    from desomspark import registry
    from desomspark.serve.explore import filter_node

    lake = _lake(args)
    table = filter_node(
        lake, args.node, args.min_fraction, registry.registered(lake, cfg, "desom1").map_shape
    )
    print(
        f"{len(table)} exposures with >= {args.min_fraction:.0%} of detections on DESOM-1 node "
        f"{args.node[0]},{args.node[1]} (column, row)"
    )
    if len(table):
        print(table.to_string(index=False))
    return 0


def cmd_report(args, cfg: Config) -> int:
    from desomspark.serve.report import write_report

    index = write_report(_lake(args), cfg, args.out)
    print(f"report: open {index}")
    return 0


def cmd_evaluate(args, cfg: Config) -> int:
    from desomspark.evaluation.evaluate import evaluate

    evaluate(_lake(args), cfg, args.out)
    return 0


COMMANDS = {
    "simulate": cmd_simulate,
    "ingest": cmd_ingest,
    "train-desom1": cmd_train_desom1,
    "promote": cmd_promote,
    "histovectors": cmd_histovectors,
    "train-desom2": cmd_train_desom2,
    "assign": cmd_assign,
    "nightly": cmd_nightly,
    "watch": cmd_watch,
    "serve": cmd_serve,
    "demo": cmd_demo,
    "label": cmd_label,
    "export": cmd_export,
    "verdicts": cmd_verdicts,
    "check": cmd_check,
    "similar": cmd_similar,
    "filter": cmd_filter,
    "report": cmd_report,
    "evaluate": cmd_evaluate,
}


#: libraries whose INFO lines ("Started local training ...", Py4J's chatter) are noise to an operator
NOISY_LOGGERS = ("py4j", "TorchDistributor", "pyspark", "urllib3")


def _logged_by_py4j_on_root(record) -> bool:
    """False for a record Py4J logs on the *root* logger, which ``NOISY_LOGGERS`` cannot reach.

    Py4J reports a lost gateway connection with ``logging.exception("Exception while
    sending command.")``.  The call that lost it raises ``Py4JError`` as well, so a
    failure during the work is never hidden; what the filter drops is the race at
    exit, where Py4J's finaliser thread sends "delete this object" to a JVM that is
    already going away (it exits when Python closes its stdin), and a command that
    succeeded would otherwise end with a traceback on stderr.
    """
    return not (record.name == "root" and f"{os.sep}py4j{os.sep}" in record.pathname)


def _configure_logging(verbose: bool, quiet: bool) -> None:
    """Our own lines on stdout (warnings only with ``-q``); the libraries' INFO lines only with ``-v``."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logs.to_stdout(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        logging.getLogger().addFilter(_logged_by_py4j_on_root)
    # MLflow configures its own logger when imported ("Creating initial MLflow database tables..."):
    # it reads its level from the environment, which the training processes inherit too
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        cfg = load_config(args.conf)
    except (OSError, ValueError) as exc:
        print(f"desomspark {args.command}: bad --conf: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    try:
        return int(COMMANDS[args.command](args, cfg) or 0)
    # errors a user can act on, as one line; anything else is a bug and keeps its traceback
    except (DesomsparkError, FileNotFoundError, PermissionError) as exc:
        print(f"desomspark {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"desomspark {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
