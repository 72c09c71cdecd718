#!/usr/bin/env bash
# Install the programs the tests use: Debian's source-extractor (SExtractor
# 2.25, the original pipeline's detector, for the peer test) and chromium +
# chromium-driver (the HTML report is clicked in a headless browser), and
# Airflow in .venv-airflow (the nightly DAG is imported). Tests that need a
# program that is not on PATH are skipped with the reason; CI sets
# DESOMSPARK_REQUIRE_TOOLS=1 so that a failed install fails the run instead.
set -uo pipefail
need=()
command -v source-extractor >/dev/null 2>&1 || need+=(source-extractor)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)

# Airflow (the nightly DAG is imported in a real Airflow) in an environment of
# its own: its pins do not mix with Spark's and MLflow's.  No root needed.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
airflow_env="$here/.venv-airflow"
if [ ! -x "$airflow_env/bin/airflow" ]; then
  echo "installing Airflow into $airflow_env (a few minutes, once)"
  (python3 -m venv "$airflow_env" && "$airflow_env/bin/pip" install -q -c "$here/requirements/airflow-constraints.txt" \
      apache-airflow) >/tmp/desomspark-airflow.log 2>&1 \
    || { echo "Airflow install failed: see /tmp/desomspark-airflow.log"; rm -rf "$airflow_env";
         [ "${DESOMSPARK_REQUIRE_TOOLS:-0}" = 1 ] && exit 1; }
fi

[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${need[*]} (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/tmp/desomspark-apt.log 2>&1 \
    || { echo "apt-get install ${need[*]} failed: see /tmp/desomspark-apt.log"; [ "${DESOMSPARK_REQUIRE_TOOLS:-0}" = 1 ] && exit 1; }
else
  echo "not root or no apt-get: ${need[*]} not installed; the tests that need it are skipped"
  [ "${DESOMSPARK_REQUIRE_TOOLS:-0}" = 1 ] && exit 1
fi
exit 0
