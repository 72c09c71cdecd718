"""spark-submit entry point: `desomspark nightly`.

    spark-submit --master spark://HOST:7077 jobs/nightly.py --lake LAKE ...

Arguments are those of `desomspark nightly --help`; the work is in the desomspark package.
"""

import sys

from desomspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
