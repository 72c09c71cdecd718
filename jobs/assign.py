"""spark-submit entry point: `desomspark assign`.

    spark-submit --master spark://HOST:7077 jobs/assign.py --lake LAKE ...

Arguments are those of `desomspark assign --help`; the work is in the desomspark package.
"""

import sys

from desomspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["assign", *sys.argv[1:]]))
