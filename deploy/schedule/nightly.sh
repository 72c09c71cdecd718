#!/usr/bin/env bash
# The nightly run: spark-submit jobs/nightly.py for one night (default: last night, UTC),
# i.e. ingest -> histo-vectors -> assign with the champion models, then the HTML report
# rebuilt so that the morning's first look shows the night.  Called by cron
# (deploy/schedule/crontab) or Airflow (deploy/schedule/desomspark_nightly.py).
#
#   deploy/schedule/nightly.sh [YYYYMMDD]
#
# Environment:
#   SPARK_MASTER         spark://HOST:7077, or k8s://https://API:6443 (required)
#   MLFLOW_TRACKING_URI  the MLflow server (required; drivers and executors use it)
#   DESOMSPARK_HOME      the installed project (default: two folders above this script)
#   DESOMSPARK_PYTHON    the interpreter with desomspark installed, on every node (default: python3)
#   DESOMSPARK_LAKE      the lake (default /lake); DESOMSPARK_RAW the folder of nights (default /data/raw)
#   DESOMSPARK_REPORT    where the report is written (default: <lake>/report); the report runs here,
#                        so this machine must see the lake (shared storage)
#   SPARK_SUBMIT_ARGS    more spark-submit arguments (e.g. Kubernetes image and volumes, see deploy/README.md)
#   DRY_RUN=1            print the command instead of running it
set -euo pipefail
night="${1:-$(date -u -d '1 day ago' +%Y%m%d)}"
if [[ ! "$night" =~ ^[0-9]{8}$ ]]; then
  echo "nightly.sh: the night is YYYYMMDD, not '$night'" >&2
  exit 2
fi
: "${SPARK_MASTER:?nightly.sh: set SPARK_MASTER}"
: "${MLFLOW_TRACKING_URI:?nightly.sh: set MLFLOW_TRACKING_URI}"
home="${DESOMSPARK_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
python="${DESOMSPARK_PYTHON:-python3}"
lake="${DESOMSPARK_LAKE:-/lake}"
read -r -a extra <<< "${SPARK_SUBMIT_ARGS:-}"
cmd=(spark-submit --master "$SPARK_MASTER"
     --conf "spark.pyspark.python=$python"
     --conf "spark.executorEnv.MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI"
     "${extra[@]}"
     "$home/jobs/nightly.py"
     --lake "$lake" --input "${DESOMSPARK_RAW:-/data/raw}/$night" --night "$night"
     --conf "$home/conf/cluster.yaml")
report=("$python" -m desomspark.cli report --lake "$lake" --out "${DESOMSPARK_REPORT:-$lake/report}"
        --conf "$home/conf/cluster.yaml")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  printf '%q ' "${report[@]}"
  echo
  exit 0
fi
echo "nightly.sh: night $night on $SPARK_MASTER ($(date -u +%FT%TZ))"
"${cmd[@]}"
echo "nightly.sh: report of the lake ($(date -u +%FT%TZ))"
"${report[@]}"
