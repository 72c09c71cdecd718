"""spark-submit entry point: `desomspark train-desom2`.

    spark-submit --master spark://HOST:7077 jobs/train_desom2.py --lake LAKE ...

Arguments are those of `desomspark train-desom2 --help`; the work is in the desomspark package.
"""

import sys

from desomspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-desom2", *sys.argv[1:]]))
