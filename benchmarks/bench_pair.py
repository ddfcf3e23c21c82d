"""PAIR's MLP rows of the training-speed benchmark; the same as ``groklab bench --pair``
(options: --quick, --reps N, --threads N)."""

import sys

from groklab.bench import run_bench

if __name__ == "__main__":
    sys.exit(run_bench(["--pair", *sys.argv[1:]]))
