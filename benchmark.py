#!/usr/bin/env python
"""Benchmark score-distillation methods against each other on ground truth.

    python benchmark.py ci --out outputs/bench-ci            # 2 prompts x 4 methods x 4 steps (CI)
    python benchmark.py full --out benchmarks/shapes-full --workers 16

See framework/benchmark/cli.py (``python benchmark.py --help``) and benchmarks/presets/.
"""

import sys

from framework.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
