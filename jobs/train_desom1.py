"""spark-submit entry point: `desomspark train-desom1`.

    spark-submit --master spark://HOST:7077 jobs/train_desom1.py --lake LAKE ...

Arguments are those of `desomspark train-desom1 --help`; the work is in the desomspark package.
"""

import sys

from desomspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-desom1", *sys.argv[1:]]))
