"""fibackup's benchmark suite: every figure is a ratio against a baseline measured in the same run.

Each module measures one group of comparisons and returns ``Row`` objects; ``scripts/bench.py``
runs the groups, prints one table and writes JSON (docs/PERFORMANCE.md explains the targets).
"""
