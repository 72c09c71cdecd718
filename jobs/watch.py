"""spark-submit entry point: `desomspark watch` (a long-running Structured Streaming application).

    spark-submit --master spark://HOST:7077 jobs/watch.py --lake LAKE --input ARRIVALS ...

Arguments are those of `desomspark watch --help`; the work is in the desomspark package.
Its checkpoint lives in LAKE/_watch/checkpoint: a restarted application carries on where
the last one stopped, each exposure sorted once.
"""

import sys

from desomspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["watch", *sys.argv[1:]]))
