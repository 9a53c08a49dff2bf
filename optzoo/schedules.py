"""Learning-rate (and momentum) schedules: plain ``optax.Schedule`` callables.

Re-exported at the top level too (``optzoo.cyclical`` etc.). The
``torch.optim.lr_scheduler`` classes are here under their snake_case names
(``step_lr``, ``cosine_annealing_lr``, ``sequential_lr``, ...), with
``reduce_lr_on_plateau`` (a ``GradientTransformation`` reading ``value``).
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
from optzoo._src.swa import swalr
from optzoo._src.torch_schedules import ReduceLROnPlateauState
from optzoo._src.torch_schedules import TorchSchedule
from optzoo._src.torch_schedules import chained_scheduler
from optzoo._src.torch_schedules import constant_lr
from optzoo._src.torch_schedules import cosine_annealing_lr
from optzoo._src.torch_schedules import cyclic_momentum
from optzoo._src.torch_schedules import exponential_lr
from optzoo._src.torch_schedules import lambda_lr
from optzoo._src.torch_schedules import linear_lr
from optzoo._src.torch_schedules import multi_step_lr
from optzoo._src.torch_schedules import multiplicative_lr
from optzoo._src.torch_schedules import polynomial_lr
from optzoo._src.torch_schedules import reduce_lr_on_plateau
from optzoo._src.torch_schedules import sequential_lr
from optzoo._src.torch_schedules import step_lr

# The registered schedules (``reduce_lr_on_plateau``, a transformation, is
# here too but not in ``__all__``).
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
    "lambda_lr",
    "multiplicative_lr",
    "step_lr",
    "multi_step_lr",
    "constant_lr",
    "linear_lr",
    "exponential_lr",
    "polynomial_lr",
    "cosine_annealing_lr",
    "sequential_lr",
    "chained_scheduler",
    "cyclic_momentum",
    "swalr",
]
