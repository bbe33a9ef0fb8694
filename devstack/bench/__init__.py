"""``make bench``: the benchmarks, one module per scenario (see ``python -m devstack.bench --help``)."""
