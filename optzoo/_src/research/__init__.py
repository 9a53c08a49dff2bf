"""Research methods: one module per paper; the public surface is :mod:`optzoo.research`."""

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

__all__ = [
    "add_count_penalty",
    "collect_input_power",
    "connection_count",
    "entropy_sgd",
    "EntropySGDState",
    "generic_adam",
    "generic_adam_condition",
    "GenericAdamReport",
    "GenericAdamState",
    "gradient_noise",
    "gradinit",
    "gradinit_objective",
    "GradInitResult",
    "gradmax_fanout",
    "gradmax_grow",
    "gradmax_matrix",
    "GradMaxResult",
    "grow_optimizer_state",
    "koala",
    "koala_loss_stats",
    "KoalaMState",
    "KoalaVState",
    "local_energy",
    "MaskedConv",
    "MaskedDense",
    "mini_block_fisher",
    "mini_block_partition",
    "normalize_mask_gradients",
    "nsgd",
    "per_example_grads",
    "project_to_sphere",
    "replica_coupling",
    "ReplicaCouplingState",
    "replicate_params",
    "replicated_center",
    "replicated_sgd",
    "scale_by_input_power",
    "scale_by_mini_block_fisher",
    "ScaleByInputPowerState",
    "ScaleByMiniBlockFisherState",
    "scl_labels",
    "scoped_gamma",
    "sparse_connectivity",
    "sphere_sgd",
    "SphereSgdState",
    "step_ste",
    "svi_gradients",
    "svi_mse_loss",
    "SVIDense",
    "SVIMLP",
    "weight_rescaling",
    "weightnorm_data_init",
    "weightnorm_layers",
    "WeightRescalingState",
]
