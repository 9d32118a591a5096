#!/usr/bin/env python
"""scorelift's entry point in a checkout; the installed command ``scorelift`` is the same.

    python launch.py system=sjc guidance=paas                      # the main job
    python launch.py system=dreamfusion guidance=sds prompt="a blue torus" seed=3
    python launch.py resume=outputs/sjc-paas/a_red_cube@...         # continue a run
    python launch.py mode=test resume=outputs/sjc-paas/a_red_cube@...  # re-render it
    python launch.py --list                                         # available parts
    python launch.py --help
"""

import sys

try:
    from scorelift.launcher import main
except ModuleNotFoundError as exc:  # a checkout that was never installed
    if exc.name != "scorelift":
        raise
    sys.exit("scorelift: error: the scorelift package is not installed in this Python; run `pip install -e .` "
             "in this checkout first (see README.md, Quick start).")

if __name__ == "__main__":
    sys.exit(main())
