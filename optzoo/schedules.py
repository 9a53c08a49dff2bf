"""Learning-rate (and momentum) schedules: plain ``optax.Schedule`` callables.

Re-exported at the top level too (``optzoo.cyclical`` etc.).
"""

from optzoo._src.schedules import byol_tau_schedule
from optzoo._src.schedules import cyclical
from optzoo._src.schedules import exponential_warmup
from optzoo._src.schedules import linear_warmup
from optzoo._src.schedules import one_cycle
from optzoo._src.schedules import one_cycle_momentum
from optzoo._src.schedules import radam_warmup
from optzoo._src.schedules import scale_for_batch_size
from optzoo._src.schedules import sgdr

__all__ = [
    "byol_tau_schedule",
    "cyclical",
    "exponential_warmup",
    "linear_warmup",
    "one_cycle",
    "one_cycle_momentum",
    "radam_warmup",
    "scale_for_batch_size",
    "sgdr",
]
