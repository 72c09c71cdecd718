"""spark-submit entry point: `desomspark histovectors`.

    spark-submit --master spark://HOST:7077 jobs/histovectors.py --lake LAKE ...

Arguments are those of `desomspark histovectors --help`; the work is in the desomspark package.
"""

import sys

from desomspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["histovectors", *sys.argv[1:]]))
