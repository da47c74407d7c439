"""Surrogate posterior families: one module per family."""

from vi_jax.surrogates.auto import from_prior
from vi_jax.surrogates.auto import support_bijector
from vi_jax.surrogates.base import Surrogate
from vi_jax.surrogates.base import transformed_surrogate
from vi_jax.surrogates.custom import from_distribution
from vi_jax.surrogates.dirac_delta import delta
from vi_jax.surrogates.discrete import bernoulli
from vi_jax.surrogates.discrete import categorical
from vi_jax.surrogates.flows import inverse_autoregressive_flow
from vi_jax.surrogates.flows import neural_spline_flow
from vi_jax.surrogates.flows import real_nvp
from vi_jax.surrogates.full_rank import full_rank_normal
from vi_jax.surrogates.full_rank import full_rank_params
from vi_jax.surrogates.full_rank import full_rank_scale_tril
from vi_jax.surrogates.low_rank import low_rank_normal
from vi_jax.surrogates.mean_field import mean_field_normal
from vi_jax.surrogates.mixtures import mixture
from vi_jax.surrogates.structured import joint
from vi_jax.surrogates.structured import point_mass
# Last: vi_jax.surrogates.laplace_approximation builds on the families above.
from vi_jax.surrogates.laplace_approximation import laplace  # noqa: E402  pylint: disable=g-bad-import-order

__all__ = [
    "Surrogate",
    "bernoulli",
    "categorical",
    "delta",
    "from_distribution",
    "from_prior",
    "full_rank_normal",
    "full_rank_params",
    "full_rank_scale_tril",
    "inverse_autoregressive_flow",
    "joint",
    "laplace",
    "low_rank_normal",
    "mean_field_normal",
    "mixture",
    "neural_spline_flow",
    "point_mass",
    "real_nvp",
    "support_bijector",
    "transformed_surrogate",
]
