"""msgr's benchmark suite: msgr side by side with the peers it replaces.

Run ``python -m benchmarks --help``; see ``benchmarks/README.md``.
"""
