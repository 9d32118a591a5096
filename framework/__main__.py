"""``python -m scorelift ...``: the same as ``scorelift ...`` and ``python launch.py ...``."""

import sys

from .launcher import main

sys.exit(main())
