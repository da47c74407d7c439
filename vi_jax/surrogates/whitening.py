"""Whitening (preconditioning): fit any family in coordinates u with z = T(loc + L u).

A badly scaled posterior (condition numbers of 1e5 to 1e11 in regressions)
is hard for a stochastic optimizer with one learning rate for all params.
Given a Gaussian guess `N(loc, L L^T)` of the unconstrained posterior (from
`vi.pathfinder` or `vi.laplace`), `whiten` builds the family over the
whitened vector `u: [dim]` and maps its draws by the affine map
`x = loc + L u`, then onto the latents' supports by their bijectors T. In u
the posterior is close to N(0, I), where the family's default step sizes and
initial scales are right. The surrogate's draws and `log_q` are in the
constrained space as for any family, so `vi.fit`, diagnostics and export work
unchanged.

References: the affine (mass-matrix) preconditioning of HMC (Neal 2011) and
of Stan's ADVI/Pathfinder initializations; Hoffman et al. (2019), "NeuTra-lizing
bad geometry in Hamiltonian Monte Carlo using neural transport" (a fitted map
in front of a simple base).
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax.model import bijectors as bij_lib
from vi_jax.surrogates.base import Surrogate, from_latents, to_latents

__all__ = ["whiten"]


def _check_gaussian(loc, scale_tril, dim: int):
  """Shapes (and, for concrete arrays, lower triangularity) or a ValueError."""
  if jnp.shape(loc) != (dim,):
    raise ValueError(f"loc must have shape [dim] = ({dim},) (the flat "
                     f"unconstrained space of event_shape); got {jnp.shape(loc)}.")
  if jnp.shape(scale_tril) != (dim, dim):
    raise ValueError(f"scale_tril must have shape [dim, dim] = ({dim}, {dim}); "
                     f"got {jnp.shape(scale_tril)}.")
  if not isinstance(scale_tril, jax.core.Tracer):
    tril = np.asarray(scale_tril)
    if np.any(np.triu(tril, 1) != 0) or not np.all(np.diagonal(tril) > 0):
      raise ValueError("scale_tril must be lower triangular with a positive "
                       "diagonal (a Cholesky factor, e.g. PathfinderResult."
                       "scale_tril or LaplaceResult.scale_tril).")


def _as_array(x):
  """`x` as a JAX array; a host array is put on the device (`jnp.asarray`
  would compile a program per shape to stage it)."""
  if isinstance(x, (jax.Array, jax.core.Tracer)):
    return x
  return jax.device_put(np.asarray(x))


def _log_det(scale_tril):
  """`sum(log diag(scale_tril))`, by numpy for a concrete factor (no eager
  XLA programs to compile when a surrogate is built)."""
  if isinstance(scale_tril, jax.core.Tracer):
    return jnp.sum(jnp.log(jnp.diagonal(scale_tril)))
  tril = np.asarray(scale_tril)
  return np.sum(np.log(np.diagonal(tril))).astype(tril.dtype)


def whiten(make_surrogate, event_shape, bijector=None, *, loc, scale_tril,
           **family_kwargs) -> Surrogate:
  """`make_surrogate`'s family fitted in whitened coordinates `u`.

  The surrogate's draws are `z = T(loc + scale_tril @ u)`, `u` drawn from
  `make_surrogate((dim,), **family_kwargs)` (no bijector: u is
  unconstrained), T the latents' bijectors on the flat unconstrained vector
  split like `event_shape`; `log_q(z) = log q_u(u) - sum(log diag(scale_tril))
  - log|det J_T|`. Unless `family_kwargs` says otherwise, the family is
  initialized with `init_scale=1.` (where it takes one), so an untrained
  whitened Gaussian is exactly `N(loc, scale_tril scale_tril^T)` in the
  unconstrained space.

  Works for every family factory taking `(event_shape, ...)`:
  `mean_field_normal`, `full_rank_normal`, `low_rank_normal(rank=...)`,
  `real_nvp`, `neural_spline_flow`, `mixture(num_components=...)`, ... The
  params are the family's own (in u); `vi.fit`, `vi.diagnostics` and
  `vi.export` work unchanged.

  Args:
    make_surrogate: a family factory `(event_shape, **kwargs) -> Surrogate`.
    event_shape: a shape or pytree of shapes of the latents.
    bijector: None, one bijector, or a pytree of bijectors onto each latent's
      support.
    loc: `[dim]` the unconstrained center (e.g. `PathfinderResult.loc`).
    scale_tril: `[dim, dim]` lower Cholesky factor of the unconstrained
      covariance guess (e.g. `PathfinderResult.scale_tril`).
    **family_kwargs: passed to `make_surrogate` (e.g. `rank=4`, `dtype=...`).

  Returns:
    A `Surrogate` with draws shaped like `event_shape` (leading
    `[sample_size]`) in each latent's support. Its `distribution_fn` is None.

  Raises:
    ValueError: bad `event_shape` / `bijector`, or `loc` / `scale_tril` of
      the wrong shape, or a (concrete) `scale_tril` that is not lower
      triangular with a positive diagonal.
    TypeError: `make_surrogate` is not callable.
  """
  if not callable(make_surrogate):
    raise TypeError("make_surrogate must be a surrogate family factory (e.g. "
                    "vi.surrogates.mean_field_normal); got "
                    f"{type(make_surrogate).__name__}.")
  space = bij_lib.latent_space(event_shape, bijector)
  _check_gaussian(loc, scale_tril, space.dim)
  log_det_scale = _log_det(scale_tril)
  loc, scale_tril = _as_array(loc), _as_array(scale_tril)
  try:
    takes_init_scale = "init_scale" in inspect.signature(
        make_surrogate).parameters
  except (TypeError, ValueError):
    takes_init_scale = False
  if takes_init_scale:
    family_kwargs.setdefault("init_scale", 1.)
  inner = make_surrogate((space.dim,), **family_kwargs)

  def sample_and_log_prob(params, key, sample_size):
    u, log_q_u = inner.sample_and_log_prob(params, key, sample_size)
    x = loc.astype(u.dtype) + u @ scale_tril.T.astype(u.dtype)
    return to_latents(space, x, log_q_u - log_det_scale)

  def log_prob(params, z):
    x, ildj, batch = from_latents(space, z)
    u = jax.scipy.linalg.solve_triangular(scale_tril, (x - loc).T,
                                          lower=True).T
    log_q = inner.log_prob(params, u) - log_det_scale + ildj
    return jnp.reshape(log_q, batch)

  return Surrogate(init=inner.init, sample_and_log_prob=sample_and_log_prob,
                   log_prob=log_prob, reparameterized=inner.reparameterized)
