"""Wrappers: transformations that take another transformation (or its state)."""

from optzoo._src.wrappers.cast_state import CastStateState
from optzoo._src.wrappers.cast_state import cast_state
from optzoo._src.wrappers.ema import ParamEmaState
from optzoo._src.wrappers.ema import ema_params
from optzoo._src.wrappers.ema import param_ema
from optzoo._src.wrappers.group_leaves import GroupLeavesState
from optzoo._src.wrappers.group_leaves import group_leaves
from optzoo._src.wrappers.lookahead import LookaheadState
from optzoo._src.wrappers.lookahead import lookahead
from optzoo._src.wrappers.lookahead import lookahead_slow_params
from optzoo._src.wrappers.nonfinite import SkipNonfiniteState
from optzoo._src.wrappers.nonfinite import skip_nonfinite
