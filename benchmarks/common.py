"""Shared pieces of the benchmarks: targets, the bare kernel, timing."""

import statistics
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class Target(NamedTuple):
  name: str
  target_log_prob_fn: Callable  # one draw, TFP's calling convention
  event_shape: object
  bijector: object
  unconstrained_log_prob: Callable  # flat unconstrained vector [dim] -> scalar
  dim: int


def _from_event_space(name, fn, event_shape, bijector):
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  space = vi.bijectors.latent_space(event_shape, bijector)

  def unconstrained(u):
    z, ldj = space.forward_and_log_det(u[None])
    one = jax.tree_util.tree_map(lambda x: x[0], z)
    return vi.target.call_target(fn, one) + ldj[0]

  return Target(name, fn, event_shape, bijector, unconstrained, space.dim)


def stochastic_volatility_small() -> Target:
  from inference_gym import using_jax as gym  # pylint: disable=g-import-not-at-top
  t = gym.targets.VectorizedStochasticVolatilitySP500Small()
  struct = type(t.event_shape)
  fn = lambda *z: t.unnormalized_log_prob(struct(*z))
  return _from_event_space("stochastic volatility SP500 small (103)", fn,
                           t.event_shape, t.default_event_space_bijector)


def breast_cancer_logistic_regression() -> Target:
  from sklearn.datasets import load_breast_cancer  # pylint: disable=g-import-not-at-top
  x, y = load_breast_cancer(return_X_y=True)
  x = (x - x.mean(0)) / x.std(0)
  x = jnp.asarray(np.concatenate([x, np.ones((x.shape[0], 1))], 1), jnp.float32)
  y = jnp.asarray(y, jnp.float32)

  def fn(w):
    logits = x @ w
    return (-0.5 * jnp.sum(w**2) +
            jnp.sum(y * logits - jax.nn.softplus(logits)))

  return _from_event_space("logistic regression breast cancer (31)", fn,
                           (x.shape[1],), None)


def bare_kernel(unconstrained_log_prob, dim, optimizer, sample_size,
                num_steps):
  """The irreducible work: scan of vmap(grad(log p)) on S points + optax update.

  Returns a function `key -> final params` to jit.
  """
  grad = jax.vmap(jax.grad(unconstrained_log_prob))

  def run(key):
    params = jnp.zeros((dim,))
    opt_state = optimizer.init(params)

    def body(carry, k):
      params, opt_state = carry
      points = params + jax.random.normal(k, (sample_size, dim))
      g = -jnp.mean(grad(points), axis=0)
      updates, opt_state = optimizer.update(g, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(body, (params, opt_state),
                                  jax.random.split(key, num_steps))
    return params

  return run


def time_compiled(fn, *args, repeats=5):
  """(compile seconds, median run seconds) of `jax.jit(fn)(*args)`."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - t0)
  return compile_s, statistics.median(runs)
