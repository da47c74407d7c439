"""Variational objectives: pure Monte Carlo losses over surrogate draws.

Every loss has the `vi_jax._src.types.LossFn` signature
`(target_log_prob_fn, surrogate, params, key, sample_size) -> scalar` and is
what `vi.fit(loss=...)` minimizes. Factories close over hyperparameters:

    vi.fit(log_p, q, optax.adam(1e-2), 1000, key=key, sample_size=8,
           loss=vi.losses.iwae(importance_sample_size=16))

Objectives: `negative_elbo` (reverse KL, the default), `forward_kl`
(KL[p || q] by self-normalized importance sampling), `iwae` (importance
weighted bound), `renyi` (the VR-alpha bound), `monte_carlo_variational_loss`
(any Csiszar f-divergence from `vi_jax.objectives.csiszar`, optionally importance
weighted) and `analytic_kl_elbo` (E_q[log lik] - KL[q || prior], the KL in
closed form where registered).

Gradient estimators (the `gradient_estimator` argument, where it applies):

- "reparameterization": differentiate through the draws (default for
  reparameterized surrogates). The target is evaluated with
  `vi_jax.model.target.batched_log_prob`'s fused value-and-gradient.
- "score_function": REINFORCE, `E_q[f] grad log q` plus the explicit
  dependence of f on log q, with a leave-one-out baseline (the mean of the
  other `sample_size - 1` terms: a control variate that keeps the estimator
  unbiased; Kool, van Hoof & Welling 2019; Mnih & Rezende 2016). Chosen
  automatically (`gradient_estimator=None`) when `surrogate.reparameterized` is
  False, e.g. for discrete latents, as Edward's KLqp does.
- "doubly_reparameterized": log q is evaluated with stop-gradient params
  (Roeder et al. 2017, "sticking the landing", for one importance sample), with
  Tucker et al. 2018's squared-normalized-weight correction for K > 1.
"""

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_probability.substrates.jax as tfp

from vi_jax.objectives import csiszar
from vi_jax._src.types import Array, LossFn
from vi_jax._src.validation import callable_arg
from vi_jax._src.validation import positive_int
from vi_jax.model.target import batched_target

__all__ = [
    "GRADIENT_ESTIMATORS",
    "analytic_kl_elbo",
    "forward_kl",
    "iwae",
    "monte_carlo_variational_loss",
    "negative_elbo",
    "renyi",
    "score_function_objective",
]

REPARAMETERIZATION = "reparameterization"
SCORE_FUNCTION = "score_function"
DOUBLY_REPARAMETERIZED = "doubly_reparameterized"
GRADIENT_ESTIMATORS = (REPARAMETERIZATION, SCORE_FUNCTION,
                       DOUBLY_REPARAMETERIZED)

stop = jax.lax.stop_gradient


# Validation and shared machinery.


def _check_estimator(gradient_estimator, allowed, loss_name) -> Optional[str]:
  if gradient_estimator is None:
    return None
  if gradient_estimator not in allowed:
    raise ValueError(
        f"gradient_estimator for {loss_name} must be None (automatic) or one of "
        f"{list(allowed)}; got {gradient_estimator!r}.")
  return gradient_estimator


def _resolve_estimator(gradient_estimator, surrogate, loss_name) -> str:
  """The estimator to use for this surrogate (auto when None)."""
  reparameterized = bool(getattr(surrogate, "reparameterized", True))
  if gradient_estimator is None:
    return REPARAMETERIZATION if reparameterized else SCORE_FUNCTION
  if gradient_estimator != SCORE_FUNCTION and not reparameterized:
    raise ValueError(
        f"{loss_name}: gradient_estimator={gradient_estimator!r} needs a "
        "reparameterized surrogate, but surrogate.reparameterized is False "
        "(e.g. discrete latents); use gradient_estimator='score_function' or "
        "None (automatic).")
  return gradient_estimator


