"""Re-exports of Entropy-SGD, Replicated-SGD, SVI, SCL, GradInit, GradMax, WeightNorm."""
from optzoo._src.research.entropy import entropy_sgd
from optzoo._src.research.entropy import local_energy
from optzoo._src.research.entropy import replica_coupling
from optzoo._src.research.entropy import replicate_params
from optzoo._src.research.entropy import replicated_center
from optzoo._src.research.entropy import replicated_sgd
from optzoo._src.research.gradinit import GradInitResult
from optzoo._src.research.gradinit import gradinit
from optzoo._src.research.gradinit import gradinit_objective
from optzoo._src.research.gradmax import GradMaxResult
from optzoo._src.research.gradmax import gradmax_fanout
from optzoo._src.research.gradmax import gradmax_grow
from optzoo._src.research.gradmax import gradmax_matrix
from optzoo._src.research.gradmax import grow_optimizer_state
from optzoo._src.research.scl import MaskedConv
from optzoo._src.research.scl import MaskedDense
from optzoo._src.research.scl import add_count_penalty
from optzoo._src.research.scl import connection_count
from optzoo._src.research.scl import normalize_mask_gradients
from optzoo._src.research.scl import scl_labels
from optzoo._src.research.scl import sparse_connectivity
from optzoo._src.research.scl import step_ste
from optzoo._src.research.weightnorm import weightnorm_data_init
from optzoo._src.research.weightnorm import weightnorm_layers
from optzoo._src.research.svi import SVIDense
from optzoo._src.research.svi import SVIMLP
from optzoo._src.research.svi import svi_gradients
from optzoo._src.research.svi import svi_mse_loss

__all__ = [
    "GradInitResult",
    "GradMaxResult",
    "MaskedConv",
    "MaskedDense",
    "SVIDense",
    "SVIMLP",
    "add_count_penalty",
    "connection_count",
    "entropy_sgd",
    "gradinit",
    "gradinit_objective",
    "gradmax_fanout",
    "gradmax_grow",
    "gradmax_matrix",
    "grow_optimizer_state",
    "local_energy",
    "normalize_mask_gradients",
    "replica_coupling",
    "replicate_params",
    "replicated_center",
    "replicated_sgd",
    "scl_labels",
    "sparse_connectivity",
    "step_ste",
    "svi_gradients",
    "svi_mse_loss",
    "weightnorm_data_init",
    "weightnorm_layers",
]
