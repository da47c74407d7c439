"""Can this fit be trusted? Importance-sampling diagnostics of a surrogate.

Draw `z_s ~ q` (s = 1..S) and form the log importance ratios
`log w_s = log p(z_s) - log q(z_s)` (p the unnormalized target). Then:

* **PSIS k-hat** (Vehtari, Simpson, Gelman, Yao, Gabry 2024, "Pareto smoothed
  importance sampling"; Yao, Vehtari, Simpson, Gelman 2018, "Yes, but did it
  work?"): the shape of a generalized Pareto fit to the largest ratios. k-hat <
  0.5: q is close to p, importance sampling (and q) can be trusted; 0.5 <= k-hat
  < 0.7: usable, with care; k-hat >= 0.7: the ratios have (nearly) infinite
  variance, q misses mass of p and neither q nor importance sampling is
  reliable. The sample-size dependent threshold `min(1 - 1/log10(S), 0.7)` of
  Vehtari et al. 2024 is reported too.
* **Importance-sampling ESS** `(sum w)^2 / sum w^2` (Kish), of the raw and of the
  Pareto-smoothed weights.
* **log Z**, the importance-weighted estimate `log mean_s w_s` of the log
  normalizing constant (the evidence, for a posterior), with its Monte Carlo
  standard error by the delta method, `sqrt((S / ESS - 1) / (S - 1))`. The
  standard error is meaningful only when k-hat < 0.7 (finite variance).
* **PSIS-corrected moments**: `E_p[f] ~ sum_s w~_s f(z_s)` with the smoothed,
  self-normalized weights.

Everything is a pure JAX function of arrays (jit/vmap/grad-able). The
generalized Pareto fit is the empirical-Bayes estimator of Zhang and Stephens
(2009) with the weakly informative prior on k used by `loo` and ArviZ
(`arviz.psislw`), whose algorithm `psis` follows step for step; tests compare
the two.
"""

import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from vi_jax._src.types import Array, ArrayLike, Params, PRNGKey, PyTree
from vi_jax.model.target import batched_target
from vi_jax.surrogates.base import check_sample_size
from vi_jax._src import compile_cache

__all__ = [
    "PSISResult",
    "ImportanceDiagnostics",
    "PSISMoments",
    "psis",
    "pareto_k_threshold",
    "pareto_k_message",
    "log_z_estimate",
    "importance_log_weights",
    "diagnose_log_weights",
    "diagnose",
    "weighted_moments",
    "psis_moments",
]

# Zhang & Stephens (2009) / loo / ArviZ constants.
_PRIOR_BS = 3.
_PRIOR_K = 10.


class PSISResult(NamedTuple):
  """Pareto-smoothed importance weights."""
  log_weights: Array  # [*batch, S], smoothed log weights (normalized if asked)
  pareto_k: Array  # [*batch], the generalized Pareto shape estimate k-hat


class ImportanceDiagnostics(NamedTuple):
  """What `diagnose` reports; every field is an array of shape `[*batch]`."""
  pareto_k: Array  # PSIS k-hat of the ratios p/q
  pareto_k_threshold: Array  # min(1 - 1/log10(S), 0.7) (Vehtari et al. 2024)
  ess: Array  # Kish ESS of the raw importance weights, in (0, S]
  psis_ess: Array  # Kish ESS of the Pareto-smoothed weights
  log_z: Array  # log mean_s w_s, the importance-weighted log Z estimate
  log_z_se: Array  # Monte Carlo standard error of log_z (delta method)
  elbo: Array  # mean_s log w_s, the ELBO estimate (a lower bound on log Z)
  num_draws: Array  # S, int32


class PSISMoments(NamedTuple):
  """PSIS-corrected posterior moments (pytrees shaped like one draw)."""
  mean: PyTree
  variance: PyTree
  pareto_k: Array  # shape=(), k-hat of the weights used
  ess: Array  # shape=(), ESS of the smoothed weights


def _tail_length(num_draws: int, reff: float) -> int:
  return int(math.ceil(min(num_draws / 5., 3. * math.sqrt(num_draws / reff))))


