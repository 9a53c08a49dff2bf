"""optax 0.2.8's own test files, adapted to run on optzoo's equivalents.

Each ``test_*.py`` here mirrors one optax test file (named in its docstring),
with the assertions kept. Tests of optax functions that optzoo has no
equivalent of are left out (listed in each file's docstring). Only documented
optzoo-vs-optax semantic differences (README.md, "optzoo vs optax, same
name") are marked ``xfail(strict=True)``.
"""