def _log_mean_exp(x: Array, axis: int) -> Array:
  return jax.nn.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def _draw(surrogate, params, key, n, estimator):
  """`(z, log_q)` for n draws; under score function z is stopped and log_q is
  recomputed so that its params-gradient is the score."""
  z, log_q = surrogate.sample_and_log_prob(params, key, n)
  if estimator == SCORE_FUNCTION:
    z = jax.tree_util.tree_map(stop, z)
    log_q = surrogate.log_prob(params, z)
  return z, log_q


def _draw_and_log_p(target_log_prob_fn, surrogate, params, key, n, estimator):
  """The path every target-based loss shares: `(z, log_p, log_q)` for n draws,
  log p by the fused batched target (`vi_jax.model.target.batched_target`)."""
  z, log_q = _draw(surrogate, params, key, n, estimator)
  return z, batched_target(target_log_prob_fn)(z), log_q


def score_function_objective(values: Array, score: Array) -> Array:
  """The surrogate objective whose value is `mean(values)` and whose gradient
  is the score-function (REINFORCE) estimator with a leave-one-out baseline.

  gradient = mean_s [grad values_s + (values_s - b_s) grad score_s], with
  b_s = mean_{j != s} values_j (no baseline for one term). `values` may depend
  on params explicitly (e.g. through log q); `score` is `log q` of the
  stopped draws (summed within an importance group).

  Args:
    values: `[S]`, per-term loss values.
    score: `[S]`, per-term `log q(stop(z))`.

  Returns:
    A scalar equal to `mean(values)`.

  References:
    Williams 1992 (REINFORCE); Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE
    samples, get a baseline for free!"; Ranganath et al. 2014 (BBVI).
  """
  v = stop(values)
  n = values.shape[0]
  baseline = (jnp.sum(v) - v) / (n - 1) if n > 1 else jnp.zeros_like(v)
  return jnp.mean(values + (v - baseline) * (score - stop(score)))


# Csiszar f-divergences, IWAE, ELBO.


def monte_carlo_variational_loss(
    discrepancy_fn: Callable[[Array], Array] = csiszar.kl_reverse,
    *,
    importance_sample_size: int = 1,
    gradient_estimator: Optional[str] = None) -> LossFn:
  """Monte Carlo Csiszar f-divergence D_f[p, q] = E_q[f(p(z) / q(z))].

  With K = `importance_sample_size`, each loss evaluation draws
  `sample_size * K` points, forms the log-weights `log w = log p - log q`, and
  returns

      loss = (1/S) sum_s f( log (1/K) sum_k w_{s,k} ),   S = sample_size,

  the importance-weighted divergence (K = 1: E_q[f(p/q)]). With
  `discrepancy_fn=csiszar.kl_reverse` this is -ELBO (K = 1) or -IWAE_K.

  Args:
    discrepancy_fn: a Csiszar function in log-space, `logu -> f(u)` (see
      `vi_jax.objectives.csiszar`; bind hyperparameters with functools.partial).
    importance_sample_size: Python int K >= 1.
    gradient_estimator: None (reparameterization, or score function when
      `surrogate.reparameterized` is False), "reparameterization",
      "score_function" or "doubly_reparameterized" (sticking-the-landing for
      K = 1, Tucker et al.'s DReG for K > 1; unbiased for the ELBO/IWAE, i.e.
      f linear in log u; for other f it is TFP's generalization).

  Returns:
    A `LossFn`.

  Raises:
    TypeError / ValueError: a non-callable `discrepancy_fn`, a bad
      `importance_sample_size` or `gradient_estimator`; at call time, a
      reparameterized estimator with a non-reparameterized surrogate.

  References:
    tfp.vi.monte_carlo_variational_loss; Ali & Silvey 1966; Burda, Grosse &
    Salakhutdinov 2016 (IWAE); Roeder, Wu & Duvenaud 2017; Tucker, Lawson, Gu &
    Maddison 2018 (DReG).
  """
  callable_arg("discrepancy_fn", discrepancy_fn)
  k = positive_int("importance_sample_size", importance_sample_size)
  requested = _check_estimator(gradient_estimator, GRADIENT_ESTIMATORS,
                               "monte_carlo_variational_loss")

  def loss(target_log_prob_fn, surrogate, params, key, sample_size):
    estimator = _resolve_estimator(requested, surrogate,
                                   "monte_carlo_variational_loss")
    s = positive_int("sample_size", sample_size)
    z, log_p, log_q = _draw_and_log_p(target_log_prob_fn, surrogate, params,
                                      key, s * k, estimator)
    if estimator == DOUBLY_REPARAMETERIZED:
      log_q_stopped = surrogate.log_prob(stop(params), z)
      if k == 1:  # Sticking the landing.
        return jnp.mean(discrepancy_fn(log_p - log_q_stopped))
      log_w = jnp.reshape(log_p - log_q, (s, k))
      weights = stop(jax.nn.softmax(log_w, axis=1))
      dreg = jnp.sum(jnp.reshape(log_p - log_q_stopped, (s, k)) *
                     jnp.square(weights), axis=1)
      # What the target depends on besides z (a prior hyperparameter) gets
      # the IWAE gradient sum_k w_k d log p_k (Tucker et al. 2018, sec. 4):
      # DReG's squared weights are for the surrogate's params only.
      log_p_fixed_z = batched_target(target_log_prob_fn)(
          jax.tree_util.tree_map(stop, z))
      model = jnp.sum(jnp.reshape(log_p_fixed_z, (s, k)) *
                      (weights - jnp.square(weights)), axis=1)
      log_avg = (stop(_log_mean_exp(log_w, axis=1)) + dreg - stop(dreg) +
                 model - stop(model))
      return jnp.mean(discrepancy_fn(log_avg))
    log_w = jnp.reshape(log_p - log_q, (s, k))
    log_avg = log_w[:, 0] if k == 1 else _log_mean_exp(log_w, axis=1)
    values = discrepancy_fn(log_avg)
    if estimator == SCORE_FUNCTION:
      score = jnp.sum(jnp.reshape(log_q, (s, k)), axis=1)
      return score_function_objective(values, score)
    return jnp.mean(values)

  return loss


