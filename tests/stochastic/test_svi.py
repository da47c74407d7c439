"""The fit loop: conjugate recovery, composability, dtypes, input validation."""

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfb = tfp.bijectors


def normal_normal_log_prob(z, x=5.):
  # z ~ N(0, 1), x | z ~ N(z, 1): posterior N(x / 2, 1 / sqrt(2)) (seed 000).
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(x)


def _decay(lr, steps):
  return optax.adam(optax.exponential_decay(lr, steps, 0.02))


def test_normal_normal_mean_field_recovers_exact_posterior():
  s = vi.surrogates.mean_field_normal(())
  r = vi.fit(normal_normal_log_prob, s, _decay(0.1, 2000), 2000,
             key=jax.random.key(0), sample_size=16)
  mean = float(r.params["loc"][0])
  std = float(jax.nn.softplus(r.params["raw_scale"][0]))
  assert abs(mean - 2.5) < 0.05
  assert abs(std / (1 / np.sqrt(2)) - 1) < 0.05
  chex.assert_shape(r.trace, (2000,))
  # At the optimum the loss is -log Z = -log N(5; 0, sqrt 2).
  log_z = float(distrax.Normal(0., np.sqrt(2.)).log_prob(5.))
  assert abs(float(r.trace[-200:].mean()) + log_z) < 0.05


def _linear_regression(key, n=30, d=3, noise=0.5, prior_scale=2.):
  kx, kw, ke = jax.random.split(key, 3)
  x = jax.random.normal(kx, (n, d))
  w_true = jax.random.normal(kw, (d,))
  y = x @ w_true + noise * jax.random.normal(ke, (n,))
  precision = jnp.eye(d) / prior_scale**2 + x.T @ x / noise**2
  cov = jnp.linalg.inv(precision)
  mean = cov @ x.T @ y / noise**2

  def log_prob(w):
    return (distrax.Normal(0., prior_scale).log_prob(w).sum() +
            distrax.Normal(x @ w, noise).log_prob(y).sum())
  return log_prob, mean, cov


def test_full_rank_matches_exact_bayesian_linear_regression_posterior():
  log_prob, mean, cov = _linear_regression(jax.random.key(1))
  s = vi.surrogates.full_rank_normal((3,))
  r = vi.fit(log_prob, s, _decay(0.05, 4000), 4000, key=jax.random.key(2),
             sample_size=32)
  loc = r.params["loc"]
  tril = vi.surrogates.full_rank_scale_tril(r.params)
  sd = jnp.sqrt(jnp.diag(cov))
  np.testing.assert_allclose(np.asarray(loc), np.asarray(mean),
                             atol=float(0.05 * sd.min()))
  # Covariance within 10% (relative to the posterior sds) entrywise.
  err = (tril @ tril.T - cov) / jnp.outer(sd, sd)
  assert float(jnp.abs(err).max()) < 0.1


def test_target_calling_convention_dict_tuple_array():
  calls = {}

  def dict_target(a, b):
    calls["dict"] = True
    return -0.5 * (jnp.sum((a - 1.)**2) + (b + 2.)**2)

  def tuple_target(a, b):
    calls["tuple"] = True
    return -0.5 * (jnp.sum((a - 1.)**2) + (b + 2.)**2)

  opt = _decay(0.1, 1500)
  for target, shape in [(dict_target, {"a": (2,), "b": ()}),
                        (tuple_target, ((2,), ()))]:
    s = vi.surrogates.mean_field_normal(shape)
    r = vi.fit(target, s, opt, 1500, key=jax.random.key(3), sample_size=8)
    np.testing.assert_allclose(np.asarray(r.params["loc"]), [1., 1., -2.],
                               atol=0.05)
  assert calls == {"dict": True, "tuple": True}


def test_fit_compiles_once_under_jit_and_vmaps_over_keys():
  s = vi.surrogates.mean_field_normal(())
  opt = _decay(0.1, 1000)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key):
    return vi.fit(normal_normal_log_prob, s, opt, 1000, key=key,
                  sample_size=8).params

  p1 = run(jax.random.key(0))
  p2 = run(jax.random.key(1))  # no retrace (assert_max_traces would raise)
  assert not np.allclose(np.asarray(p1["loc"]), np.asarray(p2["loc"]))
  keys = jax.random.split(jax.random.key(4), 5)
  batched = jax.jit(jax.vmap(run))(keys)
  chex.assert_shape(batched["loc"], (5, 1))
  np.testing.assert_allclose(np.asarray(batched["loc"]), 2.5, atol=0.1)


