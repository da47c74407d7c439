"""vi_jax: variational inference in JAX.

Fit a surrogate posterior q to an unnormalized `target_log_prob_fn` with
pure, composable functions (jit, vmap, grad) over pytrees.
"""

from vi_jax import adapters
from vi_jax import adaptive
from vi_jax import bijectors
from vi_jax import checkpoint
from vi_jax import compile_cache
from vi_jax import convergence
from vi_jax import csiszar
from vi_jax import diagnostics
from vi_jax import export
from vi_jax import kl
from vi_jax import losses
from vi_jax import minibatch
from vi_jax import plots
from vi_jax import progress
from vi_jax import restarts
from vi_jax import sharding
from vi_jax import surrogates
from vi_jax import target
from vi_jax import whitening
from vi_jax.adaptive import AdaptiveResult
from vi_jax.adaptive import fit_adaptive
from vi_jax.auto_fit import AutoFitResult
from vi_jax.auto_fit import StageRecord
from vi_jax.auto_fit import auto_fit
from vi_jax.dadvi import DADVIResult
from vi_jax.dadvi import dadvi
from vi_jax.dadvi import dadvi_linear_response_covariance
from vi_jax.fit import FitResult
from vi_jax.fit import TraceableQuantities
from vi_jax.fit import VIAlgorithm
from vi_jax.fit import VIState
from vi_jax.fit import build
from vi_jax.fit import fit
from vi_jax.kl import kl_divergence
from vi_jax.kl import monte_carlo_kl
from vi_jax.laplace import LaplaceResult
from vi_jax.laplace import laplace
from vi_jax.pathfinder import PathfinderResult
from vi_jax.pathfinder import pathfinder
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
