"""Polyak-Ruppert tail averaging: the mean of the last iterates, in closed
form and inside `vi.fit`."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vi_jax as vi
from vi_jax.stochastic import averaging


def test_tail_averaged_is_the_mean_of_the_last_iterates():
  # SGD(0.1) on |p - c|^2 / 2: p_t = c + 0.9^t (p_0 - c) in closed form.
  c, p0, steps, start = jnp.array([1., -1.]), jnp.array([3., 2.]), 20, 12
  opt = averaging.tail_averaged(optax.sgd(0.1), start=start)
  p, state = p0, opt.init(p0)
  for _ in range(steps):
    updates, state = opt.update(p - c, state, p)
    p = optax.apply_updates(p, updates)
  t = np.arange(start + 1, steps + 1)
  expected = np.asarray(c) + np.mean(0.9 ** t) * np.asarray(p0 - c)
  np.testing.assert_allclose(averaging.averaged_params(state), expected,
                             rtol=1e-5)
  np.testing.assert_allclose(p, c + 0.9 ** steps * (p0 - c), rtol=1e-5)
  with pytest.raises(ValueError, match="tail_averaged"):
    averaging.averaged_params(optax.sgd(0.1).init(p0))
  with pytest.raises(ValueError, match="start"):
    averaging.tail_averaged(optax.sgd(0.1), start=-1)


def test_tail_averaged_inside_fit_averages_the_traced_params():
  q = vi.surrogates.mean_field_normal(())
  target = lambda z: distrax.Normal(1., 0.5).log_prob(z)
  r = vi.fit(target, q, averaging.tail_averaged(optax.sgd(0.05), start=150),
             200, key=jax.random.key(0), sample_size=2,
             trace_fn=lambda tq: tq.params, progress_bar=False)
  # The trace holds the params each step started from; the average is over
  # the params after updates 151..200.
  averaged = averaging.averaged_params(r.state.opt_state)
  for name in ("loc", "raw_scale"):
    after = np.concatenate([r.trace[name][151:], r.params[name][None]])
    np.testing.assert_allclose(averaged[name], np.mean(after, axis=0),
                               rtol=1e-5)
