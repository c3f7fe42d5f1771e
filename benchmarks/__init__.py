"""pixseg's benchmarks: memory and throughput end to end, and the predict kernel.

Run ``python -m benchmarks --help`` from the repository root; see :mod:`benchmarks.__main__`.
Work files go to ``benchmarks/_work/`` (git-ignored) unless ``--workdir`` says otherwise.
"""

#: K of every benchmarked k-means (the issue's targets are stated for K=8).
CLUSTERS = 8
