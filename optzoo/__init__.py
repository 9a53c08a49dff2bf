"""optzoo: the optimizer zoo for JAX.

Every method is a small, composable ``optax.GradientTransformation``.

>>> import optzoo, optax
>>> tx = optzoo.adam(1e-3)                       # = torch.optim.Adam numerics
>>> tx = optax.chain(optzoo.scale_by_rms(0.99), optzoo.trace(0.9),
...                  optzoo.scale_by_learning_rate(1e-2))  # RMSProp + momentum
"""

__version__ = "0.1.0"

# The public names, one explicit import each. Type checkers and readers see
# them as ordinary imports; at run time they are executed on first use (PEP 562
# module ``__getattr__`` reads this block off the module's source), so
# ``import optzoo`` (and the ``optzoo`` command line) imports no JAX, and
# ``optzoo.adam`` imports only what ``adam`` needs. Add a public name here and
# to ``__all__``.
from typing import TYPE_CHECKING as _TYPE_CHECKING

if _TYPE_CHECKING:  # the table __getattr__ reads; static for type checkers and readers
  # Composable primitives.
  from optzoo._src.transform import add_decayed_weights
  from optzoo._src.transform import add_gradient_noise
  from optzoo._src.transform import add_l2
  from optzoo._src.transform import AddGradientNoiseState
  from optzoo._src.transform import rectify
  from optzoo._src.transform import scale_by_adagrad
  from optzoo._src.transform import scale_by_adam
  from optzoo._src.transform import scale_by_bounds
  from optzoo._src.transform import scale_by_learning_rate
  from optzoo._src.transform import scale_by_nadam
  from optzoo._src.transform import scale_by_radam
  from optzoo._src.transform import scale_by_rms
  from optzoo._src.transform import trace

  # The rest of torch.optim.
  from optzoo._src.classic import adadelta
  from optzoo._src.classic import adamax
  from optzoo._src.classic import asgd
  from optzoo._src.classic import asgd_averaged_params
  from optzoo._src.transform import negate
  from optzoo._src.classic import rprop
  from optzoo._src.classic import scale_by_adadelta
  from optzoo._src.classic import scale_by_adamax
  from optzoo._src.classic import scale_by_asgd
  from optzoo._src.classic import scale_by_rprop
  from optzoo._src.lbfgs import lbfgs
  from optzoo._src.muon import muon
  from optzoo._src.muon import newton_schulz
  from optzoo._src.muon import orthogonalize
  from optzoo._src.muon import scale_by_muon

  # Team SGD and Team Adam.
  from optzoo._src.alias import adabound
  from optzoo._src.alias import adagrad
  from optzoo._src.alias import adam
  from optzoo._src.alias import adamw
  from optzoo._src.alias import amsgrad
  from optzoo._src.alias import nadam
  from optzoo._src.alias import nag
  from optzoo._src.alias import radam
  from optzoo._src.alias import rmsprop
  from optzoo._src.alias import sgd
  from optzoo._src.alias import sgdw
  from optzoo._src.alias import swats
  from optzoo._src.alias import SwatsState
  # The fused CPU step (update and apply in one C++ call).
  from optzoo._src.cpu_kernels.step import update_and_apply

  # Large-batch (trust-ratio) and memory-light (factored) methods.
  from optzoo._src.factorized import adafactor
  from optzoo._src.factorized import scale_by_factored_rms
  from optzoo._src.factorized import scale_by_sm3
  from optzoo._src.factorized import sm3
  from optzoo._src.large_batch import exclude_bias_and_norm
  from optzoo._src.large_batch import lamb
  from optzoo._src.large_batch import lars
  from optzoo._src.large_batch import scale_by_lamb_trust_ratio
  from optzoo._src.large_batch import scale_by_lars_trust_ratio

  # Wrappers.
  from optzoo._src.wrappers.cast_state import cast_state
  from optzoo._src.wrappers.cast_state import CastStateState
  from optzoo._src.wrappers.ema import ema_params
  from optzoo._src.wrappers.ema import param_ema
  from optzoo._src.wrappers.ema import ParamEmaState
  from optzoo._src.wrappers.group_leaves import group_leaves
  from optzoo._src.wrappers.group_leaves import GroupLeavesState
  from optzoo._src.wrappers.lookahead import lookahead
  from optzoo._src.wrappers.lookahead import lookahead_slow_params
  from optzoo._src.wrappers.lookahead import LookaheadState
  from optzoo._src.wrappers.nonfinite import skip_nonfinite
  from optzoo._src.wrappers.nonfinite import SkipNonfiniteState

  # Schedules (also in optzoo.schedules).
  from optzoo._src.schedules import byol_tau_schedule
  from optzoo._src.schedules import cyclical
  from optzoo._src.schedules import exponential_warmup
  from optzoo._src.schedules import linear_warmup
  from optzoo._src.schedules import one_cycle
  from optzoo._src.schedules import one_cycle_momentum
  from optzoo._src.schedules import radam_warmup
  from optzoo._src.schedules import scale_for_batch_size
  from optzoo._src.schedules import sgdr

  # Research methods (also in optzoo.research).
  from optzoo._src.research.entropy_sgd import EntropySGDState
  from optzoo._src.research.entropy_sgd import entropy_sgd
  from optzoo._src.research.entropy_sgd import local_energy
  from optzoo._src.research.entropy_sgd import scoped_gamma
  from optzoo._src.research.generic_adam import GenericAdamReport
  from optzoo._src.research.generic_adam import GenericAdamState
  from optzoo._src.research.generic_adam import generic_adam
  from optzoo._src.research.generic_adam import generic_adam_condition
  from optzoo._src.research.gradient_noise import gradient_noise
  from optzoo._src.research.gradinit import GradInitResult
  from optzoo._src.research.gradinit import gradinit
  from optzoo._src.research.gradinit import gradinit_objective
  from optzoo._src.research.gradmax import GradMaxResult
  from optzoo._src.research.gradmax import gradmax_fanout
  from optzoo._src.research.gradmax import gradmax_grow
  from optzoo._src.research.gradmax import gradmax_matrix
  from optzoo._src.research.gradmax import grow_optimizer_state
  from optzoo._src.research.koala import KoalaMState
  from optzoo._src.research.koala import KoalaVState
  from optzoo._src.research.koala import koala
  from optzoo._src.research.koala import koala_loss_stats
  from optzoo._src.research.koala import scale_by_koala_m
  from optzoo._src.research.koala import scale_by_koala_v
  from optzoo._src.research.mbf import ScaleByMiniBlockFisherState
  from optzoo._src.research.mbf import mini_block_fisher
  from optzoo._src.research.mbf import mini_block_partition
  from optzoo._src.research.mbf import per_example_grads
  from optzoo._src.research.mbf import scale_by_mini_block_fisher
  from optzoo._src.research.nsgd import ScaleByInputPowerState
  from optzoo._src.research.nsgd import collect_input_power
  from optzoo._src.research.nsgd import nsgd
  from optzoo._src.research.nsgd import scale_by_input_power
  from optzoo._src.research.projection import SphereSgdState
  from optzoo._src.research.projection import WeightRescalingState
  from optzoo._src.research.projection import project_to_sphere
  from optzoo._src.research.projection import sphere_sgd
  from optzoo._src.research.projection import weight_rescaling
  from optzoo._src.research.replicated_sgd import ReplicaCouplingState
  from optzoo._src.research.replicated_sgd import replica_coupling
  from optzoo._src.research.replicated_sgd import replicate_params
  from optzoo._src.research.replicated_sgd import replicated_center
  from optzoo._src.research.replicated_sgd import replicated_sgd
  from optzoo._src.research.scl import MaskedConv
  from optzoo._src.research.scl import MaskedDense
  from optzoo._src.research.scl import add_count_penalty
  from optzoo._src.research.scl import connection_count
  from optzoo._src.research.scl import normalize_mask_gradients
  from optzoo._src.research.scl import scl_labels
  from optzoo._src.research.scl import sparse_connectivity
  from optzoo._src.research.scl import step_ste
  from optzoo._src.research.svi import SVIDense
  from optzoo._src.research.svi import SVIMLP
  from optzoo._src.research.svi import svi_gradients
  from optzoo._src.research.svi import svi_mse_loss
  from optzoo._src.research.weightnorm import weightnorm_data_init
  from optzoo._src.research.weightnorm import weightnorm_layers

  # Tools.
  from optzoo._src.lr_finder import lr_range_test
  from optzoo._src.lr_finder import LRRangeTestResult
  from optzoo._src.tree import tree_all_finite

  # Memory-light optimizer state (8-bit moments, ZeRO-1 sharding).
  from optzoo._src.quantized import QuantizedArray
  from optzoo._src.quantized import adam_8bit
  from optzoo._src.quantized import adamw_8bit
  from optzoo._src.quantized import dequantize_blockwise
  from optzoo._src.quantized import dynamic_quantization_map
  from optzoo._src.quantized import quantize_blockwise
  from optzoo._src.quantized import quantize_state
  from optzoo._src.quantized import state_nbytes
  from optzoo._src.sharded_state import shard_spec
  from optzoo._src.sharded_state import shard_state
  # torch.optim.lr_scheduler as optax schedules (also in optzoo.schedules).
  from optzoo._src.torch_schedules import lambda_lr
  from optzoo._src.torch_schedules import multiplicative_lr
  from optzoo._src.torch_schedules import step_lr
  from optzoo._src.torch_schedules import multi_step_lr
  from optzoo._src.torch_schedules import constant_lr
  from optzoo._src.torch_schedules import linear_lr
  from optzoo._src.torch_schedules import exponential_lr
  from optzoo._src.torch_schedules import polynomial_lr
  from optzoo._src.torch_schedules import cosine_annealing_lr
  from optzoo._src.torch_schedules import sequential_lr
  from optzoo._src.torch_schedules import chained_scheduler
  from optzoo._src.torch_schedules import cyclic_momentum
  from optzoo._src.torch_schedules import reduce_lr_on_plateau
  from optzoo._src.torch_schedules import ReduceLROnPlateauState
  # torch-style parameter groups.
  from optzoo._src.param_groups import param_groups
  from optzoo._src.param_groups import param_labels
  from optzoo._src.param_groups import param_mask
  from optzoo._src.param_groups import no_decay_groups
  from optzoo._src.param_groups import scaled_lr_groups
  from optzoo._src.param_groups import path_str
  # torch state_dict interop.
  from optzoo._src.torch_interop import from_torch_optimizer_state
  from optzoo._src.torch_interop import to_torch_optimizer_state
  from optzoo._src.torch_interop import from_torch_scheduler_state
  # torch.optim.swa_utils.
  from optzoo._src.swa import AveragedModel
  from optzoo._src.swa import AveragedModelState
  from optzoo._src.swa import averaged_model
  from optzoo._src.swa import swalr
  from optzoo._src.swa import update_bn

  # Communication-efficient data parallelism (inside jax.shard_map over a data axis).
  from optzoo._src.communication import communication_stats
  from optzoo._src.communication import CompressionState
  from optzoo._src.communication import ef_signsgd
  from optzoo._src.communication import local_sgd
  from optzoo._src.communication import LocalSGDState
  from optzoo._src.communication import MajorityVoteState
  from optzoo._src.communication import powersgd
  from optzoo._src.communication import PowerSGDState
  from optzoo._src.communication import qsgd
  from optzoo._src.communication import randomk_compression
  from optzoo._src.communication import replica_specs
  from optzoo._src.communication import replicate_state
  from optzoo._src.communication import signsgd_majority_vote
  from optzoo._src.communication import topk_compression

  # Registry.
  from optzoo._src.registry import get_info
  from optzoo._src.registry import list_optimizers
  from optzoo._src.registry import MethodInfo

  # Public submodules.
  from optzoo import diagnostics
  from optzoo import research
  from optzoo import schedules
  from optzoo.diagnostics import monitor_norms