def negative_elbo(*, stick_the_landing: bool = False,
                  gradient_estimator: Optional[str] = None) -> LossFn:
  """The negative evidence lower bound, -ELBO = KL[q || p] - log Z.

  loss = -(1/S) sum_s [log p(z_s) - log q(z_s)], z_s ~ q (S = sample_size),
  the target vmapped over draws.

  Args:
    stick_the_landing: if True, `log q` is evaluated with stop-gradient params
      (Roeder, Wu, Duvenaud 2017, "Sticking the Landing"): same expectation,
      zero-variance gradient when q equals the posterior. Same as
      `gradient_estimator="doubly_reparameterized"`.
    gradient_estimator: None (automatic: reparameterization, or score function
      when `surrogate.reparameterized` is False), "reparameterization",
      "score_function" (REINFORCE with a leave-one-out baseline) or
      "doubly_reparameterized".

  Returns:
    A `LossFn` returning a scalar of the params' dtype.

  Raises:
    ValueError: `stick_the_landing=True` with the score-function estimator, or
      an unknown `gradient_estimator`.

  References:
    Kucukelbir et al. 2017 (ADVI); Ranganath, Gerrish & Blei 2014 (BBVI);
    tfp.vi.monte_carlo_variational_loss with kl_reverse;
    numpyro.infer.Trace_ELBO; Edward's KLqp.
  """
  _check_estimator(gradient_estimator, GRADIENT_ESTIMATORS, "negative_elbo")
  if stick_the_landing:
    if gradient_estimator == SCORE_FUNCTION:
      raise ValueError("stick_the_landing=True needs a reparameterized "
                       "gradient; it cannot be combined with "
                       "gradient_estimator='score_function'.")
    gradient_estimator = DOUBLY_REPARAMETERIZED
  return monte_carlo_variational_loss(csiszar.kl_reverse,
                                      gradient_estimator=gradient_estimator)


