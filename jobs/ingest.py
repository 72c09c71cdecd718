"""spark-submit entry point: `desomspark ingest`.

    spark-submit --master spark://HOST:7077 jobs/ingest.py --lake LAKE ...

Arguments are those of `desomspark ingest --help`; the work is in the desomspark package.
"""

import sys

from desomspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