__all__ = [
    "update_and_apply",
    "communication_stats",
    "CompressionState",
    "ef_signsgd",
    "local_sgd",
    "LocalSGDState",
    "MajorityVoteState",
    "powersgd",
    "PowerSGDState",
    "qsgd",
    "randomk_compression",
    "replica_specs",
    "replicate_state",
    "signsgd_majority_vote",
    "topk_compression",
    "adabound",
    "adafactor",
    "adagrad",
    "adam",
    "adam_8bit",
    "adamw",
    "adamw_8bit",
    "add_count_penalty",
    "add_decayed_weights",
    "add_gradient_noise",
    "add_l2",
    "AddGradientNoiseState",
    "amsgrad",
    "byol_tau_schedule",
    "cast_state",
    "CastStateState",
    "collect_input_power",
    "connection_count",
    "cyclical",
    "dequantize_blockwise",
    "diagnostics",
    "dynamic_quantization_map",
    "ema_params",
    "entropy_sgd",
    "EntropySGDState",
    "exclude_bias_and_norm",
    "exponential_warmup",
    "generic_adam",
    "generic_adam_condition",
    "GenericAdamReport",
    "GenericAdamState",
    "get_info",
    "gradient_noise",
    "gradinit",
    "gradinit_objective",
    "GradInitResult",
    "gradmax_fanout",
    "gradmax_grow",
    "gradmax_matrix",
    "GradMaxResult",
    "group_leaves",
    "GroupLeavesState",
    "grow_optimizer_state",
    "koala",
    "koala_loss_stats",
    "scale_by_koala_m",
    "scale_by_koala_v",
    "KoalaMState",
    "KoalaVState",
    "lamb",
    "lars",
    "linear_warmup",
    "list_optimizers",
    "local_energy",
    "lookahead",
    "lookahead_slow_params",
    "LookaheadState",
    "lr_range_test",
    "LRRangeTestResult",
    "MaskedConv",
    "MaskedDense",
    "MethodInfo",
    "mini_block_fisher",
    "mini_block_partition",
    "monitor_norms",
    "nadam",
    "nag",
    "normalize_mask_gradients",
    "nsgd",
    "one_cycle",
    "one_cycle_momentum",
    "param_ema",
    "ParamEmaState",
    "per_example_grads",
    "project_to_sphere",
    "quantize_blockwise",
    "quantize_state",
    "QuantizedArray",
    "radam",
    "radam_warmup",
    "rectify",
    "replica_coupling",
    "ReplicaCouplingState",
    "replicate_params",
    "replicated_center",
    "replicated_sgd",
    "research",
    "rmsprop",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_bounds",
    "scale_by_factored_rms",
    "scale_by_input_power",
    "scale_by_lamb_trust_ratio",
    "scale_by_lars_trust_ratio",
    "scale_by_learning_rate",
    "scale_by_mini_block_fisher",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_sm3",
    "scale_for_batch_size",
    "ScaleByInputPowerState",
    "ScaleByMiniBlockFisherState",
    "schedules",
    "scl_labels",
    "scoped_gamma",
    "sgd",
    "sgdr",
    "sgdw",
    "shard_spec",
    "shard_state",
    "skip_nonfinite",
    "SkipNonfiniteState",
    "sm3",
    "sparse_connectivity",
    "sphere_sgd",
    "SphereSgdState",
    "state_nbytes",
    "step_ste",
    "svi_gradients",
    "svi_mse_loss",
    "SVIDense",
    "SVIMLP",
    "swats",
    "SwatsState",
    "trace",
    "tree_all_finite",
    "weight_rescaling",
    "weightnorm_data_init",
    "weightnorm_layers",
    "WeightRescalingState",
    # The rest of torch.optim.
    "adadelta",
    "adamax",
    "asgd",
    "asgd_averaged_params",
    "negate",
    "rprop",
    "scale_by_adadelta",
    "scale_by_adamax",
    "scale_by_asgd",
    "scale_by_rprop",
    "lbfgs",
    "muon",
    "newton_schulz",
    "orthogonalize",
    "scale_by_muon",
    # torch.optim.lr_scheduler
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
    "reduce_lr_on_plateau",
    "ReduceLROnPlateauState",
    # torch-style parameter groups
    "param_groups",
    "param_labels",
    "param_mask",
    "no_decay_groups",
    "scaled_lr_groups",
    "path_str",
    # torch state_dict interop
    "from_torch_optimizer_state",
    "to_torch_optimizer_state",
    "from_torch_scheduler_state",
    # torch.optim.swa_utils
    "AveragedModel",
    "AveragedModelState",
    "averaged_model",
    "swalr",
    "update_bn",
]

