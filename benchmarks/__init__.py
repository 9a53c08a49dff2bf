"""optzoo benchmarks: `python -m benchmarks.step_time`, `python -m benchmarks.compile_time`, `python -m benchmarks.sharding_example`."""
