"""Automatic surrogates from a prior: each latent's support bijector chosen for it.

Given a pytree of prior distributions (TFP-on-JAX or distrax), one per latent,
`from_prior` reads each latent's shape and support and builds a surrogate
family over them (mean-field by default: ADVI; `family="delta"`: MAP), as
NumPyro's AutoNormal / AutoDelta and Bean Machine's ADVI and MAP autoguides
do.
"""

from typing import Any, Callable, Union

import distrax
import jax
import tensorflow_probability.substrates.jax as tfp

from vi_jax.surrogates.base import Surrogate

tfb, tfd = tfp.bijectors, tfp.distributions

__all__ = ["from_prior", "support_bijector"]

# distrax distributions over all of R^n: no bijector.
_REAL = (distrax.Normal, distrax.Laplace, distrax.Logistic, distrax.Gumbel,
         distrax.LogStddevNormal, distrax.MultivariateNormalDiag,
         distrax.MultivariateNormalTri, distrax.MultivariateNormalFullCovariance,
         distrax.MultivariateNormalDiagPlusLowRank,
         distrax.MultivariateNormalFromBijector)


def _is_distribution(x: Any) -> bool:
  return isinstance(x, (distrax.Distribution, tfd.Distribution))


def support_bijector(dist) -> Any:
  """The bijector from unconstrained reals onto `dist`'s support.

  TFP-on-JAX distributions: their `experimental_default_event_space_bijector()`
  (softplus for positive, sigmoid for intervals, IteratedSigmoidCentered for the
  simplex, FillScaleTriL / CorrelationCholesky for matrices). distrax
  distributions, by type: real-valued ones get None (identity); `Gamma` gets
  softplus; `Beta` the sigmoid; `Uniform(low, high)` a scaled sigmoid;
  `Dirichlet` the simplex bijector; `Independent` its base's; `Transformed(base,
  b)` the chain `b . support_bijector(base)`.

  Args:
    dist: one distribution.

  Returns:
    A bijector (TFP or distrax), or None for the real line.

  Raises:
    TypeError: `dist` is not a distribution.
    ValueError: a discrete distribution (no reparameterizable surrogate), or a
      distrax type with no known support.
  """
  if isinstance(dist, tfd.Distribution):
    if jax.numpy.issubdtype(dist.dtype, jax.numpy.integer) or (
        dist.reparameterization_type != tfd.FULLY_REPARAMETERIZED and
        isinstance(dist, (tfd.Bernoulli, tfd.Categorical, tfd.Poisson,
                          tfd.Binomial, tfd.Multinomial, tfd.OneHotCategorical,
                          tfd.NegativeBinomial, tfd.Geometric))):
      raise ValueError(
          f"{type(dist).__name__} is discrete: automatic continuous surrogates "
          "need continuous latents (marginalize it, or use point_mass for an "
          "observed value).")
    return dist.experimental_default_event_space_bijector()
  if not isinstance(dist, distrax.Distribution):
    raise TypeError(f"expected a distrax or TFP distribution; got "
                    f"{type(dist).__name__}.")
  if isinstance(dist, _REAL):
    return None
  if isinstance(dist, distrax.Gamma):
    return tfb.Softplus()
  if isinstance(dist, distrax.Beta):
    return tfb.Sigmoid()
  if isinstance(dist, distrax.Uniform):
    return tfb.Sigmoid(low=dist.low, high=dist.high)
  if isinstance(dist, distrax.Dirichlet):
    return tfb.IteratedSigmoidCentered()
  if isinstance(dist, distrax.Independent):
    return support_bijector(dist.distribution)
  if isinstance(dist, distrax.Transformed):
    base = support_bijector(dist.distribution)
    outer = dist.bijector
    if base is None:
      return outer
    return distrax.Chain([outer, distrax.as_bijector(base)
                          if isinstance(base, tfb.Bijector) else base])
  if isinstance(dist, (distrax.Bernoulli, distrax.Categorical,
                       distrax.OneHotCategorical, distrax.Multinomial,
                       distrax.Deterministic)):
    raise ValueError(
        f"{type(dist).__name__} is discrete: automatic continuous surrogates "
        "need continuous latents (use point_mass for an observed value).")
  raise ValueError(
      f"no known support bijector for distrax.{type(dist).__name__}; pass a "
      "TFP-on-JAX distribution, or build the surrogate with an explicit "
      "bijector.")


