"""posteriordb posteriors as JAX log densities, with reference draws.

    python -m benchmarks.posteriordb.targets      # the table of posteriors

`targets()` lists 18 posteriors of github.com/stan-dev/posteriordb (commit
`28f8d3d6e975315f42aa274a8399f21e07a43b30`), each one that posteriordb gives a
reference posterior (10 chains x 1000 NUTS draws) and that has 3 to 26
unconstrained dimensions. Each `target_log_prob_fn` is the Stan model's `target`
as a function of the constrained parameters (TFP's convention, called as
`f(**z)` with one draw `z`: a dict by the Stan parameter names), without the
Jacobian of Stan's transforms: vi_jax applies `bijector` and adds its log-det.
Where Stan's `~` drops constants, so may the function (the density is
unnormalized). The data, reference moments and 1000 thinned reference draws are
shipped in `data/<name>.npz`, written by `extract.py` from that commit.

Each entry of `targets()` is a dict with:
  name: posteriordb's posterior name, `<data>-<model>`.
  kind: a short description ("raw-scale regression", "HMM", ...).
  target_log_prob_fn: the log density of one draw, `f(**z) -> scalar`.
  event_shape: dict param -> shape tuple.
  bijector: dict param -> TFP-on-JAX bijector onto its support, or None.
  dim: the unconstrained dimension (the length of vi_jax's flat `u`).
  num_data: the number of observations (the model's `N` / `T` / `J`).
  ref_mean, ref_sd: float64 `[num_ref]`, over all 10000 reference draws, flat
    in `jax.tree_util.tree_leaves` order of a draw (params by sorted name, each
    row-major).
  flatten: `z -> [..., num_ref]`, a draw (or draws with leading batch axes)
    flattened in that order.
  unflatten: the inverse of `flatten` (`[..., num_ref] -> z`), e.g.
    `unflatten(ref_mean)` is the reference mean as a draw.
  ref_draws: dict param -> float64 `[1000, *shape]`, thinned reference draws.
  x64: True when the density needs float64 (gp_pois_regr: the Cholesky factor
    of a squared-exponential kernel with Stan's 1e-10 jitter is not computable
    in float32).
  stan_parameters: how the parameters or their reference draws relate to the
    Stan model's, where they differ (else "").
  meta: the provenance of the shipped file (posteriordb names, commit, draws).

Parameters differ from the Stan model's in one place: garch11's `alpha1` and
`beta1` (`beta1 < 1 - alpha1`) are one parameter `alpha1_beta1` with the joint
bijector `GarchStickBreaking` (Stan's own transform for that pair), since
vi_jax's bijectors act per parameter. Reference draws of transformed
parameters are mapped back to the parameters by `extract.py` (eight schools
non-centered: `theta_trans`; gp_pois_regr: `f_tilde`); eight_schools_centered
uses the non-centered model's reference, as posteriordb does. The bijectors
are vi_jax's helpers (`<lower=0>` by softplus, where Stan uses exp; simplexes by
TFP's stick-breaking; `ordered` by TFP's `Ascending`, `positive_ordered` by
`cumsum(exp(x))` as Stan): any bijector onto the support gives the same
constrained posterior.
"""

import functools
import json
import os

import jax
from jax import lax
import jax.numpy as jnp
from jax.scipy import special
from jax.scipy import stats
import numpy as np
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfb = tfp.bijectors

POSTERIORDB_COMMIT = "28f8d3d6e975315f42aa274a8399f21e07a43b30"
DATA_DIR = os.path.join(os.path.dirname(__file__), "data")

__all__ = [
    "GarchStickBreaking", "POSTERIORDB_COMMIT", "get", "names", "stein_statistics", "table",
    "targets",
]


