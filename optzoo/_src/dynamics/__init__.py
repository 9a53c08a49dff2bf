"""Training-dynamics toolkit (issue 3): schedules, LR range test, Lookahead,
SWATS, warm-up, gradient noise, parameter EMA, generic Adam.

Each submodule defines its public names; this file lists them in ``__all__``
so that ``optzoo/__init__.py`` can re-export them (``optzoo.schedules`` is the
public module of the schedules).
"""
from optzoo._src.dynamics import schedules as _schedules
from optzoo._src.dynamics.schedules import *  # noqa: F401,F403
from optzoo._src.dynamics.lookahead import LookaheadState
from optzoo._src.dynamics.lookahead import lookahead
from optzoo._src.dynamics.lookahead import lookahead_slow_params
from optzoo._src.dynamics.swats import SwatsState
from optzoo._src.dynamics.swats import swats
from optzoo._src.dynamics.noise import AddGradientNoiseState
from optzoo._src.dynamics.noise import add_gradient_noise
from optzoo._src.dynamics.noise import gradient_noise
from optzoo._src.dynamics.ema import ParamEmaState
from optzoo._src.dynamics.ema import ema_params
from optzoo._src.dynamics.ema import param_ema
from optzoo._src.dynamics.generic_adam import GenericAdamReport
from optzoo._src.dynamics.generic_adam import GenericAdamState
from optzoo._src.dynamics.generic_adam import generic_adam
from optzoo._src.dynamics.generic_adam import generic_adam_condition
from optzoo._src.dynamics.lr_finder import LRRangeTestResult
from optzoo._src.dynamics.lr_finder import lr_range_test

__all__ = list(_schedules.__all__) + [
    "AddGradientNoiseState",
    "GenericAdamReport",
    "GenericAdamState",
    "LRRangeTestResult",
    "LookaheadState",
    "ParamEmaState",
    "SwatsState",
    "add_gradient_noise",
    "ema_params",
    "generic_adam",
    "generic_adam_condition",
    "gradient_noise",
    "lookahead",
    "lookahead_slow_params",
    "lr_range_test",
    "param_ema",
    "swats",
]