def test_grad_through_fit_matches_closed_form():
  # MAP by SGD on log p = -(z - x)^2 / 2: z_T = x (1 - (1 - lr)^T) from z_0 = 0,
  # so d z_T / d x = 1 - (1 - lr)^T.
  lr, steps = 0.1, 20
  s = vi.surrogates.delta(())

  def final_point(x):
    r = vi.fit(lambda z: -0.5 * (z - x)**2, s, optax.sgd(lr), steps,
               key=jax.random.key(0))
    return r.params["loc"][0]

  np.testing.assert_allclose(float(jax.grad(final_point)(3.)),
                             1 - (1 - lr)**steps, rtol=1e-5)


def test_float64_is_kept_when_x64_is_enabled():
  with jax.enable_x64(True):
    s = vi.surrogates.full_rank_normal((2,), tfb.Softplus())
    r = vi.fit(lambda z: -0.5 * jnp.sum((z - 1.)**2), s, optax.adam(1e-2), 10,
               key=jax.random.key(0), sample_size=4)
    assert r.params["loc"].dtype == jnp.float64
    assert r.params["unit_tril"].dtype == jnp.float64
    assert r.trace.dtype == jnp.float64
    z, lq = s.sample_and_log_prob(r.params, jax.random.key(1), 3)
    assert z.dtype == jnp.float64 and lq.dtype == jnp.float64
  s32 = vi.surrogates.mean_field_normal((2,))
  r32 = vi.fit(lambda z: -0.5 * jnp.sum(z**2), s32, optax.adam(1e-2), 5,
               key=jax.random.key(0))
  assert r32.params["loc"].dtype == jnp.float32 and r32.trace.dtype == jnp.float32


def test_custom_trace_fn_and_python_loop_with_build():
  s = vi.surrogates.mean_field_normal(())
  r = vi.fit(normal_normal_log_prob, s, optax.adam(0.05), 50,
             key=jax.random.key(0),
             trace_fn=lambda tq: (tq.loss, tq.params["loc"], tq.grads["loc"],
                                  tq.step))
  loss, loc, grad, step = r.trace
  chex.assert_shape([loss, loc, grad, step], [(50,), (50, 1), (50, 1), (50,)])
  np.testing.assert_array_equal(np.asarray(step), np.arange(50))
  # Bean Machine-style stepping from Python with a callback.
  alg = vi.build(normal_normal_log_prob, s, _decay(0.1, 1500), sample_size=8)
  state = alg.init(jax.random.key(0))
  step_fn = jax.jit(alg.step)
  seen = []
  for k in jax.random.split(jax.random.key(1), 1500):
    state, info = step_fn(state, k)
    if int(info.step) % 500 == 0:
      seen.append(float(info.loss))
  assert len(seen) == 3 and int(state.step) == 1500
  assert abs(float(state.params["loc"][0]) - 2.5) < 0.1


def test_bad_input_raises_before_compilation_naming_the_argument():
  s = vi.surrogates.mean_field_normal((2,))
  opt = optax.adam(0.1)
  key = jax.random.key(0)
  target = lambda z: -0.5 * jnp.sum(z**2)
  with pytest.raises(ValueError, match="num_steps"):
    vi.fit(target, s, opt, 0, key=key)
  with pytest.raises(ValueError, match="sample_size"):
    vi.fit(target, s, opt, 10, key=key, sample_size=0)
  with pytest.raises(ValueError, match="target_log_prob_fn must return a scalar"):
    vi.fit(lambda z: -0.5 * z**2, s, opt, 10, key=key)
  with pytest.raises(ValueError, match="target_log_prob_fn failed"):
    vi.fit(lambda a, b: a + b, s, opt, 10, key=key)
  with pytest.raises(ValueError, match="init_params"):
    vi.fit(target, s, opt, 10, key=key, init_params={"loc": jnp.zeros(2)})
  with pytest.raises(ValueError, match="init_params"):
    vi.fit(target, s, opt, 10, key=key,
           init_params={"loc": jnp.zeros(3), "raw_scale": jnp.zeros(3)})
  with pytest.raises(ValueError, match="bijector"):
    vi.surrogates.mean_field_normal({"a": (2,)}, {"b": tfb.Exp()})
  with pytest.raises(TypeError, match="optimizer"):
    vi.fit(target, s, "adam", 10, key=key)
  with pytest.raises(TypeError, match="key"):
    vi.fit(target, s, opt, 10, key=None)