class GarchStickBreaking(tfb.Bijector):
  """R^2 -> {(a, b): a > 0, b > 0, a + b < 1}, Stan's transform for garch11.

  Stan maps `alpha1 = inv_logit(x0)` (`<lower=0, upper=1>`) and then
  `beta1 = (1 - alpha1) inv_logit(x1)` (`<lower=0, upper=(1 - alpha1)>`): a
  stick-breaking onto the first two coordinates of the 3-simplex.
  """

  def __init__(self, validate_args=False, name="garch_stick_breaking"):
    parameters = dict(locals())
    super().__init__(forward_min_event_ndims=1, validate_args=validate_args,
                     parameters=parameters, name=name)

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    del dtype, num_classes
    return {}

  def _forward(self, x):
    a = jax.nn.sigmoid(x[..., 0])
    return jnp.stack([a, (1. - a) * jax.nn.sigmoid(x[..., 1])], axis=-1)

  def _inverse(self, y):
    a, b = y[..., 0], y[..., 1]
    return jnp.stack([special.logit(a), special.logit(b / (1. - a))], axis=-1)

  def _forward_log_det_jacobian(self, x):
    x0, x1 = x[..., 0], x[..., 1]
    # d alpha1/d x0 = s(x0) s(-x0); d beta1/d x1 = (1 - alpha1) s(x1) s(-x1).
    return (jax.nn.log_sigmoid(x0) + 2. * jax.nn.log_sigmoid(-x0)
            + jax.nn.log_sigmoid(x1) + jax.nn.log_sigmoid(-x1))


def _positive_ordered() -> tfb.Bijector:
  """R^K -> positive_ordered[K] as Stan: y = cumsum(exp(x))."""
  return tfb.Chain([tfb.Cumsum(), tfb.Exp()])


def _normal(x, loc, scale):
  return jnp.sum(stats.norm.logpdf(x, loc, scale))


def _cauchy(x, loc, scale):
  return jnp.sum(stats.cauchy.logpdf(x, loc, scale))


def _f(d, key):
  return np.asarray(d[key], np.float64)


# One builder per Stan model: data dict -> (log_prob, event_shape, bijector).
# The Stan code is quoted where the JAX code is not a line-by-line copy.


def _kidscore_momiq(d):
  y, iq = _f(d, "kid_score"), _f(d, "mom_iq")

  def log_prob(beta, sigma):
    return _cauchy(sigma, 0., 2.5) + _normal(y, beta[0] + beta[1] * iq, sigma)
  return log_prob, {"beta": (2,), "sigma": ()}, {"beta": None, "sigma": vi.bijectors.positive()}


def _kidscore_interaction(d):
  y, iq, hs = _f(d, "kid_score"), _f(d, "mom_iq"), _f(d, "mom_hs")
  inter = hs * iq

  def log_prob(beta, sigma):
    mean = beta[0] + beta[1] * hs + beta[2] * iq + beta[3] * inter
    return _cauchy(sigma, 0., 2.5) + _normal(y, mean, sigma)
  return log_prob, {"beta": (4,), "sigma": ()}, {"beta": None, "sigma": vi.bijectors.positive()}


def _earn_height(d):
  earn, height = _f(d, "earn"), _f(d, "height")

  def log_prob(beta, sigma):  # flat priors
    return _normal(earn, beta[0] + beta[1] * height, sigma)
  return log_prob, {"beta": (2,), "sigma": ()}, {"beta": None, "sigma": vi.bijectors.positive()}


def _logearn_interaction(d):
  log_earn, height, male = np.log(_f(d, "earn")), _f(d, "height"), _f(d, "male")
  inter = height * male

  def log_prob(beta, sigma):  # flat priors
    mean = beta[0] + beta[1] * height + beta[2] * male + beta[3] * inter
    return _normal(log_earn, mean, sigma)
  return log_prob, {"beta": (4,), "sigma": ()}, {"beta": None, "sigma": vi.bijectors.positive()}


def _mesquite(d):
  weight = _f(d, "weight")
  x = np.stack([_f(d, k) for k in ("diam1", "diam2", "canopy_height", "total_height",
                                   "density", "group")], axis=-1)

  def log_prob(beta, sigma):  # flat priors
    return _normal(weight, beta[0] + x @ beta[1:], sigma)
  return log_prob, {"beta": (7,), "sigma": ()}, {"beta": None, "sigma": vi.bijectors.positive()}


def _kilpisjarvi(d):
  x, y = _f(d, "x"), _f(d, "y")
  pmualpha, psalpha, pmubeta, psbeta = (float(d[k]) for k in ("pmualpha", "psalpha", "pmubeta",
                                                              "psbeta"))

  def log_prob(alpha, beta, sigma):  # sigma: flat prior
    return (_normal(alpha, pmualpha, psalpha) + _normal(beta, pmubeta, psbeta)
            + _normal(y, alpha + beta * x, sigma))
  return (log_prob, {"alpha": (), "beta": (), "sigma": ()},
          {"alpha": None, "beta": None, "sigma": vi.bijectors.positive()})


