"""Shared pieces of the benchmarks: targets, the bare kernel, timing, reporting.

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

import datetime
import functools
import os
import platform
import statistics
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax


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


def german_credit_logistic_regression() -> Target:
  """UCI German credit (numeric), as inference_gym's
  GermanCreditNumericLogisticRegression: 24 standardized features plus an
  intercept, N(0, 1) priors, label 1 for a bad credit (code 2), 1000 rows
  (25 dims); reference from inference_gym's ground truth."""
  from inference_gym.targets.ground_truth import german_credit_numeric_logistic_regression as gt  # pylint: disable=g-import-not-at-top
  from benchmarks.auto_targets import german_credit_data  # pylint: disable=g-import-not-at-top
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


def _chunk_steps(num_steps: int, most: int) -> int:
  """The largest divisor of `num_steps` that is at most `most`."""
  return max(d for d in range(1, min(num_steps, most) + 1)
             if num_steps % d == 0)


def bare_kernel(unconstrained_log_prob, dim, optimizer, sample_size,
                num_steps, params=None, with_loss=False, chunk=None):
  """The irreducible work: scan of vmap(grad(log p)) on S points + optax update.

  Args:
    unconstrained_log_prob: `u: [dim] -> scalar`.
    dim: the unconstrained dimension.
    optimizer: the optax optimizer the methods use.
    sample_size: S, points per step.
    num_steps: scan length.
    params: the params pytree the optax update runs on (default: one vector
      `[dim]`). Pass the surrogate's params (e.g. `{"loc": [dim],
      "raw_scale": [dim]}`) for "the same optax update" as the method: the
      update then costs what the method's own update costs. The S points are
      the first `[dim]` leaf plus standard normal noise; every `[dim]` leaf
      gets the mean gradient, other leaves its first entry.

    with_loss: also compute the log densities of the S points with
      `jax.vmap(jax.value_and_grad(log p))` and trace their negated mean every
      step ("bare kernel + loss": what any ELBO that reports its value pays
      on top of the kernel, whatever the engine).
    chunk: None, or at most this many steps per inner `lax.scan` (the
      largest divisor of `num_steps`), an outer scan over the chunks ("bare
      kernel (chunked)"): XLA:CPU runs a loop body op by op, without its
      task-graph executor, only when every buffer the loop touches is at most
      512 bytes; a scan over all `[num_steps, 2]` keys is not. vi_jax's fit
      loop runs in such chunks (`vi_jax.stochastic.loop`), so this is the kernel with
      the same advantage.

  Returns:
    `key -> final params` (with_loss: `(final params, [num_steps] losses)`),
    to jit.
  """
  value_and_grad = jax.vmap(jax.value_and_grad(unconstrained_log_prob))
  if params is None:
    params = jnp.zeros((dim,))
  params = jax.tree_util.tree_map(jnp.zeros_like, params)
  leaves = jax.tree_util.tree_leaves(params)
  first = next(i for i, l in enumerate(leaves) if l.shape == (dim,))

  def run(key):
    opt_state = optimizer.init(params)

    def body(carry, k):
      params, opt_state = carry
      loc = jax.tree_util.tree_leaves(params)[first]
      points = loc + jax.random.normal(k, (sample_size, dim))
      value, g = value_and_grad(points)
      g = -jnp.mean(g, axis=0)
      grads = jax.tree_util.tree_map(
          lambda l: g if l.shape == (dim,) else jnp.broadcast_to(g[0], l.shape),
          params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return ((optax.apply_updates(params, updates), opt_state),
              -jnp.mean(value) if with_loss else None)

    keys = jax.random.split(key, num_steps)
    if chunk is None:
      (final, _), losses = jax.lax.scan(body, (params, opt_state), keys)
    else:
      k = _chunk_steps(num_steps, chunk)
      (final, _), losses = jax.lax.scan(
          lambda carry, ks: jax.lax.scan(body, carry, ks),
          (params, opt_state), keys.reshape((num_steps // k, k)))
      losses = None if losses is None else losses.reshape(-1)
    return (final, losses) if with_loss else final

  return run


def surrogate_params(family: str, target: "Target"):
  """The vi_jax surrogate's initial params pytree for `family` on `target`."""
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  make = (vi.surrogates.mean_field_normal if family == "mean-field" else
          vi.surrogates.full_rank_normal)
  return make(target.event_shape, target.bijector).init(jax.random.key(0))


def compile_fn(fn, *args):
  """(compiled, seconds to trace + lower + compile) of `jax.jit(fn)`.

  Compiled twice; the smaller time is reported. The second compile wraps `fn`
  anew (`functools.partial`), so the program is traced, lowered and compiled
  again while helpers that libraries share and cache (`jax.random`'s jitted
  samplers, ...) are warm for every method alike: neither the order of the
  methods nor one noisy compile decides the comparison.
  """
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.jit(functools.partial(fn)).lower(*args).compile()
  return compiled, min(first, time.perf_counter() - t0)


def time_interleaved(compiled: dict, args: tuple, repeats: int,
                     outputs: Optional[dict] = None,
                     cpu: Optional[dict] = None,
                     budget_s: float = float("inf")) -> dict:
  """Runs each compiled function `repeats` times, interleaved; name -> [s].

  One warm-up call each first, whose result goes to `outputs[name]` when a
  dict is given. Interleaving spreads machine noise evenly over the methods.
  When `cpu` is a dict, it receives name -> [process CPU seconds] of the same
  runs (all threads; less sensitive than wall time to other jobs on a shared
  machine). Stops after 3 repeats once `budget_s` seconds have passed.
  """
  for name, f in compiled.items():
    out = jax.block_until_ready(f(*args))
    if outputs is not None:
      outputs[name] = out
  runs = {name: [] for name in compiled}
  if cpu is not None:
    cpu.update({name: [] for name in compiled})
  start = time.perf_counter()
  for r in range(repeats):
    if r >= 3 and time.perf_counter() - start > budget_s:
      break
    for name, f in compiled.items():
      c0, t0 = time.process_time(), time.perf_counter()
      jax.block_until_ready(f(*args))
      runs[name].append(time.perf_counter() - t0)
      if cpu is not None:
        cpu[name].append(time.process_time() - c0)
  return runs


def time_compiled(fn, *args, repeats=5):
  """(compile seconds, median run seconds) of `jax.jit(fn)(*args)`."""
  compiled, compile_s = compile_fn(fn, *args)
  runs = time_interleaved({"f": compiled}, args, repeats)["f"]
  return compile_s, statistics.median(runs)


def noise(runs) -> float:
  """Relative spread of repeated timings: (max - min) / median."""
  med = statistics.median(runs)
  return (max(runs) - min(runs)) / med if med else float("nan")


def machine_description() -> str:
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  versions = []
  for pkg in ("jax", "jaxlib", "optax", "distrax", "numpyro", "blackjax",
              "tfp-nightly", "inference-gym"):
    try:
      versions.append(f"{pkg} {md.version(pkg)}")
    except md.PackageNotFoundError:
      pass
  dev = jax.devices()[0]
  return (f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
          f"- machine: {cpu}, {os.cpu_count()} cores, "
          f"{platform.system()} {platform.release()}, Python "
          f"{platform.python_version()}\n"
          f"- JAX device: {dev.platform} ({dev.device_kind}); XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '(unset)')}\n"
          f"- versions: {', '.join(versions)}\n")


def markdown_table(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for r in rows:
    lines.append("| " + " | ".join(_fmt(x) for x in r) + " |")
  return "\n".join(lines)


def _fmt(x) -> str:
  if isinstance(x, float):
    if x != x:
      return "nan"
    if abs(x) >= 100:
      return f"{x:.1f}"
    if abs(x) >= 1:
      return f"{x:.3f}"
    return f"{x:.4f}"
  return str(x)
