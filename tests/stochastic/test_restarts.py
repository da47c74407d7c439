"""Restarts: R fits in one compile, the best by final loss, all traces."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vi_jax as vi
from vi_jax.stochastic import restarts

# A two-mode target: 0.8 N(-4, 1) + 0.2 N(4, 1). A unimodal q fitted to one
# mode has -ELBO ~ -log(weight of that mode), so the mode at -4 (weight 0.8)
# wins: -ELBO -> -log 0.8 = 0.223 versus -log 0.2 = 1.609.
MIX = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.8, 0.2])),
                                distrax.Normal(jnp.array([-4., 4.]), 1.))


def test_best_restart_is_the_heavier_mode():
  s = vi.surrogates.mean_field_normal(())
  opt = optax.adam(optax.exponential_decay(0.1, 800, 0.05))

  def init_far(key):  # spread the starting points over both modes
    return {"loc": jax.random.uniform(key, (1,), minval=-8., maxval=8.),
            "raw_scale": jnp.zeros(1)}

  s = s._replace(init=init_far)
  out = restarts.fit_restarts(MIX.log_prob, s, opt, 800,
                              key=jax.random.key(0), num_restarts=8,
                              sample_size=16, final_window=100)
  assert out.all.trace.shape == (8, 800)
  locs = np.asarray(out.all.params["loc"][:, 0])
  assert np.any(locs < -3) and np.any(locs > 3)  # both modes were found
  finals = np.asarray(out.final_losses)
  np.testing.assert_allclose(finals[locs < -3], -np.log(0.8), atol=0.05)
  np.testing.assert_allclose(finals[locs > 3], -np.log(0.2), atol=0.05)
  assert int(out.best_index) == int(np.argmin(finals))
  assert float(out.best.params["loc"][0]) < -3
  assert out.best.trace.shape == (800,)
  # The documented one-liner gives the same runs.
  one_liner = jax.vmap(lambda k: vi.fit(MIX.log_prob, s, opt, 800, key=k,
                                        sample_size=16))(
                                            jax.random.split(jax.random.key(0), 8))
  np.testing.assert_allclose(np.asarray(one_liner.params["loc"][:, 0]), locs,
                             rtol=1e-5, atol=1e-5)


def test_bad_restart_arguments():
  s = vi.surrogates.mean_field_normal(())
  with pytest.raises(ValueError, match="num_restarts"):
    restarts.fit_restarts(MIX.log_prob, s, optax.adam(0.1), 10,
                          key=jax.random.key(0), num_restarts=0)
  with pytest.raises(ValueError, match="trace_fn"):
    restarts.fit_restarts(MIX.log_prob, s, optax.adam(0.1), 10,
                          key=jax.random.key(0), num_restarts=2,
                          trace_fn=lambda tq: tq.params)