def _nes(d):
  age = np.asarray(d["age_discrete"])
  x = np.stack([_f(d, "real_ideo"), _f(d, "race_adj"), (age == 2) * 1., (age == 3) * 1.,
                (age == 4) * 1., _f(d, "educ1"), _f(d, "gender"), _f(d, "income")], axis=-1)
  y = _f(d, "partyid7")

  def log_prob(beta, sigma):  # flat priors
    return _normal(y, beta[0] + x @ beta[1:], sigma)
  return log_prob, {"beta": (9,), "sigma": ()}, {"beta": None, "sigma": vi.bijectors.positive()}


def _blr(d):
  x, y = _f(d, "X"), _f(d, "y")

  def log_prob(beta, sigma):
    return _normal(beta, 0., 10.) + _normal(sigma, 0., 10.) + _normal(y, x @ beta, sigma)
  return (log_prob, {"beta": (int(d["D"]),), "sigma": ()},
          {"beta": None, "sigma": vi.bijectors.positive()})


def _diamonds(d):
  # brms: Xc = X[:, 2:K] centered; target += normal_lpdf(b | 0, 1)
  #   + student_t_lpdf(Intercept | 3, 8, 10) + student_t_lpdf(sigma | 3, 0, 10)
  #   - student_t_lccdf(0 | 3, 0, 10) + normal_id_glm_lpdf(Y | Xc, Intercept, b, sigma).
  x, y = _f(d, "X")[:, 1:], _f(d, "Y")
  xc = x - x.mean(axis=0)

  def log_prob(b, Intercept, sigma):  # Stan's names
    return (_normal(b, 0., 1.) + jnp.sum(stats.t.logpdf(Intercept, 3., 8., 10.))
            + jnp.sum(stats.t.logpdf(sigma, 3., 0., 10.)) + np.log(2.)
            + _normal(y, Intercept + xc @ b, sigma))
  return (log_prob, {"b": (xc.shape[1],), "Intercept": (), "sigma": ()},
          {"b": None, "Intercept": None, "sigma": vi.bijectors.positive()})


def _arma11(d):
  # nu[1] = mu + phi * mu; err[1] = y[1] - nu[1];
  # nu[t] = mu + phi * y[t-1] + theta * err[t-1]; err[t] = y[t] - nu[t]; err ~ normal(0, sigma).
  y = _f(d, "y")

  def log_prob(mu, phi, theta, sigma):
    err1 = y[0] - (mu + phi * mu)

    def step(err_prev, y_t):
      y_prev, y_now = y_t
      err = y_now - (mu + phi * y_prev + theta * err_prev)
      return err, err
    _, errs = lax.scan(step, err1, (y[:-1], y[1:]))
    err = jnp.concatenate([err1[None], errs])
    return (_normal(mu, 0., 10.) + _normal(phi, 0., 2.) + _normal(theta, 0., 2.)
            + _cauchy(sigma, 0., 2.5) + _normal(err, 0., sigma))
  return (log_prob, {"mu": (), "phi": (), "theta": (), "sigma": ()},
          {"mu": None, "phi": None, "theta": None, "sigma": vi.bijectors.positive()})


def _garch11(d):
  # sigma[1] = sigma1;
  # sigma[t] = sqrt(alpha0 + alpha1 * square(y[t-1] - mu) + beta1 * square(sigma[t-1]));
  # y ~ normal(mu, sigma); flat priors on mu, alpha0 > 0, alpha1 in (0, 1),
  # beta1 in (0, 1 - alpha1).
  y, sigma1 = _f(d, "y"), float(d["sigma1"])

  def log_prob(mu, alpha0, alpha1_beta1):
    alpha1, beta1 = alpha1_beta1[0], alpha1_beta1[1]

    def step(var_prev, y_prev):
      var = alpha0 + alpha1 * jnp.square(y_prev - mu) + beta1 * var_prev
      return var, var
    var1 = jnp.square(jnp.asarray(sigma1, jnp.result_type(mu)))
    _, var = lax.scan(step, var1, y[:-1])
    sigma = jnp.sqrt(jnp.concatenate([var1[None], var]))
    return _normal(y, mu, sigma)
  return (log_prob, {"mu": (), "alpha0": (), "alpha1_beta1": (2,)},
          {"mu": None, "alpha0": vi.bijectors.positive(), "alpha1_beta1": GarchStickBreaking()})


