"""Mixtures of Gaussians over the unconstrained latents, with learned weights.

q(u) = sum_k pi_k N(u; loc_k, Sigma_k), pushed through each latent's support
bijector. Sampling and `log_prob` are exact (`log_q` is the mixture's log
density, a logsumexp over components).

Gradients. Drawing the component index is discrete, so a plain
"pick k, then reparameterize N(loc_k, Sigma_k)" path gives no gradient to the
mixture weights through z, and a reparameterization estimator of the ELBO (or
of the IWAE bound) would be biased for them. Here the whole draw, weights
included, is reparameterized by implicit reparameterization gradients
(Figurnov, Mohamed, Mnih 2018; Graves 2016, "Stochastic backpropagation
through mixture density distributions"): with `T(u; params)` the
distributional (Rosenblatt) transform, the sequence of conditional CDFs
`F_i(u_i | u_<i)`, which maps q onto the uniform cube, a draw satisfies
`T(u; params) = const`, so

    du/dparams = -(dT/du)^(-1) dT/dparams,

with `dT/du` lower triangular (its diagonal the conditional densities). The
estimator is unbiased for the weights, locations and scales, so the mixture is
`reparameterized=True` and works with every reparameterization objective
(ELBO, IWAE, its doubly-reparameterized variant) and with objectives that only
need `log_prob` (forward KL).

* `components="mean_field"`: TFP-on-JAX's `MixtureSameFamily(...,
  reparameterize=True)` over `Independent(Normal)` components computes exactly
  these gradients.
* `components="full_rank"`: TFP supports only factorized components, so vi_jax
  attaches the same implicit gradient to a distrax `MixtureSameFamily` of
  `MultivariateNormalTri` draws with a custom JVP: under component k,
  `u_i | u_<i ~ N(loc_ki + sum_{j<i} L_kij eps_kj, L_kii^2)` with `eps_k =
  L_k^(-1)(u - loc_k)`, and the conditional weights of the components are
  their posterior probabilities given `u_<i`. Cost per draw O(K dim^3).
"""

from typing import Any

import distrax
import jax
import jax.numpy as jnp
import tensorflow_probability.substrates.jax as tfp

from vi_jax.model import bijectors as bij_lib
from vi_jax.surrogates._distribution import with_distribution_fn
from vi_jax.surrogates.base import (Surrogate, default_dtype, initial_loc,
                                    transformed_surrogate)
from vi_jax._src.validation import positive_int

tfb, tfd = tfp.bijectors, tfp.distributions

__all__ = ["mixture"]

_COMPONENTS = ("mean_field", "full_rank")


def _rosenblatt(u, logits, loc, tril):
  """Conditional CDFs `[dim]` of one point `u: [dim]` under the mixture."""
  eps = jax.vmap(lambda m, l: jax.scipy.linalg.solve_triangular(
      l, u - m, lower=True))(loc, tril)  # [K, dim]
  log_diag = jnp.log(jnp.diagonal(tril, axis1=-2, axis2=-1))  # [K, dim]
  a = jax.scipy.stats.norm.logpdf(eps) - log_diag
  prefix = jnp.cumsum(a, axis=-1) - a  # sum over j < i
  log_w = jax.nn.log_softmax(logits)[:, None] + prefix
  w = jax.nn.softmax(log_w, axis=0)
  return jnp.sum(w * jax.scipy.stats.norm.cdf(eps), axis=0)


@jax.custom_jvp
def _implicit_draw(u, logits, loc, tril):
  """Returns `u` (draws `[n, dim]`); the JVP is the implicit gradient."""
  del logits, loc, tril
  return u


@_implicit_draw.defjvp
def _implicit_draw_jvp(primals, tangents):
  u, logits, loc, tril = jax.tree_util.tree_map(jax.lax.stop_gradient,
                                                primals)
  _, d_logits, d_loc, d_tril = tangents

  def one(x):
    t_u = jax.jacfwd(_rosenblatt)(x, logits, loc, tril)  # lower triangular
    _, t_params = jax.jvp(lambda lg, m, l: _rosenblatt(x, lg, m, l),
                          (logits, loc, tril), (d_logits, d_loc, d_tril))
    return -jax.scipy.linalg.solve_triangular(t_u, t_params, lower=True)

  return u, jax.vmap(one)(u)


