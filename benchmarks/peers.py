"""vi_jax and its peers as comparable fit functions on one benchmark target.

    python -m benchmarks.peers [--quick]   # one short fit of every method

Every method fits a Gaussian (mean-field or full-rank) on the same
unconstrained space of the same target, with the same optax optimizer, number
of steps, sample size and initialization (loc 0, scale 0.1), and the plain
reparameterization gradient of -ELBO (no sticking-the-landing). `build(...)`
returns `run(key) -> Fitted(loc, scale, losses)` to jit, where `scale` is the
diagonal `[dim]` (mean-field) or the lower-triangular factor `[dim, dim]`
(full-rank) in the unconstrained space and `losses: [num_steps]` is the traced
loss (-ELBO estimate) of every step:

* vi_jax: `vi.fit` with `vi.surrogates.mean_field_normal` / `full_rank_normal`
  over the target's pytree of latents with its bijectors (its public API);
* NumPyro: `SVI(model, AutoNormal / AutoMultivariateNormal, optax optimizer,
  Trace_ELBO(num_particles=S)).run(key, num_steps, progress_bar=False)`, the
  model one `ImproperUniform` site on the unconstrained vector plus
  `numpyro.factor` with the log density;
* Blackjax: `blackjax.meanfield_vi` / `blackjax.fullrank_vi` with
  `stl_estimator=False`, stepped by `lax.scan`, the state started at scale 0.1;
* TFP-on-JAX: `tfp.vi.fit_surrogate_posterior_stateless` (`jit_compile=True`)
  with `MultivariateNormalDiag(loc, softplus(raw))` /
  `MultivariateNormalTriL(loc, FillScaleTriL(raw))`.
"""

import argparse
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import targets

INIT_SCALE = 0.1
FAMILIES = ("mean-field", "full-rank")
LIBRARIES = ("vi_jax", "numpyro", "blackjax", "tfp")


class Fitted(NamedTuple):
  loc: jax.Array  # [dim], unconstrained space
  scale: jax.Array  # [dim] (mean-field) or [dim, dim] lower triangular
  losses: jax.Array  # [num_steps], the traced loss (-ELBO estimate)


def _inv_softplus(x):
  return x + jnp.log(-jnp.expm1(-x))


def _vi_jax(target, family, optimizer, sample_size, num_steps):
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  if family == "mean-field":
    surrogate = vi.surrogates.mean_field_normal(
        target.event_shape, target.bijector, init_scale=INIT_SCALE)
  else:
    surrogate = vi.surrogates.full_rank_normal(
        target.event_shape, target.bijector, init_scale=INIT_SCALE)

  def run(key):
    result = vi.fit(target.target_log_prob_fn, surrogate, optimizer, num_steps,
                    key=key, sample_size=sample_size)
    p = result.params
    if family == "mean-field":
      scale = jax.nn.softplus(p["raw_scale"])
    else:
      scale = vi.surrogates.full_rank_scale_tril(p)
    return Fitted(p["loc"], scale, result.trace)

  return run


def numpyro_svi(target, family, optimizer, sample_size):
  """NumPyro's `SVI` on `target`'s flat density (see the module docstring).

  `target` needs `dim` and `unconstrained_log_prob`. Used by `_numpyro` and by
  `benchmarks.auto_methods`, which steps `svi.update` in chunks.
  """
  import numpyro  # pylint: disable=g-import-not-at-top
  from numpyro import distributions as dist  # pylint: disable=g-import-not-at-top
  from numpyro.infer import SVI, Trace_ELBO, autoguide, init_to_value  # pylint: disable=g-import-not-at-top
  dim = target.dim
  log_p = target.unconstrained_log_prob

  def model():
    u = numpyro.sample(
        "u", dist.ImproperUniform(dist.constraints.real_vector, (), (dim,)))
    numpyro.factor("log_p", log_p(u))

  init = init_to_value(values={"u": jnp.zeros((dim,))})
  if family == "mean-field":
    guide = autoguide.AutoNormal(model, init_loc_fn=init,
                                 init_scale=INIT_SCALE)
  else:
    guide = autoguide.AutoMultivariateNormal(model, init_loc_fn=init,
                                             init_scale=INIT_SCALE)
  return SVI(model, guide, optimizer, Trace_ELBO(num_particles=sample_size))


def numpyro_fitted(params, family, losses) -> Fitted:
  """`Fitted` from NumPyro's (constrained) guide params."""
  if family == "mean-field":
    return Fitted(params["u_auto_loc"], params["u_auto_scale"], losses)
  return Fitted(params["auto_loc"], params["auto_scale_tril"], losses)


def _numpyro(target, family, optimizer, sample_size, num_steps):
  svi = numpyro_svi(target, family, optimizer, sample_size)

  def run(key):
    result = svi.run(key, num_steps, progress_bar=False)
    return numpyro_fitted(result.params, family, result.losses)

  return run


