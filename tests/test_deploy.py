"""deploy/: the manifests parse, name files that exist, and pass arguments the jobs accept."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import yaml
from tools import require_tool

from desomspark.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
IMAGE_HOME = "/opt/desomspark"  # where deploy/Dockerfile installs the project


def _documents():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            yield path, doc


def _in_repo(image_path: str) -> Path:
    assert image_path.startswith(IMAGE_HOME + "/"), image_path
    return ROOT / image_path[len(IMAGE_HOME) + 1 :]


def _stage(job_file: str) -> str:
    return Path(job_file).stem.replace("_", "-")


def test_every_manifest_is_valid_kubernetes_yaml():
    kinds = []
    for path, doc in _documents():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], path
        assert doc["metadata"]["namespace"] == "desomspark", path
        name = (
            doc["metadata"]["name"]
            .replace("__NIGHT__", "20261123")
            .replace("__MODEL__", "desom2")
            .replace("__VERSION__", "4")
        )
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
        kinds.append(doc["kind"])
    assert kinds.count("SparkApplication") == len(list((ROOT / "jobs").glob("*.py")))
    assert {
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Job",
    } <= set(kinds)


def test_spark_applications_run_existing_jobs_with_accepted_arguments():
    apps = {
        doc["metadata"]["labels"]["stage"]: doc
        for _, doc in _documents()
        if doc["kind"] == "SparkApplication"
    }
    # every spark-submit job has its manifest
    assert set(apps) == {_stage(str(p)) for p in (ROOT / "jobs").glob("*.py")}
    parser = build_parser()
    for stage, app in apps.items():
        spec = app["spec"]
        main = spec["mainApplicationFile"].removeprefix("local://")
        assert _in_repo(main).is_file() and _stage(main) == stage
        args = [a.replace("__NIGHT__", "20261123") for a in spec["arguments"]]
        parsed = parser.parse_args([stage, *args])  # exits (fails the test) on a bad argument
        assert _in_repo(parsed.conf).is_file()
        assert all(isinstance(v, str) for v in spec["sparkConf"].values())  # the operator wants strings
        assert spec["driver"]["serviceAccount"] == "desomspark"
        mounts = {m["mountPath"] for m in spec["executor"]["volumeMounts"]}
        assert parsed.lake in mounts
        env = {e["name"]: e["value"] for e in spec["executor"]["env"]}
        assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow.")
    train = apps["train-desom1"]["spec"]
    parsed = parser.parse_args(["train-desom1", *train["arguments"]])
    assert parsed.gpu and parsed.cluster
    # a barrier stage: every rank at once, one GPU each, no executors coming and going
    assert train["executor"]["instances"] == parsed.processes
    assert train["executor"]["gpu"] == {"name": "nvidia.com/gpu", "quantity": 1}
    assert (
        train["sparkConf"]["spark.task.resource.gpu.amount"]
        == train["sparkConf"]["spark.executor.resource.gpu.amount"]
        == "1"
    )
    assert train["sparkConf"]["spark.dynamicAllocation.enabled"] == "false"
    assert train["image"].endswith("-cuda")


def test_promote_job_runs_the_promote_command():
    (job,) = [
        doc
        for _, doc in _documents()
        if doc["kind"] == "Job" and doc["metadata"]["labels"]["stage"] == "promote"
    ]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["desomspark", "promote"]
    args = [a.replace("__MODEL__", "desom2").replace("__VERSION__", "4") for a in container["args"]]
    parsed = build_parser().parse_args(["promote", *args])
    assert (parsed.model, parsed.version) == ("desom2", "4") and _in_repo(parsed.conf).is_file()
    assert parsed.lake in {m["mountPath"] for m in container["volumeMounts"]}
    assert {e["name"] for e in container["env"]} == {"MLFLOW_TRACKING_URI"}


def test_dockerfiles_copy_what_exists():
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / name).read_text()
        assert text.count("FROM ") >= 1
        for line in text.splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{name}: {src}"
    assert os.access(DEPLOY / "getGpusResources.sh", os.X_OK)


def _nightly(env: dict, *args: str) -> subprocess.CompletedProcess:
    base = {
        "PATH": os.environ["PATH"],
        "SPARK_MASTER": "spark://spark-master:7077",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "DRY_RUN": "1",
    }
    return subprocess.run(
        ["bash", str(DEPLOY / "schedule" / "nightly.sh"), *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_nightly_script_submits_the_nightly_job():
    done = _nightly({"SPARK_SUBMIT_ARGS": "--conf spark.executor.instances=4"}, "20261123")
    assert done.returncode == 0, done.stderr
    submit_line, report_line = done.stdout.strip().splitlines()
    cmd = shlex.split(submit_line)
    assert cmd[:3] == ["spark-submit", "--master", "spark://spark-master:7077"]
    assert (
        "spark.executor.instances=4" in cmd
        and "spark.executorEnv.MLFLOW_TRACKING_URI=http://mlflow:5000" in cmd
    )
    job = next(i for i, c in enumerate(cmd) if c.endswith("jobs/nightly.py"))
    assert Path(cmd[job]).is_file()
    parsed = build_parser().parse_args(["nightly", *cmd[job + 1 :]])
    assert parsed.night == "20261123" and parsed.input == "/data/raw/20261123" and Path(parsed.conf).is_file()
    # then the report of the same lake, rebuilt for the morning
    report = shlex.split(report_line)
    assert report[1:4] == ["-m", "desomspark.cli", "report"]
    parsed_report = build_parser().parse_args(report[3:])
    assert parsed_report.lake == parsed.lake and parsed_report.out == parsed.lake + "/report"
    # default night: yesterday (UTC); a bad night or a missing master is refused
    default = shlex.split(_nightly({}).stdout.splitlines()[0])
    assert re.fullmatch(r"\d{8}", default[default.index("--night") + 1])
    assert _nightly({}, "2026-11-23").returncode == 2
    missing = subprocess.run(
        ["bash", str(DEPLOY / "schedule" / "nightly.sh"), "20261123"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "SPARK_MASTER" in missing.stderr


def test_crontab_runs_the_nightly_script():
    jobs = [
        line
        for line in (DEPLOY / "schedule" / "crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not re.match(r"^[A-Z_]+=", line)
    ]
    assert len(jobs) == 1
    fields = jobs[0].split()
    minute, hour, dom, month, dow, user = fields[:6]
    assert 0 <= int(minute) < 60 and 0 <= int(hour) < 24 and (dom, month, dow) == ("*", "*", "*")
    script = next(f for f in fields[6:] if f.endswith("nightly.sh"))
    assert _in_repo(script).is_file()


def test_airflow_dag_imports(airflow_python):
    """The DAG file loads in a real Airflow (its own environment, see scripts/install_test_tools.sh)."""
    require_tool(
        airflow_python is not None,
        "no Airflow environment: scripts/install_test_tools.sh builds .venv-airflow",
    )
    code = (
        "import datetime, jinja2\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "from airflow.sdk.execution_time import macros\n"
        f"bag = DagBag(dag_folder={str(DEPLOY / 'schedule')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "dag = bag.dags['desomspark_nightly']\n"
        "task = dag.get_task('nightly')\n"
        "run = datetime.datetime(2026, 11, 24, 18, 30, tzinfo=datetime.timezone.utc)\n"
        "cmd = jinja2.Template(task.bash_command).render(logical_date=run, macros=macros,\n"
        "                                                var={'value': {'get': lambda k, d: d}})\n"
        "print(dag.dag_id, task.task_id, task.retries, dag.timetable.expression, '|', cmd)\n"
    )
    env = dict(
        os.environ, AIRFLOW_HOME=str(ROOT / ".venv-airflow" / "home"), AIRFLOW__CORE__LOAD_EXAMPLES="False"
    )
    done = subprocess.run([airflow_python, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(
        "desomspark_nightly nightly 2 30 18 * * * | /opt/desomspark/deploy/schedule/nightly.sh 20261123"
    )
    # the same time as the cron entry
    cron = next(
        line for line in (DEPLOY / "schedule" / "crontab").read_text().splitlines() if line[:1].isdigit()
    )
    assert " ".join(cron.split()[:5]) == "30 18 * * *"


def test_a_required_tool_that_is_missing_fails_the_run(tmp_path):
    """With DESOMSPARK_REQUIRE_TOOLS=1 (as .ci/run sets) a missing SExtractor fails its tests; without, they
    skip."""
    import sys

    tests = Path(__file__).parent
    no_tools = dict(os.environ, PATH=str(tmp_path))  # nothing on PATH: no source-extractor

    def run(env):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                str(tests / "test_sextractor_peer.py"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tests.parent,
        )

    required = run(no_tools | {"DESOMSPARK_REQUIRE_TOOLS": "1"})
    assert required.returncode == 1 and "requires it" in required.stdout and " passed" not in required.stdout
    relaxed = run({k: v for k, v in no_tools.items() if k != "DESOMSPARK_REQUIRE_TOOLS"})
    assert relaxed.returncode == 0 and " skipped" in relaxed.stdout and " failed" not in relaxed.stdout
