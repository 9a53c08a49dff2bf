"""Learning-rate (and momentum) schedules: plain ``optax.Schedule`` callables.

Re-exported at the top level too (``optzoo.cyclical`` etc.).
"""
from optzoo._src.dynamics import schedules as _s
from optzoo._src.dynamics.schedules import *  # noqa: F401,F403

__all__ = list(getattr(_s, "__all__", []))