def iwae(importance_sample_size: int, *,
         gradient_estimator: Optional[str] = REPARAMETERIZATION) -> LossFn:
  """The negative importance-weighted bound, -IWAE_K.

      IWAE_K = E[log (1/K) sum_k p(z_k) / q(z_k)],  z_1..z_K ~ q,

  averaged over `sample_size` independent groups. ELBO = IWAE_1 <= IWAE_K <=
  IWAE_K' <= log Z for K <= K'.

  Args:
    importance_sample_size: Python int K >= 1.
    gradient_estimator: "reparameterization" (default),
      "doubly_reparameterized" (Tucker et al. 2018: lower-variance, same
      expectation), "score_function", or None (automatic).

  Returns:
    A `LossFn`.

  References:
    Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders";
    Tucker et al. 2018, "Doubly Reparameterized Gradient Estimators for Monte
    Carlo Objectives".
  """
  return monte_carlo_variational_loss(
      csiszar.kl_reverse, importance_sample_size=importance_sample_size,
      gradient_estimator=gradient_estimator)


def renyi(alpha: float, importance_sample_size: Optional[int] = None, *,
          gradient_estimator: Optional[str] = None) -> LossFn:
  """The negative variational Renyi (VR-alpha) bound.

      L_alpha = 1/(1 - alpha) log (1/K) sum_k [p(z_k) / q(z_k)]^(1 - alpha)

  averaged over groups of K draws. alpha = 0 is IWAE_K, alpha -> 1 the ELBO
  (evaluated exactly at alpha = 1); alpha < 0 gives an upper bound on log Z for
  large K.

  Args:
    alpha: Python float.
    importance_sample_size: K, a Python int >= 1, with `sample_size` groups of
      K draws; None (default) puts all `sample_size` draws in one group (Li &
      Turner's estimator with K = sample_size).
    gradient_estimator: None (automatic), "reparameterization" or
      "score_function".

  Returns:
    A `LossFn`.

  Raises:
    TypeError: `alpha` not a Python number.

  References:
    Li & Turner 2016, "Renyi Divergence Variational Inference", eq. (5)-(6).
  """
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
    raise TypeError(f"alpha must be a Python float; got {alpha!r}.")
  alpha = float(alpha)
  if not math.isfinite(alpha):
    raise ValueError(f"alpha must be finite; got {alpha}.")
  k = (None if importance_sample_size is None else positive_int(
      "importance_sample_size", importance_sample_size))
  requested = _check_estimator(gradient_estimator,
                               (REPARAMETERIZATION, SCORE_FUNCTION), "renyi")

  def loss(target_log_prob_fn, surrogate, params, key, sample_size):
    estimator = _resolve_estimator(requested, surrogate, "renyi")
    s = positive_int("sample_size", sample_size)
    groups, size = (1, s) if k is None else (s, k)
    _, log_p, log_q = _draw_and_log_p(target_log_prob_fn, surrogate, params,
                                      key, groups * size, estimator)
    log_w = jnp.reshape(log_p - log_q, (groups, size))
    if alpha == 1.:
      bound = jnp.mean(log_w, axis=1)
    else:
      bound = _log_mean_exp((1. - alpha) * log_w, axis=1) / (1. - alpha)
    if estimator == SCORE_FUNCTION:
      score = jnp.sum(jnp.reshape(log_q, (groups, size)), axis=1)
      return score_function_objective(-bound, score)
    return -jnp.mean(bound)

  return loss


# Forward KL.


