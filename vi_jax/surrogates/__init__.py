"""Surrogate posterior families: one module per family."""

from vi_jax.surrogates.base import Surrogate
from vi_jax.surrogates.base import transformed_surrogate
from vi_jax.surrogates.delta import delta
from vi_jax.surrogates.discrete import bernoulli
from vi_jax.surrogates.discrete import categorical
from vi_jax.surrogates.full_rank import full_rank_normal
from vi_jax.surrogates.mean_field import mean_field_normal

__all__ = [
    "Surrogate",
    "bernoulli",
    "categorical",
    "delta",
    "full_rank_normal",
    "mean_field_normal",
    "transformed_surrogate",
]