def _ark(d):
  # for (t in (K + 1):T) y[t] ~ normal(alpha + sum_k beta[k] * y[t - k], sigma).
  k, y = int(d["K"]), _f(d, "y")
  lags = np.stack([y[k - j:len(y) - j] for j in range(1, k + 1)], axis=-1)  # [T-K, K]

  def log_prob(alpha, beta, sigma):
    return (_normal(alpha, 0., 10.) + _normal(beta, 0., 10.) + _cauchy(sigma, 0., 2.5)
            + _normal(y[k:], alpha + lags @ beta, sigma))
  return (log_prob, {"alpha": (), "beta": (k,), "sigma": ()},
          {"alpha": None, "beta": None, "sigma": vi.bijectors.positive()})


def _hmm_example(d):
  # Forward algorithm: gamma[1, k] = normal_lpdf(y[1] | mu[k], 1);
  # gamma[t, k] = log_sum_exp_j(gamma[t-1, j] + log(theta[j, k]) + normal_lpdf(y[t] | mu[k], 1));
  # target += log_sum_exp(gamma[N]); theta[1] = theta1, theta[2] = theta2.
  y = _f(d, "y")

  def log_prob(theta1, theta2, mu):
    log_theta = jnp.log(jnp.stack([theta1, theta2]))  # [from j, to k]
    emit = stats.norm.logpdf(y[:, None], mu[None, :], 1.)  # [N, K]

    def step(gamma, e):
      return special.logsumexp(gamma[:, None] + log_theta, axis=0) + e, None
    gamma, _ = lax.scan(step, emit[0], emit[1:])
    return (stats.norm.logpdf(mu[0], 3., 1.) + stats.norm.logpdf(mu[1], 10., 1.)
            + special.logsumexp(gamma))
  k = int(d["K"])
  return (log_prob, {"theta1": (k,), "theta2": (k,), "mu": (k,)},
          {"theta1": vi.bijectors.simplex(), "theta2": vi.bijectors.simplex(),
           "mu": _positive_ordered()})


def _low_dim_gauss_mix(d):
  y = _f(d, "y")

  def log_prob(mu, sigma, theta):
    mix = jnp.logaddexp(jnp.log(theta) + stats.norm.logpdf(y, mu[0], sigma[0]),
                        jnp.log1p(-theta) + stats.norm.logpdf(y, mu[1], sigma[1]))
    return (_normal(sigma, 0., 2.) + _normal(mu, 0., 2.) + stats.beta.logpdf(theta, 5., 5.)
            + jnp.sum(mix))
  return (log_prob, {"mu": (2,), "sigma": (2,), "theta": ()},
          {"mu": tfb.Ascending(), "sigma": vi.bijectors.positive(),
           "theta": vi.bijectors.unit_interval()})


def _exp_quad_cov(x, alpha, rho):
  """Stan's gp_exp_quad_cov(x, alpha, rho)."""
  return jnp.square(alpha) * jnp.exp(-0.5 * jnp.square(x[:, None] - x[None, :]) / jnp.square(rho))


def _gamma(x, shape, rate):
  return stats.gamma.logpdf(x, shape, scale=1. / rate)


def _gp_regr(d):
  # cov = gp_exp_quad_cov(x, alpha, rho) + diag_matrix(rep_vector(sigma, N))  (sigma, not
  # sigma^2, on the diagonal); y ~ multi_normal_cholesky(0, cholesky_decompose(cov)).
  x, y = _f(d, "x"), _f(d, "y")

  def log_prob(rho, alpha, sigma):
    cov = _exp_quad_cov(x, alpha, rho) + sigma * jnp.eye(len(x))
    chol = jnp.linalg.cholesky(cov)
    white = jax.scipy.linalg.solve_triangular(chol, y, lower=True)
    return (_gamma(rho, 25., 4.) + _normal(alpha, 0., 2.) + _normal(sigma, 0., 1.)
            - 0.5 * jnp.sum(jnp.square(white)) - jnp.sum(jnp.log(jnp.diag(chol))))
  positive = vi.bijectors.positive()
  return (log_prob, {"rho": (), "alpha": (), "sigma": ()},
          {"rho": positive, "alpha": positive, "sigma": positive})