def forward_kl() -> LossFn:
  """KL[p || q] by self-normalized importance sampling (SNIS) from q.

  With z_s ~ q, log w_s = log p(z_s) - log q(z_s) and normalized weights
  w~ = softmax(log w) over the `sample_size` draws:

      value    = sum_s w~_s log w_s - log (1/S) sum_s w_s     (SNIS KL[p || q])
      gradient = -sum_s w~_s grad log q(z_s)                  (z_s held fixed)

  The value estimates KL[p/Z || q] for the normalized target (consistent as
  S grows; biased for finite S); the gradient is the SNIS estimate of
  -E_p[grad log q], the wake-phase q update of reweighted wake-sleep. No
  gradient flows through the draws, so it works for any surrogate with a
  `log_prob` (discrete ones too). Mass-covering: q spreads to cover p.

  Returns:
    A `LossFn`; it needs `sample_size >= 2`.

  Raises:
    ValueError: at call time, `sample_size < 2`.

  References:
    Bornschein & Bengio 2015, "Reweighted Wake-Sleep"; tfp.vi.kl_forward and
    the forward-KL example of tfp.vi.fit_surrogate_posterior; Owen 2013,
    "Monte Carlo theory, methods and examples", ch. 9 (SNIS).
  """

  def loss(target_log_prob_fn, surrogate, params, key, sample_size):
    s = positive_int("sample_size", sample_size)
    if s < 2:
      raise ValueError("forward_kl uses self-normalized importance sampling "
                       f"and needs sample_size >= 2; got {s}.")
    _, log_p, log_q = _draw_and_log_p(  # z stopped: score-function draws.
        target_log_prob_fn, surrogate, params, key, s, SCORE_FUNCTION)
    # The draws are stopped, so log_w depends on the params only through
    # log q (stopped here): the value is differentiable w.r.t. whatever the
    # target depends on (a prior hyperparameter), and the params' gradient
    # comes from the cross-entropy term alone.
    log_w = log_p - stop(log_q)
    weights = jax.nn.softmax(log_w)
    value = jnp.sum(weights * log_w) - _log_mean_exp(log_w, axis=0)
    cross_entropy = -jnp.sum(stop(weights) * log_q)
    return value + cross_entropy - stop(cross_entropy)

  return loss


# The analytic-KL ELBO.


def _is_distribution(x) -> bool:
  return hasattr(x, "log_prob") and (hasattr(x, "sample") or hasattr(
      x, "sample_and_log_prob"))


def _sum_to_draws(x: Array) -> Array:
  """`[S, ...] -> [S]`, summing a prior's batch dims (as if Independent)."""
  return jnp.reshape(x, (x.shape[0], -1)).sum(axis=1)


def _closed_form_kl(q, p):
  """Summed closed-form KL[q || p], or None when none is registered."""
  try:
    return jnp.sum(tfp.distributions.kl_divergence(q, p))
  except NotImplementedError:
    return None


def _per_latent_q(surrogate, params, single, prior_def):
  """The surrogate's distribution per latent (prior's structure), or None
  when it has no `distribution_fn` or its q does not factorize by latent."""
  dist_fn = getattr(surrogate, "distribution_fn", None)
  q_dist = dist_fn(params) if dist_fn is not None else None
  if q_dist is None:
    return None
  if single and _is_distribution(q_dist):
    return [q_dist]
  if not single and not _is_distribution(q_dist):
    return prior_def.flatten_up_to(q_dist)
  return None


