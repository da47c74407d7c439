"""Convergence criteria: TFP's LossNotDecreasing stop steps, Stan's rule, early stop."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi
from vi_jax.stochastic import convergence


def normal_normal_log_prob(z, x=5.):
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(x)


def _loss_sequence(seed, n=400):
  rng = np.random.default_rng(seed)
  t = np.arange(n)
  return (10. / (1. + 0.05 * t) + 0.05 * rng.standard_normal(n)).astype(
      np.float32)


def _tfp_stop_step(losses, **kw):
  """First step t >= 1 at which TFP's criterion converges (None if never)."""
  crit = tfp.optimizer.convergence_criteria.LossNotDecreasing(**kw)
  state = crit.bootstrap(jnp.asarray(losses[0]), [], [])
  for t in range(1, len(losses)):
    done, state = crit.one_step(jnp.asarray(t), jnp.asarray(losses[t]), [],
                                [], state)
    if bool(done):
      return t
  return None


def _our_stop_step(losses, criterion):
  state = criterion.init(jnp.asarray(losses[0]), (), ())
  update = jax.jit(criterion.update)
  for t in range(1, len(losses)):
    done, state = update(jnp.asarray(t, jnp.int32), jnp.asarray(losses[t]), (),
                         (), state)
    if bool(done):
      return t
  return None


@pytest.mark.parametrize("kw", [
    dict(rtol=0.05, window_size=10, min_num_steps=20),
    dict(atol=0.02, window_size=5, min_num_steps=30),
    dict(atol=1e-3, rtol=0.1, window_size=20, min_num_steps=20),
])
def test_loss_not_decreasing_stops_where_tfp_does(kw):
  for seed in range(3):
    losses = _loss_sequence(seed)
    expected = _tfp_stop_step(losses, **kw)
    assert expected is not None
    assert _our_stop_step(losses, convergence.loss_not_decreasing(**kw)) == expected


def test_fit_stops_at_tfp_step_and_matches_full_run():
  s = vi.surrogates.mean_field_normal(())
  opt = optax.adam(optax.exponential_decay(0.1, 1000, 0.05))
  kw = dict(rtol=0.01, window_size=50, min_num_steps=200)
  full = vi.fit(normal_normal_log_prob, s, opt, 3000, key=jax.random.key(0),
                sample_size=16)
  early = vi.fit(normal_normal_log_prob, s, opt, 3000, key=jax.random.key(0),
                 sample_size=16,
                 convergence_criterion=convergence.loss_not_decreasing(**kw))
  taken = int(early.num_steps_taken)
  assert bool(early.converged) and 200 < taken < 1000
  # The losses the loop saw, replayed through TFP's own criterion.
  real = np.asarray(early.trace)[:taken]
  assert _tfp_stop_step(real, **kw) == taken - 1
  # Padding: later rows repeat the last real row; the mask marks the real ones.
  np.testing.assert_array_equal(np.asarray(early.trace)[taken:], real[-1])
  np.testing.assert_array_equal(np.asarray(early.trace_mask),
                                np.arange(3000) < taken)
  # Same key, same steps so far: the prefix equals the full run's trace.
  np.testing.assert_allclose(real, np.asarray(full.trace)[:taken], rtol=1e-6)
  # Params of the early stop match the full run's (and the exact posterior).
  scale = lambda r: float(jax.nn.softplus(r.params["raw_scale"][0]))
  assert abs(float(early.params["loc"][0]) - float(full.params["loc"][0])) < 0.1
  assert abs(scale(early) / scale(full) - 1) < 0.1
  assert abs(float(full.params["loc"][0]) - 2.5) < 0.05
  assert abs(scale(full) / (1 / np.sqrt(2)) - 1) < 0.05


def _stan_reference(losses, tol, eval_every, cb_size):
  """Stan's advi.hpp loop on a loss sequence (window means as the ELBO)."""
  elbos = [np.mean(losses[i:i + eval_every])
           for i in range(0, len(losses) - eval_every + 1, eval_every)]
  buf = []
  for w in range(1, len(elbos)):
    buf.append(abs((elbos[w - 1] - elbos[w]) / elbos[w]))
    buf = buf[-cb_size:]
    v = sorted(buf)
    if np.mean(buf) < tol or v[len(v) // 2] < tol:
      return (w + 1) * eval_every - 1  # the step closing window w
  return None


@pytest.mark.parametrize("tol,every,cb", [(0.01, 10, 5), (0.004, 25, 6),
                                          (0.02, 7, 2)])
def test_relative_loss_change_follows_stan(tol, every, cb):
  losses = _loss_sequence(1, n=2000) + 1.
  expected = _stan_reference(losses, tol, every, cb)
  assert expected is not None
  got = _our_stop_step(losses, convergence.relative_loss_change(
      tol_rel_obj=tol, eval_every=every, buffer_size=cb))
  assert got == expected


def test_relative_params_change_closed_form():
  # params_t = 1 + 1/(t+1): relative change at t is 1/(t+1)^2 <= 1.05e-4 first
  # at t = 97.
  crit = convergence.relative_params_change(rtol=1.05e-4, min_num_steps=20)
  state = crit.init(jnp.zeros(()), None, {"p": jnp.asarray(2.)})
  for t in range(1, 200):
    done, state = crit.update(jnp.asarray(t), jnp.zeros(()), None,
                              {"p": jnp.asarray(1. + 1. / (t + 1))}, state)
    if bool(done):
      break
  assert t == 97


def test_user_written_criterion_stops_where_numpy_says():
  threshold = 8.

  def init(loss, grads, params):
    del loss, grads, params
    return ()

  def update(step, loss, grads, params, state):
    del step, grads, params
    return loss < threshold, state

  crit = convergence.ConvergenceCriterion(init, update)
  s = vi.surrogates.mean_field_normal(())
  r = vi.fit(normal_normal_log_prob, s, optax.adam(0.02), 1000,
             key=jax.random.key(1), sample_size=4, convergence_criterion=crit)
  losses = np.asarray(r.trace)
  first = int(np.argmax(losses[1:] < threshold)) + 1
  assert int(r.num_steps_taken) == first + 1


def test_criterion_fit_jits_and_vmaps_and_bad_input():
  s = vi.surrogates.mean_field_normal(())
  crit = convergence.loss_not_decreasing(rtol=0.05, min_num_steps=50)

  @jax.jit
  def run(key):
    r = vi.fit(normal_normal_log_prob, s, optax.adam(0.05), 1000, key=key,
               sample_size=8, convergence_criterion=crit)
    return r.params["loc"], r.num_steps_taken

  locs, steps = jax.vmap(run)(jax.random.split(jax.random.key(0), 3))
  assert locs.shape == (3, 1) and steps.shape == (3,)
  assert np.all(np.asarray(steps) < 1000)
  with pytest.raises(ValueError, match="atol"):
    convergence.loss_not_decreasing()
  with pytest.raises(TypeError, match="convergence_criterion"):
    vi.fit(normal_normal_log_prob, s, optax.adam(0.05), 10,
           key=jax.random.key(0), convergence_criterion="tfp")