def _gp_pois_regr(d):
  # f = cholesky_decompose(gp_exp_quad_cov(x, alpha, rho) + 1e-10 I) * f_tilde;
  # k ~ poisson_log(f)  (log k! dropped).
  x, k = _f(d, "x"), np.asarray(d["k"])

  def log_prob(rho, alpha, f_tilde):
    cov = _exp_quad_cov(x, alpha, rho) + 1e-10 * jnp.eye(len(x))
    f = jnp.linalg.cholesky(cov) @ f_tilde
    return (_gamma(rho, 25., 4.) + _normal(alpha, 0., 2.) + _normal(f_tilde, 0., 1.)
            + jnp.sum(k * f - jnp.exp(f)))
  positive = vi.bijectors.positive()
  return (log_prob, {"rho": (), "alpha": (), "f_tilde": (len(x),)},
          {"rho": positive, "alpha": positive, "f_tilde": None})


def _eight_schools_noncentered(d):
  y, sigma = _f(d, "y"), _f(d, "sigma")

  def log_prob(theta_trans, mu, tau):
    theta = theta_trans * tau + mu
    return (_normal(theta_trans, 0., 1.) + _normal(y, theta, sigma) + _normal(mu, 0., 5.)
            + _cauchy(tau, 0., 5.))
  j = int(d["J"])
  return (log_prob, {"theta_trans": (j,), "mu": (), "tau": ()},
          {"theta_trans": None, "mu": None, "tau": vi.bijectors.positive()})


def _eight_schools_centered(d):
  y, sigma = _f(d, "y"), _f(d, "sigma")

  def log_prob(theta, mu, tau):
    return (_cauchy(tau, 0., 5.) + _normal(theta, mu, tau) + _normal(y, theta, sigma)
            + _normal(mu, 0., 5.))
  j = int(d["J"])
  return (log_prob, {"theta": (j,), "mu": (), "tau": ()},
          {"theta": None, "mu": None, "tau": vi.bijectors.positive()})


# name, kind, builder, size of the data (its field), x64 needed, parameters vs Stan's.
_REGISTRY = [
    ("kidiq-kidscore_momiq", "raw-scale regression", _kidscore_momiq, "N", False, ""),
    ("kidiq-kidscore_interaction", "raw-scale interaction regression", _kidscore_interaction,
     "N", False, ""),
    ("earnings-earn_height", "raw-scale regression (dollars, flat priors)", _earn_height, "N",
     False, ""),
    ("earnings-logearn_interaction", "interaction regression", _logearn_interaction, "N", False,
     ""),
    ("mesquite-mesquite", "raw-scale regression", _mesquite, "N", False, ""),
    ("kilpisjarvi_mod-kilpisjarvi", "raw-scale regression (year predictor)", _kilpisjarvi, "N",
     False, ""),
    ("nes2000-nes", "regression with dummies", _nes, "N", False, ""),
    ("sblrc-blr", "Bayesian linear regression", _blr, "N", False, ""),
    ("diamonds-diamonds", "ill-conditioned regression (brms)", _diamonds, "N", False, ""),
    ("arma-arma11", "ARMA(1,1) time series", _arma11, "T", False, ""),
    ("garch-garch11", "GARCH(1,1) time series", _garch11, "T", False,
     "alpha1_beta1 = [alpha1, beta1] (beta1 < 1 - alpha1), one GarchStickBreaking bijector"),
    ("arK-arK", "AR(5) time series", _ark, "T", False, ""),
    ("hmm_example-hmm_example", "HMM (2 states, forward algorithm)", _hmm_example, "N", False,
     ""),
    ("low_dim_gauss_mix-low_dim_gauss_mix", "mixture, ordered means", _low_dim_gauss_mix, "N",
     False, ""),
    ("gp_pois_regr-gp_regr", "GP hyperparameters", _gp_regr, "N", False, ""),
    ("gp_pois_regr-gp_pois_regr", "latent GP, Poisson (non-centered)", _gp_pois_regr, "N",
     True, "reference f mapped to f_tilde = L^-1 f"),
    ("eight_schools-eight_schools_noncentered", "hierarchical, non-centered",
     _eight_schools_noncentered, "J", False, "reference theta mapped to theta_trans"),
    ("eight_schools-eight_schools_centered", "hierarchical, centered (funnel)",
     _eight_schools_centered, "J", False, "reference of eight_schools_noncentered"),
]


def names() -> list[str]:
  """The posteriors' names, in `targets()` order."""
  return [r[0] for r in _REGISTRY]


def _load(name: str) -> dict:
  with np.load(os.path.join(DATA_DIR, f"{name}.npz")) as f:
    out = {"data": {}, "draws": {}}
    for key in f.files:
      group, _, field = key.partition(".")
      if field:
        out[group][field] = f[key]
      else:
        out[key] = f[key]
  out["meta"] = json.loads(str(out["meta"]))
  return out