class _FullRankMixture(distrax.Distribution):
  """distrax `MixtureSameFamily` of `MultivariateNormalTri` whose draws carry
  implicit reparameterization gradients (see the module docstring)."""

  def __init__(self, logits, loc, tril):
    self._logits, self._loc, self._tril = logits, loc, tril
    self._mixture = distrax.MixtureSameFamily(
        distrax.Categorical(logits=logits),
        distrax.MultivariateNormalTri(loc, tril))

  @property
  def event_shape(self):
    return self._mixture.event_shape

  def _sample_n(self, key, n):
    u = jax.lax.stop_gradient(self._mixture.sample(seed=key,
                                                   sample_shape=(n,)))
    return _implicit_draw(u, self._logits, self._loc, self._tril)

  def log_prob(self, value):
    return self._mixture.log_prob(value)


def mixture(event_shape, num_components: int, bijector=None, *,
            components: str = "mean_field", init_loc=None,
            init_loc_radius: float = 2., init_scale: float = 1.,
            dtype=None) -> Surrogate:
  """A K-component Gaussian mixture with learned weights (fully reparameterized).

  Params: `{"logits": [K], "loc": [K, dim], "raw_scale": [K, dim]}` for
  mean-field components (`scale = softplus(raw_scale)`), or `"raw_scale_tril":
  [K, dim * (dim + 1) / 2]` (TFP's `FillScaleTriL`) for full-rank ones.
  Initialization: equal weights; each component's loc is `init_loc` (0) plus
  its own uniform(-init_loc_radius, init_loc_radius) jitter (2 by default,
  NumPyro's `init_to_uniform` radius), which breaks the symmetry between
  components; scale `init_scale` (1).

  Args:
    event_shape: a shape or pytree of shapes.
    num_components: K, a Python int >= 1.
    bijector: None, one bijector, or a pytree of bijectors matching event_shape.
    components: "mean_field" (diagonal covariances) or "full_rank".
    init_loc: optional initial unconstrained location shared by the
      components before jitter.
    init_loc_radius: half-width of each component's uniform loc jitter (> 0
      for K > 1, or all components start identical and stay so).
    init_scale: initial standard deviation of every component coordinate.
    dtype: floating dtype of the params.

  Returns:
    A `Surrogate` with exact `log_q` and implicit-reparameterization gradients
    for all params (module docstring); `distribution_fn` set for a
    single-array latent.

  Raises:
    ValueError: bad `event_shape`/`bijector`, `num_components < 1`, unknown
      `components`, `init_scale <= 0`.

  References:
    Figurnov, Mohamed, Mnih 2018, "Implicit reparameterization gradients";
    Graves 2016; Morningstar et al. 2021, "Automatic differentiation
    variational inference with mixtures"; tfp.distributions.MixtureSameFamily
    (reparameterize=True).
  """
  num_components = positive_int("num_components", num_components)
  if components not in _COMPONENTS:
    raise ValueError(f"components must be one of {_COMPONENTS}; got "
                     f"{components!r}.")
  if not init_scale > 0:
    raise ValueError(f"init_scale must be > 0; got {init_scale}.")
  space = bij_lib.latent_space(event_shape, bijector)
  dtype = default_dtype(dtype)
  dim, k = space.dim, num_components
  fill = tfb.FillScaleTriL(diag_bijector=tfb.Softplus(),
                           diag_shift=jnp.asarray(1e-5, dtype))

  def init_fn(key):
    keys = jax.random.split(key, k)
    loc = jnp.stack([initial_loc(space, kk, init_loc, init_loc_radius, dtype)
                     for kk in keys])
    params = {"logits": jnp.zeros((k,), dtype), "loc": loc}
    if components == "mean_field":
      raw = jnp.full((k, dim), init_scale, dtype)
      params["raw_scale"] = raw + jnp.log(-jnp.expm1(-raw))
    else:
      tril = jnp.eye(dim, dtype=dtype) * jnp.asarray(init_scale, dtype)
      params["raw_scale_tril"] = jnp.broadcast_to(
          fill.inverse(tril), (k, dim * (dim + 1) // 2))
    return params

  def distribution_fn(params) -> Any:
    if components == "mean_field":
      return distrax.as_distribution(tfd.MixtureSameFamily(
          tfd.Categorical(logits=params["logits"]),
          tfd.Independent(tfd.Normal(params["loc"],
                                     jax.nn.softplus(params["raw_scale"])), 1),
          reparameterize=True))
    return _FullRankMixture(params["logits"], params["loc"],
                            fill.forward(params["raw_scale_tril"]))

  surrogate = transformed_surrogate(space, init_fn, distribution_fn)
  return with_distribution_fn(surrogate, space, distribution_fn)
