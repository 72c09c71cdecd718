#!/usr/bin/env bash
# Spark 4 needs Java 17 or newer. Say so in one line when it is missing.
set -euo pipefail
if ! command -v java >/dev/null 2>&1; then
  echo "desomspark needs Java 17+ for Spark: none found on PATH (Debian: apt-get install openjdk-17-jre-headless)" >&2
  exit 1
fi
major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
if [ -z "$major" ] || [ "$major" -lt 17 ]; then
  echo "desomspark needs Java 17+ for Spark, found: $(java -version 2>&1 | head -n 1)" >&2
  exit 1
fi
