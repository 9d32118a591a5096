#!/usr/bin/env python
"""Benchmark score-distillation methods against each other on ground truth (``scorelift-bench``).

    python benchmark.py ci --out outputs/bench-ci            # 2 prompts x 4 methods x 4 steps (CI)
    python benchmark.py full --out benchmarks/shapes-full --workers 16

``python benchmark.py --help`` lists the options; the presets are in apps/benchmark/presets/.
"""

import sys

from scorelift.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