def _flatten(keys_shapes: list, z: dict):
  """`z` (leading batch axes allowed) -> `[..., num_ref]` in sorted-key order."""
  first_key, first_shape = keys_shapes[0]
  leaf = jnp.asarray(z[first_key])
  batch = leaf.shape[:leaf.ndim - len(first_shape)]
  return jnp.concatenate([jnp.reshape(jnp.asarray(z[k]), batch + (-1,)) for k, _ in keys_shapes],
                         axis=-1)


def _unflatten(keys_shapes: list, flat):
  """The inverse of `_flatten`: `[..., num_ref]` -> dict param -> `[..., *shape]`."""
  flat = jnp.asarray(flat)
  sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in keys_shapes]
  pieces = jnp.split(flat, np.cumsum(sizes)[:-1].tolist(), axis=-1)
  return {k: jnp.reshape(p, flat.shape[:-1] + tuple(shape))
          for (k, shape), p in zip(keys_shapes, pieces)}


@functools.cache
def get(name: str) -> dict:
  """The entry of `targets()` named `name` (see the module docstring)."""
  row = next((r for r in _REGISTRY if r[0] == name), None)
  if row is None:
    raise KeyError(f"unknown posterior {name!r}; known: {names()}")
  _, kind, builder, size_field, x64, stan_parameters = row
  stored = _load(name)
  log_prob, event_shape, bijector = builder(stored["data"])
  keys_shapes = sorted(event_shape.items())
  space = vi.bijectors.latent_space(event_shape, bijector)
  for k, shape in keys_shapes:
    got = stored["draws"][k].shape[1:]
    if got != tuple(shape):
      raise ValueError(f"{name}: stored draws of {k} have shape {got}, the model {shape}")
  return {
      "name": name,
      "kind": kind,
      "target_log_prob_fn": log_prob,
      "event_shape": event_shape,
      "bijector": bijector,
      "dim": space.dim,
      "num_data": int(stored["data"][size_field]),
      "ref_mean": stored["ref_mean"],
      "ref_sd": stored["ref_sd"],
      "flatten": functools.partial(_flatten, keys_shapes),
      "unflatten": functools.partial(_unflatten, keys_shapes),
      "ref_draws": stored["draws"],
      "x64": x64,
      "stan_parameters": stan_parameters,
      "meta": stored["meta"],
  }


def targets() -> list[dict]:
  """Every posterior, as `get(name)` dicts (see the module docstring)."""
  return [get(n) for n in names()]


def stein_statistics(target: dict, log_prob_fn=None, draws=None) -> np.ndarray:
  """Per-coordinate t-statistics of the Stein identity in the unconstrained space.

  For draws `z ~ p` and `u = bijector^-1(z)`, `E[grad_u (log p(z(u)) + log|det dz/du|)] = 0`
  when `log p` is the density the draws come from. Returns the mean over the draws of that
  gradient divided by its standard error (the draws taken as independent), `[dim]`; the
  computation runs in the dtype of the draws (float64 under `jax.enable_x64`).

  Args:
    target: an entry of `targets()`.
    log_prob_fn: the density to check (default: `target["target_log_prob_fn"]`).
    draws: dict param -> `[n, *shape]` (default: `target["ref_draws"]`).

  Returns:
    float64 numpy array `[dim]`.
  """
  log_prob_fn = log_prob_fn or target["target_log_prob_fn"]
  draws = target["ref_draws"] if draws is None else draws
  space = vi.bijectors.latent_space(target["event_shape"], target["bijector"])
  u, _ = space.inverse_and_log_det({k: jnp.asarray(v) for k, v in draws.items()})

  def unconstrained(u_one):
    z, ldj = space.forward_and_log_det(u_one[None])
    return log_prob_fn(**{k: v[0] for k, v in z.items()}) + ldj[0]
  grads = np.asarray(jax.jit(jax.vmap(jax.grad(unconstrained)))(u), np.float64)
  se = grads.std(axis=0, ddof=1) / np.sqrt(grads.shape[0])
  return grads.mean(axis=0) / se


def table() -> str:
  """A markdown table of the posteriors: name, kind, dims, data size."""
  lines = ["| posterior | kind | dim | data |", "|---|---|---|---|"]
  for t in targets():
    lines.append(f"| {t['name']} | {t['kind']} | {t['dim']} | {t['num_data']} |")
  return "\n".join(lines)


def _main():
  print(table())


if __name__ == "__main__":
  _main()
