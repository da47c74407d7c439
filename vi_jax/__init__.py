"""vi_jax: variational inference in JAX.

Fit a surrogate posterior q to an unnormalized `target_log_prob_fn` with
pure, composable functions (jit, vmap, grad) over pytrees.
"""

from vi_jax.model import adapters
from vi_jax.stochastic import adaptive
from vi_jax.model import bijectors
from vi_jax.stochastic import checkpoint
from vi_jax._src import compile_cache
from vi_jax.stochastic import convergence
from vi_jax.objectives import csiszar
from vi_jax.criticism import diagnostics
from vi_jax.criticism import export
from vi_jax.objectives import kl
from vi_jax.objectives import losses
from vi_jax.stochastic import minibatch
from vi_jax.criticism import plots
from vi_jax.stochastic import progress
from vi_jax.stochastic import restarts
from vi_jax.stochastic import sharding
from vi_jax import surrogates
from vi_jax.model import target
from vi_jax.surrogates import whitening
from vi_jax.stochastic.adaptive import AdaptiveResult
from vi_jax.stochastic.adaptive import fit_adaptive
from vi_jax.auto.automatic_vi import AutoFitResult
from vi_jax.auto.automatic_vi import StageRecord
from vi_jax.auto.automatic_vi import auto_fit
from vi_jax.solvers.deterministic_advi import DADVIResult
from vi_jax.solvers.deterministic_advi import dadvi
from vi_jax.solvers.deterministic_advi import dadvi_linear_response_covariance
from vi_jax.stochastic.svi import FitResult
from vi_jax.stochastic.svi import TraceableQuantities
from vi_jax.stochastic.svi import VIAlgorithm
from vi_jax.stochastic.svi import VIState
from vi_jax.stochastic.svi import build
from vi_jax.stochastic.svi import fit
from vi_jax.objectives.kl import kl_divergence
from vi_jax.objectives.kl import monte_carlo_kl
from vi_jax.surrogates.laplace_approximation import LaplaceResult
from vi_jax.surrogates.laplace_approximation import laplace
from vi_jax.solvers.multipath_pathfinder import PathfinderResult
from vi_jax.solvers.multipath_pathfinder import pathfinder
from vi_jax.surrogates import Surrogate

__version__ = "0.1.0"

__all__ = [
    "AdaptiveResult",
    "AutoFitResult",
    "DADVIResult",
    "FitResult",
    "LaplaceResult",
    "PathfinderResult",
    "StageRecord",
    "Surrogate",
    "TraceableQuantities",
    "VIAlgorithm",
    "VIState",
    "adapters",
    "adaptive",
    "auto_fit",
    "bijectors",
    "build",
    "checkpoint",
    "compile_cache",
    "convergence",
    "csiszar",
    "dadvi",
    "dadvi_linear_response_covariance",
    "diagnostics",
    "export",
    "fit",
    "fit_adaptive",
    "kl",
    "kl_divergence",
    "laplace",
    "losses",
    "minibatch",
    "monte_carlo_kl",
    "pathfinder",
    "plots",
    "progress",
    "restarts",
    "sharding",
    "surrogates",
    "target",
    "whitening",
]