def _shape(dist) -> tuple:
  return tuple(int(d) for d in tuple(dist.batch_shape) +
               tuple(dist.event_shape))


_FAMILIES = ("mean_field", "full_rank", "low_rank", "delta")


def from_prior(prior, family: Union[str, Callable[..., Surrogate]] = "mean_field",
               **options) -> Surrogate:
  """Builds a surrogate over the latents a pytree of priors describes.

  Each leaf of `prior` is one latent's prior (a TFP-on-JAX or distrax
  distribution). The latent's shape is the prior's `batch_shape +
  event_shape` (a batch of independent priors is one latent, as NumPyro's
  sites); its support bijector is `support_bijector(prior_leaf)`.

  Args:
    prior: a distribution, or a pytree (dict, tuple, list) of distributions.
    family: "mean_field" (ADVI, the default; NumPyro AutoNormal), "delta"
      (MAP; NumPyro AutoDelta), "full_rank", "low_rank" (needs `rank=`), or
      any factory `(event_shape, bijector, **options) -> Surrogate` (e.g. a
      flow from `vi_jax.surrogates`).
    **options: passed to the family's factory (`init_scale`, `rank`, ...).

  Returns:
    A `Surrogate` whose draws have the structure of `prior`, each leaf
    `[sample_size, *batch_shape, *event_shape]` inside its prior's support.

  Raises:
    ValueError: an unknown `family`, a leaf that is not a distribution, or a
      discrete prior.

  References:
    Kucukelbir et al. 2017 (ADVI); numpyro.infer.autoguide.AutoNormal,
    AutoDelta; Bean Machine's ADVI and MAP autoguides.
  """
  from vi_jax.surrogates import delta, full_rank_normal, mean_field_normal
  from vi_jax.surrogates.low_rank import low_rank_normal
  factories = {"mean_field": mean_field_normal, "full_rank": full_rank_normal,
               "low_rank": low_rank_normal, "delta": delta}
  if isinstance(family, str):
    if family not in factories:
      raise ValueError(f"family must be one of {_FAMILIES} or a factory; got "
                       f"{family!r}.")
    factory = factories[family]
  elif callable(family):
    factory = family
  else:
    raise ValueError(f"family must be one of {_FAMILIES} or a factory; got "
                     f"{family!r}.")
  leaves, treedef = jax.tree_util.tree_flatten(prior, is_leaf=_is_distribution)
  bad = [type(l).__name__ for l in leaves if not _is_distribution(l)]
  if not leaves or bad:
    raise ValueError(
        "prior must be a distribution or a pytree of distributions; got "
        f"leaves of types {bad or '[] (empty)'}.")
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(prior,
                                                is_leaf=_is_distribution)[0]]
  bijectors = []
  for path, leaf in zip(paths, leaves):
    try:
      bijectors.append(support_bijector(leaf))
    except ValueError as e:
      raise ValueError(f"prior{path}: {e}") from e
  shapes = [_shape(l) for l in leaves]
  if _is_distribution(prior):
    event_shape, bijector = shapes[0], bijectors[0]
  else:
    event_shape = treedef.unflatten(shapes)
    bijector = treedef.unflatten(bijectors)
  if isinstance(family, str) and family == "low_rank":
    rank = options.pop("rank", None)
    if rank is None:
      raise ValueError('family="low_rank" needs rank=<int>.')
    return factory(event_shape, rank, bijector, **options)
  return factory(event_shape, bijector, **options)
