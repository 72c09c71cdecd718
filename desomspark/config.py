"""Configuration: YAML files in ``conf/`` turned into typed dataclasses.

Every stage takes one of the dataclasses below, so the numbers that steer a run
(detection threshold, map size, temperature schedule...) are visible in one
place (``conf/default.yaml``) and recorded with the run.  A user file given with
``--conf`` is merged over the defaults key by key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from desomspark.errors import UserError


@dataclass(frozen=True)
class SparkConfig:
    master: str | None = "local[*]"
    app_name: str = "desomspark"
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None = None
    experiment: str = "desomspark"


@dataclass(frozen=True)
class SimulateConfig:
    n_ccds: int = 36
    ccd_shape: tuple[int, int] = (4612, 2048)
    pixel_scale: float = 0.187
    ccd_columns: int = 9
    gain: float = 1.6
    read_noise: float = 5.0
    sky_rate: float = 8.0
    zero_point: float = 26.5
    exptime: float = 300.0
    star_density: float = 1500
    galaxy_density: float = 5000
    mag_bright: float = 15.0
    mag_limit: float = 25.0
    saturation: int = 65535
    p_dead_ccd: float = 0.02
    p_hot_column: float = 0.10
    cosmic_rays_per_mpx: float = 3.0


@dataclass(frozen=True)
class IngestConfig:
    detect_thresh: float = 2.0
    min_area: int = 5
    filter_fwhm: float = 3.0
    filter_size: int = 7
    back_size: int = 64
    back_filter_size: int = 3
    deblend_nthresh: int = 32
    deblend_cont: float = 0.0
    clean: bool = True
    clean_param: float = 1.0
    edge_margin: int = 37
    max_per_ccd: int = 100
    trail_elongation: float = 4.0
    trail_column_tolerance: float = 3.0
    clip_percentiles: tuple[float, float] = (1.0, 95.0)
    min_ccd_side: int = 128
    window_size: int = 500
    max_pixstack: int = 20_000_000

    def __post_init__(self):
        if not 0 <= self.trail_column_tolerance < 90:
            raise UserError(
                f"[ingest] trail_column_tolerance is in degrees from 0 to 90, "
                f"not {self.trail_column_tolerance}"
            )


@dataclass(frozen=True)
class Desom1Config:
    map_shape: tuple[int, int] = (25, 25)
    latent_dim: int = 160
    conv_channels: tuple[int, ...] = (32, 64, 128)
    dense_units: int = 512
    gamma: float = 0.0075
    t_max: float = 10.0
    t_min: float = 0.5
    batch_size: int = 256
    learning_rate: float = 1e-3
    iterations: int = 100_000
    sample: int = 1_000_000
    seed: int = 42
    checkpoint_every: int = 1000
    log_every: int = 100
    max_in_memory_bytes: float = 8e9
    cuda_graph: bool = True
    channels_last: bool = True
    precision: str = "fp32"


@dataclass(frozen=True)
class Desom2Config:
    map_shape: tuple[int, int] | None = (20, 20)
    exposures_per_cell: int = 4
    hidden: tuple[int, ...] = (450, 300)
    latent_dim: int = 100
    gamma: float = 0.001
    t_max: float = 10.0
    t_min: float = 0.1
    batch_size: int = 256
    learning_rate: float = 2e-3
    iterations: int = 10_000
    seed: int = 42
    draws: int = 8  # DESOM-2 fitted with seeds seed, seed+1...; the map keeping neighbours best is kept
    clip_sigma: float = 3.0
    log_every: int = 500
    transform: str = "hellinger"
    qa_inputs: tuple[str, ...] = (
        "fwhm",
        "elongation_median",
        "elongation_p90",
        "detections_per_ccd",
        "sky",
        "sky_rms",
        "sky_spread",
        "background_structure",
        "noise_correlation",
        "trail_length",
        "depth",
    )
    qa_weight: float = 0.25
    # a number's standardised value multiplied by its weight here (1 where not named)
    qa_input_weights: dict[str, float] = field(default_factory=dict)
    node_smoothing: float = 1.0

    def __post_init__(self):
        if self.node_smoothing < 0 or self.qa_weight < 0:
            raise UserError("[desom2] node_smoothing and qa_weight must be >= 0")
        unknown = sorted(set(self.qa_input_weights) - set(self.qa_inputs))
        if unknown:
            raise UserError(f"[desom2] qa_input_weights names {unknown}, which are not among qa_inputs")
        if any(not float(w) > 0 for w in self.qa_input_weights.values()):
            raise UserError(f"[desom2] qa_input_weights must be > 0: {self.qa_input_weights}")
        if int(self.draws) < 1:
            raise UserError(f"[desom2] draws must be at least 1, not {self.draws}")


#: the alert rules ``watch`` knows (desomspark/watch.py)
ALERT_RULES = ("bad_run", "novelty", "dead_ccd")


@dataclass(frozen=True)
class WatchConfig:
    trigger_seconds: float = 5.0
    max_files_per_batch: int = 64
    settle_seconds: float = 5.0
    rules: tuple[str, ...] = ("bad_run", "novelty", "dead_ccd")
    good_labels: tuple[str, ...] = ("Good",)
    alert_window: int = 5
    alert_min_bad: int = 3
    novelty_quantile: float = 0.99
    novelty_margin: float = 1.5
    novelty_min_reference: int = 50
    dead_ccd_exposures: int = 2
    webhook: str | None = None
    webhook_timeout: float = 3.0
    drift_window: int = 7
    drift_threshold: float = 0.35

    def __post_init__(self):
        unknown = set(self.rules) - set(ALERT_RULES)
        if unknown:
            raise UserError(
                f"[watch] rules: unknown rule(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(ALERT_RULES)})"
            )
        if not 0 < self.novelty_quantile < 1:
            raise UserError(f"[watch] novelty_quantile must lie between 0 and 1, not {self.novelty_quantile}")
        if self.alert_window < 1 or self.dead_ccd_exposures < 1 or self.settle_seconds < 0:
            raise UserError("[watch] alert_window and dead_ccd_exposures must be >= 1, settle_seconds >= 0")


@dataclass(frozen=True)
class ConsoleConfig:
    host: str = "127.0.0.1"
    port: int = 8050
    workers: int = 2
    threads: int = 8
    token: str | None = None
    hosts: tuple[str, ...] = ()  # names it answers to besides loopback, --host and this machine's
    page_size: int = 24
    refresh_seconds: float = 2.0
    nights_refresh_seconds: int = 30
    similar: int = 10

    def __post_init__(self):
        if self.page_size < 1 or self.workers < 1 or self.threads < 1:
            raise UserError("[console] page_size, workers and threads must be >= 1")


@dataclass(frozen=True)
class DecideConfig:
    """How a verdict is reached (desomspark.decide; README "From map to decision")."""

    accept_below: float = 0.2
    retake_above: float = 0.8
    min_evidence: float = 1.0
    label_noise: float = 0.02
    prior_weight: float = 1.0
    neighbours: int = 30
    bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    review_labels: tuple[str, ...] = ("Unsure",)
    rules: dict[str, float] = field(default_factory=dict)
    ccd_outlier: float = 0.5
    novelty_margin: float = 1.0

    def __post_init__(self):
        if self.novelty_margin <= 0:
            raise UserError(f"[decide] novelty_margin must be > 0, not {self.novelty_margin}")
        if not 0 <= self.accept_below <= self.retake_above <= 1:
            raise UserError("[decide] need 0 <= accept_below <= retake_above <= 1")
        if not 0 <= self.label_noise < 0.5 or self.prior_weight <= 0 or self.neighbours < 1:
            raise UserError("[decide] label_noise must lie in [0, 0.5), prior_weight > 0, neighbours >= 1")
        if not self.bandwidths or min(self.bandwidths) <= 0:
            raise UserError("[decide] bandwidths: a list of positive widths")
        for name, limit in self.rules.items():
            if not (name.startswith(("max_", "min_")) and len(name) > 4):
                raise UserError(f"[decide] rules: {name!r} is not max_<column> or min_<column>")
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))):
                raise UserError(f"[decide] rules: {name} must be a number or null, not {limit!r}")


@dataclass(frozen=True)
class LabelsConfig:
    """The label vocabulary (README "The console"): a name and what it means, per label."""

    vocabulary: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        folded = [name.casefold() for name in self.vocabulary]
        if len(set(folded)) != len(folded):
            raise UserError("[labels] vocabulary: two labels differ only in case")


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    desom1: Desom1Config = field(default_factory=Desom1Config)
    desom2: Desom2Config = field(default_factory=Desom2Config)
    watch: WatchConfig = field(default_factory=WatchConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def conf_dir() -> Path:
    """The ``conf/`` folder holding ``default.yaml``.

    ``$DESOMSPARK_CONF_DIR`` if set; else the checkout's ``conf/`` (editable
    installs, spark-submit from the repository); else the copy that
    ``setup.py`` installs under ``<prefix>/share/desomspark/conf``.
    """
    if "DESOMSPARK_CONF_DIR" in os.environ:
        return Path(os.environ["DESOMSPARK_CONF_DIR"])
    for candidate in (
        Path(__file__).resolve().parents[1] / "conf",
        Path(sys.prefix) / "share" / "desomspark" / "conf",
    ):
        if (candidate / "default.yaml").exists():
            return candidate
    raise FileNotFoundError("conf/default.yaml not found; set DESOMSPARK_CONF_DIR")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_SCALARS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
_KIND_NAMES = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}


def _checked(value: Any, declared: str, where: str, name: str) -> Any:
    """``value`` as the field declared ``declared`` (an annotation string) takes it, else one UserError."""
    optional = declared.endswith(" | None")
    base = declared.removesuffix(" | None")
    if value is None and optional:
        return None
    if base in ("float", "int") and isinstance(value, str):
        # YAML 1.1 reads 8.0e9 (no exponent sign) as a string
        try:
            value = float(value) if base == "float" else int(value)
        except ValueError:
            raise UserError(f"[{where}] {name}: expected {_KIND_NAMES[base]}, not {value!r}") from None
    if base in _SCALARS:
        # bool is an int to Python: true is not a batch size
        if isinstance(value, bool) != (base == "bool") or not isinstance(value, _SCALARS[base]):
            raise UserError(f"[{where}] {name}: expected {_KIND_NAMES[base]}, not {value!r}")
        return float(value) if base == "float" else value
    if base.startswith("tuple["):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"[{where}] {name}: expected a list, not {value!r}")
        return tuple(value)
    if base.startswith("dict[") and not isinstance(value, dict):
        raise UserError(f"[{where}] {name}: expected a mapping, not {value!r}")
    return value


def _build(cls: type, values: Any, where: str) -> Any:
    """Make dataclass ``cls`` from ``values``, refusing unknown keys (typos) and values of the wrong type."""
    if not isinstance(values, dict):
        raise UserError(f"[{where}] must be a mapping of settings (key: value), not {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise UserError(f"unknown key(s) in [{where}]: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        value = _checked(value, str(known[name].type), where, name)  # annotations are postponed: strings
        if name == "properties" and isinstance(value, dict):
            value = {str(k): str(v) for k, v in value.items()}
        kwargs[name] = value
    return cls(**kwargs)


def _read_yaml(path: Path) -> dict:
    """A YAML mapping from ``path``; a syntax error or another kind of document is one UserError."""
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: a YAML mapping was expected")
    return values


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Config:
    """Read ``default.yaml``, merge the user file at ``path`` and ``overrides`` over it.

    Parameters
    ----------
    path : path-like, optional
        A YAML file with any subset of the sections of ``default.yaml``.
    overrides : dict, optional
        Nested mapping merged last (used by the command line, e.g. ``--iterations``).

    Returns
    -------
    Config
    """
    values = _read_yaml(conf_dir() / "default.yaml")
    if path is not None:
        values = _merge(values, _read_yaml(Path(path)))
    if overrides:
        values = _merge(values, overrides)
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = set(values) - set(sections)
    if unknown:
        raise UserError(f"unknown section(s) in configuration: {', '.join(sorted(unknown))}")
    built = {}
    for f in dataclasses.fields(Config):
        cls = f.default_factory  # the section's dataclass
        section = values.get(f.name)
        built[f.name] = _build(cls, {} if section is None else section, f.name)
    return Config(**built)
