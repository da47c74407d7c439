"""The benchmark targets: each posterior in vi_jax's API and as a flat density.

Every target is exposed two ways, with the same density on the same
unconstrained space:

* `target_log_prob_fn` / `event_shape` / `bijector`: vi_jax's public API (TFP's
  one-draw calling convention, a pytree of latents, per-latent bijectors);
* `unconstrained_log_prob`: the flat unconstrained vector `u: [dim] -> scalar`,
  log-det-Jacobian of the same bijectors included. The bare kernel and every
  peer (NumPyro, Blackjax, TFP) fit this one.

References (`ref_mean`, `ref_std`, flat over the constrained latents in pytree
leaf order) come from inference_gym's ground truth where it has one.
"""

import os
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
GERMAN_CREDIT_FILE = os.path.join(DATA_DIR, "german_credit",
                                  "german.data-numeric")


class Target(NamedTuple):
  """One benchmark posterior (see the module docstring)."""
  name: str
  target_log_prob_fn: Callable  # one draw, TFP's calling convention
  event_shape: Any
  bijector: Any
  unconstrained_log_prob: Callable  # flat unconstrained vector [dim] -> scalar
  dim: int
  forward: Callable  # u: [n, dim] -> flat constrained draws [n, num_latents]
  ref_mean: Optional[np.ndarray]  # [num_latents] or None
  ref_std: Optional[np.ndarray]  # [num_latents] or None
  steps: int  # steps at S <= 16: a timed run of roughly 0.05 s or more


def _flat_leaves(tree, batch_dims: int) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  if batch_dims:
    n = jnp.shape(leaves[0])[0]
    return jnp.concatenate([jnp.reshape(l, (n, -1)) for l in leaves], axis=-1)
  return jnp.concatenate([jnp.reshape(jnp.asarray(l), (-1,)) for l in leaves])


def _canonical(tree):
  """Mappings (OrderedDict, ...) as plain dicts, so leaves sort by key."""
  if isinstance(tree, dict):
    return {k: _canonical(v) for k, v in tree.items()}
  return tree


def _make(name, fn, event_shape, bijector, steps, ref_mean=None, ref_std=None,
          transform=None):
  """A Target; `transform` maps batched latents to the reference's quantities."""
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  space = vi.bijectors.latent_space(event_shape, bijector)

  def unconstrained(u):
    z, ldj = space.forward_and_log_det(u[None])
    one = jax.tree_util.tree_map(lambda x: x[0], z)
    return vi.target.call_target(fn, one) + ldj[0]

  def forward(u):
    z, _ = space.forward_and_log_det(u)
    return _flat_leaves(_canonical(transform(z) if transform else z), 1)

  if ref_mean is not None:
    ref_mean = np.asarray(_flat_leaves(_canonical(ref_mean), 0))
    ref_std = np.asarray(_flat_leaves(_canonical(ref_std), 0))
  return Target(name, fn, event_shape, bijector, unconstrained, space.dim,
                forward, ref_mean, ref_std, steps)


def _gym_target(model, name, steps):
  """An inference_gym model with its default event-space bijector.

  Accuracy is measured on inference_gym's `identity` sample transformation,
  the quantities its ground truth is of (for the stochastic-volatility model
  the centered log-volatilities, not the non-centered latents; for Brownian
  motion a dict in another leaf order than the latents).
  """
  shape = model.event_shape
  if isinstance(shape, dict):
    fn = lambda **z: model.unnormalized_log_prob(z)
  elif isinstance(shape, tuple) and hasattr(shape, "_fields"):
    struct = type(shape)
    fn = lambda *z: model.unnormalized_log_prob(struct(*z))
  else:
    fn = model.unnormalized_log_prob
    shape = tuple(shape.as_list()) if hasattr(shape, "as_list") else shape
  bij = model.default_event_space_bijector
  if not isinstance(bij, (dict, tuple)):
    from tensorflow_probability.substrates import jax as tfp  # pylint: disable=g-import-not-at-top
    if isinstance(bij, tfp.bijectors.Identity):
      bij = None
  ident = model.sample_transformations["identity"]
  mean, std = ident.ground_truth_mean, ident.ground_truth_standard_deviation
  return _make(name, fn, shape, bij, steps, mean, std,
               transform=jax.vmap(ident))


def _gym():
  from inference_gym import using_jax as gym  # pylint: disable=g-import-not-at-top
  return gym.targets


def eight_schools() -> Target:
  return _gym_target(_gym().EightSchools(), "eight schools (10)", 10000)


def stochastic_volatility_small() -> Target:
  return _gym_target(_gym().VectorizedStochasticVolatilitySP500Small(),
                     "stochastic volatility SP500 small (103)", 2000)


def stochastic_volatility_full() -> Target:
  return _gym_target(_gym().VectorizedStochasticVolatilitySP500(),
                     "stochastic volatility SP500 (2519)", 160)


def item_response_theory() -> Target:
  return _gym_target(_gym().SyntheticItemResponseTheory(),
                     "item response theory (501)", 500)


def brownian_motion() -> Target:
  return _gym_target(
      _gym().BrownianMotionUnknownScalesMissingMiddleObservations(),
      "Brownian motion unknown scales (32)", 5000)


