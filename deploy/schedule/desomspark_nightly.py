"""Airflow DAG: the nightly desomspark run, spark-submit of jobs/nightly.py through
deploy/schedule/nightly.sh.

Copy this file into the DAGs folder.  The scheduler's environment (or Airflow
Variables, see below) gives SPARK_MASTER and MLFLOW_TRACKING_URI; the night is
the UTC day before the run, as in the cron entry.

Airflow Variables (optional): ``desomspark_home`` (default /opt/desomspark).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

NIGHTLY = "30 18 * * *"  # 18:30 UTC = 08:30 in Hawaii, as deploy/schedule/crontab
HOME = "{{ var.value.get('desomspark_home', '/opt/desomspark') }}"
NIGHT = "{{ (logical_date - macros.timedelta(days=1)).strftime('%Y%m%d') }}"

with DAG(
    dag_id="desomspark_nightly",
    description="ingest -> histo-vectors -> assign for last night, with the champion models",
    schedule=NIGHTLY,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=15),
        "execution_timeout": timedelta(hours=6),
    },
    tags=["desomspark", "survey"],
) as dag:
    nightly = BashOperator(
        task_id="nightly",
        bash_command=f"{HOME}/deploy/schedule/nightly.sh {NIGHT}",
        # a re-run of a night replaces its rows, so retries are safe
    )
