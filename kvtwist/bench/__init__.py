"""kvtwist-bench: a load generator speaking the kvtwist wire protocol directly.

``kvtwist.bench.hist`` is the latency histogram, ``kvtwist.bench.workload`` builds
request frames, ``kvtwist.bench.loadgen`` drives connections in one process and
``kvtwist.bench.cli`` (the ``kvtwist-bench`` command) runs several such
processes and merges what they measured.
"""
