"""Learning-rate (and momentum) schedules: plain ``optax.Schedule`` callables.

Re-exported at the top level too (``optzoo.cyclical`` etc.). The
``torch.optim.lr_scheduler`` classes are here under their snake_case names
(``step_lr``, ``cosine_annealing_lr``, ``sequential_lr``, ...), with
``reduce_lr_on_plateau`` (a ``GradientTransformation`` reading ``value``).
"""
from optzoo._src.dynamics import schedules as _s
from optzoo._src.dynamics.schedules import *  # noqa: F401,F403
from optzoo._src import torch_schedules as _ts
from optzoo._src.torch_schedules import *  # noqa: F401,F403
from optzoo._src.torch_schedules import ReduceLROnPlateauState  # noqa: F401
from optzoo._src.torch_schedules import TorchSchedule  # noqa: F401
from optzoo._src.torch_schedules import reduce_lr_on_plateau  # noqa: F401

# The registered schedules (``reduce_lr_on_plateau`` is a transformation).
__all__ = list(getattr(_s, "__all__", [])) + [
    n for n in _ts.__all__
    if n not in ("reduce_lr_on_plateau", "ReduceLROnPlateauState",
                 "TorchSchedule")]
