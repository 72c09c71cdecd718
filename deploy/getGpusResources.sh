#!/usr/bin/env bash
# Spark GPU discovery: print the GPUs of this executor as Spark's resource JSON,
# e.g. {"name": "gpu", "addresses": ["0","1"]}
set -euo pipefail
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, - | sed 's/,/","/g')
echo "{\"name\": \"gpu\", \"addresses\": [\"${addresses}\"]}"