#  / Please don't use symbols in `_src`: they \
#  \ are not part of the optzoo public API.   /


def _public_imports(ast) -> list:
  """The ``from ... import`` statements under ``if _TYPE_CHECKING:`` above."""
  source = __loader__.get_source(__name__)  # pylint: disable=undefined-variable
  for node in ast.parse(source).body:
    if isinstance(node, ast.If) and getattr(node.test, "id", None) == "_TYPE_CHECKING":
      return node.body
  raise ImportError("optzoo/__init__.py lost its `if _TYPE_CHECKING:` import block")


def _table() -> dict:
  """``{public name: (module, attribute)}``, read once off the imports under
  ``if _TYPE_CHECKING:`` in this file."""
  global _TABLE
  if _TABLE is None:
    import ast  # pylint: disable=g-import-not-at-top
    table = {}
    for node in _public_imports(ast):
      for alias in node.names:
        table[alias.asname or alias.name] = (node.module, alias.name)
    _TABLE = table
  return _TABLE


_TABLE = None


def __getattr__(name: str):
  try:
    module, attr = _table()[name]
  except KeyError:
    raise AttributeError(f"module 'optzoo' has no attribute {name!r}") from None
  import importlib  # pylint: disable=g-import-not-at-top
  if module == __name__:  # a public submodule: ``from optzoo import research``
    value = importlib.import_module(f"{__name__}.{attr}")
  else:
    value = getattr(importlib.import_module(module), attr)
  globals()[name] = value  # later lookups are plain attribute reads
  return value


def __dir__() -> list:
  return sorted(set(globals()) | set(_table()))


_IMPORTING_ALL = False


def _import_all() -> None:
  """Imports every public name (what the registry needs to be complete)."""
  global _IMPORTING_ALL
  if _IMPORTING_ALL:  # re-entered from a module that this call is importing
    return
  _IMPORTING_ALL = True
  try:
    for name in _table():
      if name not in globals():
        __getattr__(name)
  finally:
    _IMPORTING_ALL = False
