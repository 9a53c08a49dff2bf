"""Training-dynamics toolkit (issue 3): schedules, LR range test, Lookahead,
SWATS, warm-up, gradient noise, parameter EMA, generic Adam.

Owner module: each submodule defines its public names; this file lists them in
``__all__`` so that ``optzoo/__init__.py`` can re-export them.
"""
__all__ = []