def ill_conditioned_gaussian() -> Target:
  return _gym_target(_gym().IllConditionedGaussian(),
                     "ill-conditioned Gaussian (100)", 5000)


def neals_funnel() -> Target:
  return _gym_target(_gym().NealsFunnel(), "Neal's funnel (10)", 10000)


def banana() -> Target:
  return _gym_target(_gym().Banana(), "banana (2)", 10000)


def _logistic_regression(name, x, y, steps):
  """N(0, 1) prior; the likelihood written as sum(log_sigmoid(sign * logits)),
  sign = 2y - 1: the same density as sum(y * logits - softplus(logits)), but
  XLA:CPU then computes the value and the gradient in one pass over the rows
  (with the softplus form the value costs about 1.25x the gradient alone at
  S = 16, for every method alike)."""
  x = jnp.asarray(np.concatenate([x, np.ones((x.shape[0], 1))], 1), jnp.float32)
  sign = jnp.asarray(2. * np.asarray(y) - 1., jnp.float32)

  def fn(w):
    return (-0.5 * jnp.sum(w**2) +
            jnp.sum(jax.nn.log_sigmoid(sign * (x @ w))))

  return _make(name, fn, (x.shape[1],), None, steps)


def breast_cancer_logistic_regression() -> Target:
  """Scikit-learn's breast-cancer data, standardized, N(0, 1) prior (31 dims)."""
  from sklearn.datasets import load_breast_cancer  # pylint: disable=g-import-not-at-top
  x, y = load_breast_cancer(return_X_y=True)
  x = (x - x.mean(0)) / x.std(0)
  return _logistic_regression("logistic regression breast cancer (31)", x, y,
                              2000)


def german_credit_data() -> tuple[np.ndarray, np.ndarray]:
  """(features [1000, 24] standardized as inference_gym does, labels [1000]).

  The label is `raw - 1` (raw 1 = good, 2 = bad: 1 = bad credit), the
  encoding under which inference_gym's ground truth holds (NUTS on this data
  reproduces it within 0.034 sd; the flipped labels put the mode 25 sds off).
  Features are standardized with the population sd (numpy's `std`), as
  inference_gym's `data._normalize_zero_mean_one_std` does.
  """
  raw = np.loadtxt(GERMAN_CREDIT_FILE)
  x, y = raw[:, :-1], (raw[:, -1] - 1).astype(np.int32)
  return (x - x.mean(0)) / x.std(0), y


def german_credit_logistic_regression() -> Target:
  """UCI German credit (numeric), as inference_gym's
  GermanCreditNumericLogisticRegression: 24 standardized features plus an
  intercept, N(0, 1) priors, label 1 for a bad credit (code 2), 1000 rows
  (25 dims); reference from inference_gym's ground truth."""
  from inference_gym.targets.ground_truth import german_credit_numeric_logistic_regression as gt  # pylint: disable=g-import-not-at-top
  x, y = german_credit_data()
  y = y.astype(np.float32)
  t = _logistic_regression("logistic regression German credit (25)", x, y,
                           2000)
  return t._replace(ref_mean=np.asarray(gt.IDENTITY_MEAN, np.float32),
                    ref_std=np.asarray(gt.IDENTITY_STANDARD_DEVIATION,
                                       np.float32))


def synthetic_logistic_regression(num_features: int = 500,
                                  num_rows: int = 5000,
                                  seed: int = 0) -> Target:
  """Synthetic high-dimensional logistic regression, N(0, 1) prior."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_rows, num_features)) / np.sqrt(num_features)
  w = rng.normal(size=num_features)
  y = (rng.uniform(size=num_rows) < 1 / (1 + np.exp(-x @ w))).astype(
      np.float32)
  return _logistic_regression(
      f"synthetic logistic regression ({num_features + 1})", x, y,
      max(100, min(2000, int(2e8 / (num_rows * num_features)))))


def synthetic_gaussian(dim: int, seed: int = 0) -> Target:
  """A diagonal Gaussian with scales log-uniform in [0.1, 10] (analytic ref)."""
  scales = np.exp(np.random.default_rng(seed).uniform(np.log(.1), np.log(10.),
                                                      dim)).astype(np.float32)
  s = jnp.asarray(scales)

  def fn(z):
    return -0.5 * jnp.sum((z / s)**2)

  return _make(f"synthetic Gaussian ({dim})", fn, (dim,), None, 2000,
               np.zeros(dim, np.float32), scales)


# name -> constructor, the order of the tables.
TARGETS = {
    "eight_schools": eight_schools,
    "sv_small": stochastic_volatility_small,
    "sv_full": stochastic_volatility_full,
    "breast_cancer": breast_cancer_logistic_regression,
    "german_credit": german_credit_logistic_regression,
    "irt": item_response_theory,
    "brownian": brownian_motion,
    "ill_gaussian": ill_conditioned_gaussian,
    "funnel": neals_funnel,
    "banana": banana,
    "synthetic_lr": synthetic_logistic_regression,
}
QUICK_TARGETS = ("eight_schools",)
