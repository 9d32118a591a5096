"""The benchmark: methods x prompts x seeds at one step budget, run as resumable launch.py cells,
reported as results.csv, report.md, PNG figures and report.html, which links its
figures and turntables (``scorelift-bench``, ``python -m scorelift.benchmark``)."""