def _gpd_fit(x: Array, mask: Array) -> tuple[Array, Array]:
  """Zhang & Stephens (2009) generalized Pareto fit, as `loo` / ArviZ `_gpdfit`.

  Static shapes for jit: the data are the entries of `x` where `mask` holds,
  which form a suffix of the ascending array `x` (their number `n` is
  traced); everything depending on `n` (the grid size `30 + sqrt(n)`, the
  first quartile) is computed with masks.

  Args:
    x: [N] sorted ascending; entries in the suffix `mask` are the (positive)
      exceedances over the threshold.
    mask: [N] bool, True on the suffix of data.

  Returns:
    `(k, sigma)`: the shape (with the weakly informative prior of loo/ArviZ,
    `(n k + 10 * 0.5) / (n + 10)`) and the scale.
  """
  big_n = x.shape[0]
  dtype = x.dtype
  n_int = jnp.sum(mask.astype(jnp.int32))
  n = n_int.astype(dtype)
  start = big_n - n_int
  x_safe = jnp.where(mask, x, 0.)
  m_max = 30 + int(big_n**0.5)
  m_est = (30 + jnp.floor(jnp.sqrt(n))).astype(dtype)
  j = jnp.arange(1, m_max + 1, dtype=dtype)
  in_grid = j <= m_est
  b = 1. - jnp.sqrt(m_est / (j - 0.5))
  quartile = x[jnp.clip(start + (n_int + 2) // 4 - 1, 0, big_n - 1)]
  b = b / (_PRIOR_BS * quartile) + 1. / x[-1]
  b = jnp.where(in_grid, b, 0.)
  terms = jnp.where(mask[None, :], jnp.log1p(-b[:, None] * x_safe[None, :]), 0.)
  k_ary = jnp.sum(terms, axis=1) / n
  # -b / k(b) -> 1 / mean(x) as b -> 0 (a grid point can hit b = 0 exactly).
  zero_b = (b == 0.) | ~in_grid
  ratio = jnp.where(zero_b, n / jnp.sum(x_safe),
                    -b / jnp.where(zero_b, -1., k_ary))
  len_scale = n * (jnp.log(ratio) - k_ary - 1.)
  weights = jax.nn.softmax(jnp.where(in_grid, len_scale, -jnp.inf))
  weights = jnp.where(weights >= 10 * jnp.finfo(dtype).eps, weights, 0.)
  weights = weights / jnp.sum(weights)
  b_post = jnp.sum(b * weights)
  k_post = jnp.sum(jnp.where(mask, jnp.log1p(-b_post * x_safe), 0.)) / n
  sigma = -k_post / b_post
  k_post = (n * k_post + _PRIOR_K * 0.5) / (n + _PRIOR_K)
  return k_post, sigma


def _gpd_quantile(p: Array, k: Array, sigma: Array) -> Array:
  """Inverse CDF of the generalized Pareto(0, sigma, k) at p in (0, 1)."""
  small = jnp.abs(k) < jnp.finfo(p.dtype).eps
  safe_k = jnp.where(small, 1., k)
  q = jnp.where(small, -jnp.log1p(-p), jnp.expm1(-safe_k * jnp.log1p(-p)) /
                safe_k)
  return sigma * q


def _psis_1d(log_weights: Array, tail_len: int, normalize: bool):
  s = log_weights.shape[0]
  dtype = log_weights.dtype
  max_x = jnp.max(log_weights)
  x = log_weights - max_x
  # Only the M + 1 largest ratios are ever sorted (`lax.top_k`, ascending
  # here): a full sort of S ratios compiled and ran several times longer.
  size = min(tail_len + 1, s)
  top, index = jax.lax.top_k(x, size)
  top, index = top[::-1], index[::-1]
  # ArviZ: the tail is every draw strictly above the (M+1)-th largest ratio
  # (or above log(tiny) if that is lower): M draws without ties.
  cutoff = jnp.maximum(top[0], jnp.log(jnp.finfo(dtype).tiny))
  in_tail = top > cutoff
  n_tail = jnp.sum(in_tail.astype(jnp.int32))
  exp_cutoff = jnp.exp(cutoff)
  exceed = jnp.where(in_tail, jnp.exp(top) - exp_cutoff, 1.)
  enough = n_tail > 4
  # A stand-in tail when there is too little of one keeps the fit nan-free.
  stand_in = jnp.arange(size) >= size - 5
  fit_mask = jnp.where(enough, in_tail, stand_in)
  fit_x = jnp.where(enough, exceed, jnp.arange(1, size + 1, dtype=dtype))
  k_fit, sigma = _gpd_fit(fit_x, fit_mask)
  k = jnp.where(enough, k_fit, jnp.inf)
  # Exactly equal ratios (q proportional to p): bounded, the ideal case.
  constant = jnp.min(x) == 0.
  k = jnp.where(constant, -jnp.inf, k)
  rank = jnp.arange(size) - (size - n_tail)
  probs = (rank.astype(dtype) + 0.5) / jnp.maximum(n_tail, 1).astype(dtype)
  probs = jnp.clip(probs, 0.5 / s, 1. - 0.5 / s)
  smoothed = jnp.log(_gpd_quantile(probs, k_fit, sigma) + exp_cutoff)
  smooth = enough & jnp.isfinite(k_fit) & ~constant
  # Smoothed tail values, truncated at the largest raw weight (0 here).
  x = x.at[index].set(jnp.where(smooth & in_tail, jnp.minimum(smoothed, 0.),
                                top))
  if normalize:
    x = x - jax.scipy.special.logsumexp(x)
  else:
    x = x + max_x
  return x, k


def _checked_log_weights(log_weights, reff) -> Array:
  """`log_weights` as an array with a last axis of draws, or a ValueError."""
  log_weights = jnp.asarray(log_weights)
  if log_weights.ndim < 1 or log_weights.shape[-1] < 1:
    raise ValueError("log_weights must have a last axis of draws [*batch, S]; "
                     f"got shape {log_weights.shape}.")
  if not reff > 0:
    raise ValueError(f"reff must be > 0; got {reff}.")
  return log_weights


def psis(log_weights: ArrayLike, *, reff: float = 1.,
         normalize: bool = True) -> PSISResult:
  """Pareto-smoothed importance sampling of log importance weights.

  Follows `arviz.psislw` (and R's `loo::psis`) step for step: the largest
  `M = ceil(min(S / 5, 3 sqrt(S / reff)))` ratios are replaced by the expected
  order statistics of a generalized Pareto distribution fitted to their
  exceedances (Zhang & Stephens 2009, with loo's prior on k), then truncated at
  the largest raw weight.

  Args:
    log_weights: `[*batch, S]` log importance ratios `log p - log q` (any
      additive constant); the last axis holds the draws. `S` is static.
    reff: relative efficiency of the draws (1 for independent draws from q,
      the VI case; `ess / S` for MCMC draws), a Python float > 0.
    normalize: if True, the returned log weights are normalized
      (`logsumexp == 0` over draws).

  Returns:
    `PSISResult(log_weights [*batch, S], pareto_k [*batch])`. As in ArviZ,
    the tail is the draws strictly above the (M+1)-th largest ratio (ties
    shorten it) and k-hat is `inf` when it holds 4 draws or fewer (e.g. S <
    25). One deliberate difference: when all S ratios are exactly equal (q
    proportional to p) k-hat is `-inf` (bounded ratios, the ideal case) where
    ArviZ reports `inf` (no tail draws).

  Raises:
    ValueError: if `log_weights` has no draw axis or `reff <= 0`.

  References:
    Vehtari, Simpson, Gelman, Yao, Gabry (2024), "Pareto smoothed importance
    sampling", JMLR 25(72); Zhang & Stephens (2009), Technometrics 51(3);
    `arviz.psislw`; `loo::psis`.
  """
  log_weights = _checked_log_weights(log_weights, reff)
  if not jnp.issubdtype(log_weights.dtype, jnp.floating):
    log_weights = log_weights.astype(jnp.zeros(()).dtype)
  tail_len = _tail_length(log_weights.shape[-1], reff)
  lw, k = _psis_batched(log_weights, tail_len, normalize)
  return PSISResult(log_weights=lw, pareto_k=k)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _psis_batched(log_weights, tail_len, normalize):
  # Compiled once per shape even when called eagerly (op-by-op dispatch of
  # the masked fit would compile dozens of small kernels).
  fn = jnp.vectorize(lambda lw: _psis_1d(lw, tail_len, normalize),
                     signature="(s)->(s),()")
  return fn(log_weights)


def pareto_k_threshold(num_draws: int) -> float:
  """The sample-size dependent k-hat threshold `min(1 - 1/log10(S), 0.7)`.

  Above it the Pareto-smoothed estimate is unreliable with S draws (Vehtari et
  al. 2024, Sec. 3); for S >= 2200 it is Yao et al.'s (2018) 0.7.
  """
  return min(1. - 1. / math.log10(num_draws), 0.7) if num_draws > 1 else 0.


def pareto_k_message(pareto_k: float) -> str:
  """Yao et al. (2018)'s reading of a k-hat for variational inference.

  Returns:
    "good" (k < 0.5: q is close to p; importance sampling corrects what is
    left), "ok" (0.5 <= k < 0.7: usable; PSIS corrections recommended), or
    "bad" (k >= 0.7 or nan: the fit should not be trusted).
  """
  k = float(pareto_k)
  if k < 0.5:
    return "good"
  if k < 0.7:
    return "ok"
  return "bad"


def _kish_ess(log_weights: Array) -> Array:
  lw = log_weights - jax.scipy.special.logsumexp(log_weights, axis=-1,
                                                 keepdims=True)
  return 1. / jnp.sum(jnp.exp(2. * lw), axis=-1)


def log_z_estimate(log_weights: ArrayLike) -> tuple[Array, Array]:
  """Importance-weighted log normalizing constant and its standard error.

  `log Z_hat = logsumexp(log w) - log S` (unbiased for Z, slightly biased
  down for log Z), `se = sd(w) / (sqrt(S) mean(w)) = sqrt((S / ESS - 1) /
  (S - 1))` by the delta method (ESS the Kish effective sample size).

  Args:
    log_weights: `[*batch, S]` raw log ratios `log p(z_s) - log q(z_s)`.

  Returns:
    `(log_z, se)`, each `[*batch]`.
  """
  log_weights = jnp.asarray(log_weights)
  s = log_weights.shape[-1]
  log_z = jax.scipy.special.logsumexp(log_weights, axis=-1) - math.log(s)
  ess = _kish_ess(log_weights)
  se = jnp.sqrt(jnp.maximum(s / ess - 1., 0.) / max(s - 1, 1))
  return log_z, se


def diagnose_log_weights(log_weights: ArrayLike, *,
                         reff: float = 1.) -> ImportanceDiagnostics:
  """`ImportanceDiagnostics` from raw log ratios `log p(z_s) - log q(z_s)`.

  Args:
    log_weights: `[*batch, S]` log ratios with z_s ~ q.
    reff: relative efficiency of the draws (1 for independent draws).

  Returns:
    `ImportanceDiagnostics` whose fields have shape `[*batch]`.
  """
  log_weights = _checked_log_weights(log_weights, reff)
  return _diagnose_log_weights(log_weights, float(reff))


@functools.partial(jax.jit, static_argnums=(1,))
def _diagnose_log_weights(log_weights, reff):
  s = log_weights.shape[-1]
  smoothed = psis(log_weights, reff=reff)
  log_z, se = log_z_estimate(log_weights)
  batch = log_weights.shape[:-1]
  return ImportanceDiagnostics(
      pareto_k=smoothed.pareto_k,
      pareto_k_threshold=jnp.full(batch, pareto_k_threshold(s),
                                  log_weights.dtype),
      ess=_kish_ess(log_weights),
      psis_ess=_kish_ess(smoothed.log_weights),
      log_z=log_z, log_z_se=se, elbo=jnp.mean(log_weights, axis=-1),
      num_draws=jnp.full(batch, s, jnp.int32))


def importance_log_weights(target_log_prob_fn, surrogate, params: Params,
                           key: PRNGKey,
                           num_draws: int) -> tuple[PyTree, Array]:
  """Draws from the surrogate and returns them with their log ratios.

  Args:
    target_log_prob_fn: unnormalized log density of one draw (TFP's calling
      convention, as for `vi.fit`).
    surrogate: a `vi_jax.surrogates.Surrogate`.
    params: its params.
    key: a PRNG key.
    num_draws: Python int, S.

  Returns:
    `(z, log_w)`: z a pytree with leading `[S]` (constrained space) and
    `log_w = log p(z) - log q(z): [S]`.
  """
  num_draws = check_sample_size(num_draws)
  return compile_cache.jitted(_log_weights, target_log_prob_fn, surrogate, num_draws)(
      params, key)


def _log_weights(target_log_prob_fn, surrogate, num_draws, params, key):
  z, log_q = surrogate.sample_and_log_prob(params, key, num_draws)
  log_p = batched_target(target_log_prob_fn)(z)
  return z, log_p - log_q


def diagnose(target_log_prob_fn, surrogate, params: Params, key: PRNGKey,
             num_draws: int = 4000, *, reff: float = 1.) -> ImportanceDiagnostics:
  """PSIS k-hat, ESS and the log Z estimate of a fitted surrogate.

  Args:
    target_log_prob_fn: unnormalized log density of one draw.
    surrogate: a `vi_jax.surrogates.Surrogate`.
    params: its (fitted) params.
    key: a PRNG key.
    num_draws: Python int, draws from q (S); k-hat needs S >= 25 and is
      reliable from a few hundred; Yao et al. use thousands.
    reff: relative efficiency of the draws (1: independent draws).

  Returns:
    `ImportanceDiagnostics` (scalar fields).

  References:
    Yao, Vehtari, Simpson, Gelman (2018), "Yes, but did it work?: Evaluating
    variational inference", ICML.
  """
  _, log_w = importance_log_weights(target_log_prob_fn, surrogate, params, key,
                                    num_draws)
  return diagnose_log_weights(log_w, reff=reff)


def weighted_moments(draws: PyTree, log_weights: ArrayLike) -> tuple[PyTree,
                                                                     PyTree]:
  """Self-normalized importance-weighted mean and variance of draws.

  Args:
    draws: a pytree with leading `[S]` on every leaf.
    log_weights: `[S]` (any normalization; e.g. `psis(...).log_weights`).

  Returns:
    `(mean, variance)`, pytrees shaped like one draw.
  """
  log_weights = jnp.asarray(log_weights)
  w = jax.nn.softmax(log_weights)

  def moments(x):
    x = jnp.asarray(x, w.dtype)
    ww = jnp.reshape(w, w.shape + (1,) * (x.ndim - 1))
    mean = jnp.sum(ww * x, axis=0)
    return mean, jnp.sum(ww * (x - mean)**2, axis=0)

  pairs = jax.tree_util.tree_map(moments, draws)
  is_pair = lambda t: isinstance(t, tuple) and len(t) == 2 and all(
      hasattr(a, "shape") for a in t)
  mean = jax.tree_util.tree_map(lambda p: p[0], pairs, is_leaf=is_pair)
  var = jax.tree_util.tree_map(lambda p: p[1], pairs, is_leaf=is_pair)
  return mean, var


def psis_moments(target_log_prob_fn, surrogate, params: Params, key: PRNGKey,
                 num_draws: int = 4000, *,
                 transform: Optional[Callable[[PyTree], PyTree]] = None,
                 reff: float = 1.) -> PSISMoments:
  """PSIS-corrected posterior means and variances.

  `E_p[f(z)] ~ sum_s w~_s f(z_s)`, z_s ~ q, w~ the Pareto-smoothed,
  self-normalized ratios p/q: importance sampling with q as proposal corrects
  q's bias where k-hat < 0.7 (Yao et al. 2018, Sec. 3).

  Args:
    target_log_prob_fn: unnormalized log density of one draw.
    surrogate: a `vi_jax.surrogates.Surrogate`.
    params: its (fitted) params.
    key: a PRNG key.
    num_draws: Python int, S.
    transform: optional `z (leading [S]) -> pytree (leading [S])`, mapping
      the surrogate's draws to the quantity whose moments are wanted (e.g. an
      adapter's `constrain`, or `jax.vmap` of inference_gym's
      `sample_transformations["identity"]`). Default identity.
    reff: relative efficiency of the draws.

  Returns:
    `PSISMoments(mean, variance, pareto_k, ess)`; mean and variance are pytrees
    shaped like one (transformed) draw.
  """
  num_draws = check_sample_size(num_draws)
  if not reff > 0:
    raise ValueError(f"reff must be > 0; got {reff}.")
  return compile_cache.jitted(_psis_moments, target_log_prob_fn, surrogate, num_draws,
                     transform, float(reff))(params, key)


def _psis_moments(target_log_prob_fn, surrogate, num_draws, transform, reff,
                  params, key):
  z, log_w = _log_weights(target_log_prob_fn, surrogate, num_draws, params,
                          key)
  if transform is not None:
    z = transform(z)
  smoothed = psis(log_w, reff=reff)
  mean, var = weighted_moments(z, smoothed.log_weights)
  return PSISMoments(mean=mean, variance=var, pareto_k=smoothed.pareto_k,
                     ess=_kish_ess(smoothed.log_weights))