def blackjax_vi(target, family, optimizer, sample_size):
  """(Blackjax's VIAlgorithm, its initial state at loc 0, scale 0.1)."""
  import blackjax  # pylint: disable=g-import-not-at-top
  from blackjax.vi import fullrank_vi, meanfield_vi  # pylint: disable=g-import-not-at-top
  dim = target.dim
  api = blackjax.meanfield_vi if family == "mean-field" else blackjax.fullrank_vi
  alg = api(target.unconstrained_log_prob, optimizer, num_samples=sample_size,
            stl_estimator=False)
  mu = jnp.zeros((dim,))
  log_s = jnp.full((dim,), jnp.log(INIT_SCALE))
  if family == "mean-field":
    state = meanfield_vi.MFVIState(mu, log_s, optimizer.init((mu, log_s)))
  else:
    chol = jnp.concatenate([log_s, jnp.zeros((dim * (dim - 1) // 2,))])
    state = fullrank_vi.FRVIState(mu, chol, optimizer.init((mu, chol)))
  return alg, state


def blackjax_fitted(state, family, losses) -> Fitted:
  """`Fitted` from a Blackjax mean-field / full-rank VI state."""
  from blackjax.vi import fullrank_vi  # pylint: disable=g-import-not-at-top
  if family == "mean-field":
    return Fitted(state.mu, jnp.exp(state.rho), losses)
  return Fitted(state.mu, fullrank_vi._unflatten_cholesky(  # pylint: disable=protected-access
      state.chol_params, state.mu.shape[-1]), losses)


def _blackjax(target, family, optimizer, sample_size, num_steps):
  alg, state = blackjax_vi(target, family, optimizer, sample_size)

  def run(key):

    def body(state, k):
      state, info = alg.step(k, state)
      return state, info.elbo  # blackjax's `elbo` field holds -ELBO

    final, losses = jax.lax.scan(body, state, jax.random.split(key, num_steps))
    return blackjax_fitted(final, family, losses)

  return run


def _tfp(target, family, optimizer, sample_size, num_steps):
  from tensorflow_probability.substrates import jax as tfp  # pylint: disable=g-import-not-at-top
  tfd, tfb = tfp.distributions, tfp.bijectors
  dim = target.dim
  log_p = jax.vmap(target.unconstrained_log_prob)
  fill = tfb.FillScaleTriL(diag_bijector=tfb.Softplus(),
                           diag_shift=jnp.float32(1e-5))
  loc = jnp.zeros((dim,))
  if family == "mean-field":
    raw = jnp.full((dim,), _inv_softplus(jnp.float32(INIT_SCALE)))
    build = lambda loc, raw: tfd.MultivariateNormalDiag(
        loc, jax.nn.softplus(raw))
    to_scale = jax.nn.softplus
  else:
    raw = fill.inverse(jnp.eye(dim) * INIT_SCALE)
    build = lambda loc, raw: tfd.MultivariateNormalTriL(loc, fill.forward(raw))
    to_scale = fill.forward

  def run(key):
    (loc_, raw_), losses = tfp.vi.fit_surrogate_posterior_stateless(
        log_p, build, (loc, raw), optimizer, num_steps,
        sample_size=sample_size, jit_compile=True, seed=key)
    return Fitted(loc_, to_scale(raw_), losses)

  return run


_BUILDERS = {"vi_jax": _vi_jax, "numpyro": _numpyro, "blackjax": _blackjax,
             "tfp": _tfp}


def build(library: str, family: str, target: targets.Target,
          optimizer: optax.GradientTransformation, sample_size: int,
          num_steps: int) -> Callable[[jax.Array], Fitted]:
  """`run(key) -> Fitted` for `library` in LIBRARIES, `family` in FAMILIES."""
  if library not in _BUILDERS:
    raise ValueError(f"library must be one of {LIBRARIES}; got {library!r}.")
  if family not in FAMILIES:
    raise ValueError(f"family must be one of {FAMILIES}; got {family!r}.")
  return _BUILDERS[library](target, family, optimizer, sample_size, num_steps)


def gaussian_draws(fitted: Fitted, key, num_draws: int):
  """(u: [n, dim], log_q: [n]) from a fitted Gaussian in the unconstrained space."""
  dim = fitted.loc.shape[-1]
  eps = jax.random.normal(key, (num_draws, dim))
  if fitted.scale.ndim == 1:
    u = fitted.loc + eps * fitted.scale
    log_det = jnp.sum(jnp.log(fitted.scale))
  else:
    u = fitted.loc + eps @ fitted.scale.T
    log_det = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(fitted.scale))))
  log_q = (-0.5 * jnp.sum(eps**2, -1) - log_det -
           0.5 * dim * jnp.log(2 * jnp.pi))
  return u, log_q


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  steps = 50 if args.quick else 500
  target = targets.eight_schools()
  optimizer = optax.adam(1e-2)
  rows = []
  for family in FAMILIES:
    for library in LIBRARIES:
      run = build(library, family, target, optimizer, 4, steps)
      fitted = jax.jit(run)(jax.random.key(0))
      row = (target.name, library, family,
             float(np.mean(np.asarray(fitted.losses[-10:]))))
      print(row, flush=True)
      rows.append(row)
  return rows


if __name__ == "__main__":
  main()