def analytic_kl_elbo(prior: Any, log_likelihood_fn: Callable, *,
                     kl_scaling: Any = 1.,
                     gradient_estimator: Optional[str] = None) -> LossFn:
  """-[E_q[log lik(z)] - sum_i beta_i KL[q_i || prior_i]], KL in closed form.

  The target is given as a prior distribution plus a log-likelihood (Edward's
  KLqp with analytic KL, the Bayes-by-backprop / VAE objective). The KL term
  of each latent is computed in closed form when TFP's KL registry (which also
  covers distrax distributions) has one for the pair (the surrogate's
  `distribution_fn(params)` and the prior), and by Monte Carlo with the same
  draws, log q(z) - log prior(z), otherwise. `kl_scaling` weights each latent's
  KL (beta-VAE's beta; Edward's `kl_scaling`).

  The loss ignores the `target_log_prob_fn` that `vi.fit` passes; give `fit`
  the joint, e.g. `lambda z: prior.log_prob(z) + log_likelihood_fn(z)`, which
  it uses for its input checks.

  Args:
    prior: a distrax or TFP distribution over the latent (array latents), or a
      pytree of distributions with the structure of the latents (dict, tuple):
      one independent prior per latent. A prior whose batch shape is the
      latent's shape is summed over it (as if wrapped in Independent).
    log_likelihood_fn: log p(data | z) for ONE draw, TFP's calling convention
      (`f(*z)`, `f(**z)`, `f(z)`); returns a scalar.
    kl_scaling: a float, or a pytree of floats with the structure of `prior`
      (one weight per latent). Per-latent weights other than one common value
      need a surrogate whose `distribution_fn` returns one distribution per
      latent (a factorized q).
    gradient_estimator: None (automatic), "reparameterization" or
      "score_function" (for the expected log-likelihood and any Monte Carlo
      KL; the closed-form KL is differentiated exactly).

  Returns:
    A `LossFn` (the negative of the bound; with kl_scaling = 1 it equals
    -ELBO up to Monte Carlo error).

  Raises:
    TypeError / ValueError: non-callable `log_likelihood_fn`, a `prior` that is
      not a distribution or pytree of them, a `kl_scaling` whose structure does
      not match `prior`, or (at call time) per-latent weights with a surrogate
      that does not factorize over latents.

  References:
    Kingma & Welling 2014 (SGVB with analytic KL, eq. 10); Blundell et al. 2015
    (Bayes by backprop); Higgins et al. 2017 (beta-VAE); Tran et al. 2016,
    Edward `ed.KLqp` (analytic KL and `kl_scaling`).
  """
  callable_arg("log_likelihood_fn", log_likelihood_fn)
  prior_leaves, prior_def = jax.tree_util.tree_flatten(
      prior, is_leaf=_is_distribution)
  if not prior_leaves or not all(_is_distribution(d) for d in prior_leaves):
    raise TypeError("prior must be a distrax/TFP distribution or a pytree of "
                    f"them; got {prior!r}.")
  single = prior_def.num_leaves == 1 and _is_distribution(prior)
  if isinstance(kl_scaling, (int, float, np.number)) and not isinstance(
      kl_scaling, bool):
    betas = [float(kl_scaling)] * len(prior_leaves)
  else:
    try:
      betas = prior_def.flatten_up_to(kl_scaling)
    except (ValueError, TypeError) as e:
      raise ValueError(
          "kl_scaling must be a float or a pytree of floats with the structure"
          f" of prior ({prior_def}); got {kl_scaling!r}.") from e
    betas = [float(b) for b in betas]
  uniform_beta = all(b == betas[0] for b in betas)
  requested = _check_estimator(gradient_estimator,
                               (REPARAMETERIZATION, SCORE_FUNCTION),
                               "analytic_kl_elbo")
  log_lik_batched = batched_target(log_likelihood_fn)

  def loss(target_log_prob_fn, surrogate, params, key, sample_size):
    del target_log_prob_fn  # The loss uses prior and log_likelihood_fn.
    estimator = _resolve_estimator(requested, surrogate, "analytic_kl_elbo")
    s = positive_int("sample_size", sample_size)
    z, log_q = _draw(surrogate, params, key, s, estimator)
    z_leaves = [z] if single else prior_def.flatten_up_to(z)
    q_leaves = _per_latent_q(surrogate, params, single, prior_def)
    if q_leaves is None and not uniform_beta:
      raise ValueError(
          "analytic_kl_elbo: per-latent kl_scaling needs a surrogate whose "
          "distribution_fn returns one distribution per latent (a factorized "
          "q); this surrogate's joint q cannot split KL[q || prior] by latent. "
          "Use one common kl_scaling value.")

    per_draw = log_lik_batched(z)  # [S]
    analytic = jnp.zeros((), per_draw.dtype)
    if q_leaves is None:  # Joint q: one Monte Carlo KL over all latents.
      log_prior = sum(_sum_to_draws(d.log_prob(zl))
                      for d, zl in zip(prior_leaves, z_leaves))
      per_draw = per_draw - betas[0] * (log_q - log_prior)
    else:
      for d, qd, zl, beta in zip(prior_leaves, q_leaves, z_leaves, betas):
        kl = _closed_form_kl(qd, d)
        if kl is not None:
          analytic = analytic + beta * kl
        else:
          mc = _sum_to_draws(qd.log_prob(zl)) - _sum_to_draws(d.log_prob(zl))
          per_draw = per_draw - beta * mc
    if estimator == SCORE_FUNCTION:
      return score_function_objective(-per_draw, log_q) + analytic
    return -jnp.mean(per_draw) + analytic

  return loss
