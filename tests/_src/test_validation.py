"""Argument checks: one validator per kind, before anything is compiled."""

import warnings

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vi_jax as vi
from vi_jax._src import validation as _validation


def log_prob(z):  # Normal-Normal: posterior N(2.5, 1/2) for x = 5
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(5.)


def test_positive_int_accepts_integer_scalars_only():
  for v in (3, np.int64(3), np.int32(3), jnp.int32(3)):
    assert _validation.positive_int("n", v) == 3
  for v in (True, 2.0, 1.5, "3", None, jnp.float32(3.)):
    with pytest.raises(TypeError, match="n must be a Python int >= 1"):
      _validation.positive_int("n", v)
  with pytest.raises(ValueError, match="n must be >= 1; got 0"):
    _validation.positive_int("n", np.int64(0))
  with pytest.raises(TypeError, match="n must be a Python int"):
    jax.jit(lambda x: _validation.positive_int("n", x))(3)


def test_numpy_and_jax_integers_work_as_num_steps_and_sample_size():
  s = vi.surrogates.mean_field_normal(())
  r = vi.fit(log_prob, s, optax.adam(0.05), np.int64(300),
             key=jax.random.key(0), sample_size=jnp.int32(8))
  assert r.trace.shape == (300,)
  np.testing.assert_allclose(float(r.params["loc"][0]), 2.5, atol=0.15)


def test_non_integer_sample_size_is_a_type_error_everywhere():
  s = vi.surrogates.mean_field_normal(())
  with pytest.raises(TypeError, match="sample_size"):
    vi.fit(log_prob, s, optax.adam(0.05), 10, key=jax.random.key(0),
           sample_size=1.5)
  with pytest.raises(TypeError, match="sample_size"):
    vi.monte_carlo_kl(distrax.Normal(0., 1.), distrax.Normal(0., 1.),
                      jax.random.key(0), 1.5)


@pytest.mark.parametrize("trace_fn", [3, "", "loss"])
def test_bad_trace_fn_is_rejected_before_compiling(trace_fn, count_compiles):
  s = vi.surrogates.mean_field_normal(())
  with count_compiles() as compiles:
    with pytest.raises(TypeError, match="trace_fn"):
      vi.fit(log_prob, s, optax.adam(0.05), 10, key=jax.random.key(0),
             trace_fn=trace_fn)
  assert not compiles


def test_bad_loss_is_rejected():
  s = vi.surrogates.mean_field_normal(())
  with pytest.raises(TypeError, match="loss"):
    vi.fit(log_prob, s, optax.adam(0.05), 10, key=jax.random.key(0),
           loss="elbo")


@pytest.mark.parametrize("wrap", [lambda v: {"a": v}, lambda v: [v],
                                  lambda v: (v,), lambda v: jnp.int32(1)])
def test_target_must_return_one_float_scalar(wrap, count_compiles):
  s = vi.surrogates.mean_field_normal(())
  with count_compiles() as compiles:
    with pytest.raises(ValueError, match="must return a scalar"):
      vi.fit(lambda z: wrap(log_prob(z)), s, optax.adam(0.05), 10,
             key=jax.random.key(0))
  assert not compiles


def test_bad_init_params_are_rejected_before_compiling(count_compiles):
  mf = vi.surrogates.mean_field_normal((2,))
  fr = vi.surrogates.full_rank_normal((2,))
  target = lambda z: -0.5 * jnp.sum(z**2)
  key = jax.random.key(0)
  cases = [
      (TypeError, {"loc": jnp.zeros(2, jnp.int32), "raw_scale": jnp.zeros(2)}),
      (ValueError, {"loc": jnp.zeros(3), "raw_scale": jnp.zeros(3)}),
      (ValueError, fr.init(key)),  # full-rank params, mean-field surrogate
  ]
  for error, params in cases:
    with count_compiles() as compiles:
      with pytest.raises(error, match="init_params"):
        vi.fit(target, mf, optax.adam(0.05), 10, key=key, init_params=params)
    assert not compiles


def test_minibatch_target_that_ignores_the_scale_warns():
  data = jnp.linspace(-1., 1., 20)
  s = vi.surrogates.mean_field_normal(())
  unscaled = lambda batch, z: (distrax.Normal(0., 1.).log_prob(z) + jnp.sum(
      distrax.Normal(z, 1.).log_prob(batch.data)))
  with pytest.warns(UserWarning, match="batch.scale"):
    vi.fit(unscaled, s, optax.adam(0.05), 5, key=jax.random.key(0), data=data,
           batch_size=4)
  scaled = vi.minibatch.scaled_log_prob(
      distrax.Normal(0., 1.).log_prob,
      lambda rows, z: jnp.sum(distrax.Normal(z, 1.).log_prob(rows)))
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)
    vi.fit(scaled, s, optax.adam(0.05), 5, key=jax.random.key(0), data=data,
           batch_size=4)
