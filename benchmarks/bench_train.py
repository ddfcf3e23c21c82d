"""Training-speed benchmark; the same as ``groklab bench`` (options: --quick, --reps N)."""

import sys

from groklab.bench import run_bench

if __name__ == "__main__":
    sys.exit(run_bench(sys.argv[1:]))
