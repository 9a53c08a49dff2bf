"""optzoo benchmarks (issue 7): `python -m benchmarks.step_time`, `python -m benchmarks.compile_time`, `python -m benchmarks.sharding_example`."""
