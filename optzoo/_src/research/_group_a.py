"""Re-exports of KOALA, NSGD, WRS/sphere, MBF (issue 4, first half)."""
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

__all__ = [
    "KoalaMState",
    "KoalaVState",
    "ScaleByInputPowerState",
    "ScaleByMiniBlockFisherState",
    "SphereSgdState",
    "WeightRescalingState",
    "collect_input_power",
    "koala",
    "koala_loss_stats",
    "mini_block_fisher",
    "mini_block_partition",
    "nsgd",
    "per_example_grads",
    "project_to_sphere",
    "scale_by_input_power",
    "scale_by_mini_block_fisher",
    "sphere_sgd",
    "weight_rescaling",
]
