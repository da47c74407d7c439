"""The core gradient step (vi_jax.stochastic.step): its loss, gradients and
optax update against the closed-form negative ELBO of a Gaussian target under
a mean-field Gaussian surrogate, with the surrogate's own base noise."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vi_jax.objectives.losses import negative_elbo
from vi_jax.stochastic import step as step_lib
from vi_jax.surrogates import mean_field

MU = np.array([1., -2., 0.5], np.float32)
SIG = np.array([0.5, 2., 1.], np.float32)
SAMPLE_SIZE = 5


def _gaussian_log_prob(mu):
  def log_prob(z):
    return jnp.sum(-0.5 * ((z - mu) / SIG) ** 2 - jnp.log(SIG) -
                   0.5 * np.log(2 * np.pi))
  return log_prob


def _surrogate_and_params():
  q = mean_field.mean_field_normal((3,))
  params = {"loc": jnp.array([0.3, -1., 2.]),
            "raw_scale": jnp.array([-0.5, 0.2, 1.])}
  return q, params


def _closed_form(q, params, key, mu):
  """-ELBO and its gradients for p = N(mu, diag(SIG^2)), q = N(loc, diag(s^2)),
  z = loc + s eps with eps the surrogate's own draws (numpy, float64).

  d/d loc = mean (z - mu) / SIG^2; d/d raw = sigmoid(raw) (mean (z - mu) eps /
  SIG^2 - 1 / s); d/d mu = -mean (z - mu) / SIG^2.
  """
  z = np.asarray(q.sample_and_log_prob(params, key, SAMPLE_SIZE)[0], np.float64)
  loc = np.asarray(params["loc"], np.float64)
  raw = np.asarray(params["raw_scale"], np.float64)
  s = np.log1p(np.exp(raw))
  eps = (z - loc) / s
  sig2 = SIG.astype(np.float64) ** 2
  log_p = np.sum(-0.5 * (z - mu) ** 2 / sig2 - 0.5 * np.log(2 * np.pi * sig2),
                 axis=1)
  log_q = np.sum(-0.5 * eps ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi), axis=1)
  r = (z - mu) / sig2
  sigmoid = 1. / (1. + np.exp(-raw))
  return dict(loss=-np.mean(log_p - log_q), loc=r.mean(0),
              raw_scale=sigmoid * ((r * eps).mean(0) - 1. / s), mu=-r.mean(0))


def _objective(q, learn):
  loss = negative_elbo()

  def objective(trainable, key, batch):
    del batch
    if learn:
      params, mp = trainable
      return loss(_gaussian_log_prob(mp["mu"]), q, params, key, SAMPLE_SIZE)
    return loss(_gaussian_log_prob(MU), q, trainable, key, SAMPLE_SIZE)

  return objective


def _close(got, want, rtol=1e-4, atol=1e-5):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol,
                             atol=atol)


def test_core_step_gradient_and_sgd_update_equal_the_closed_form():
  q, params = _surrogate_and_params()
  lr, key = 0.1, jax.random.key(0)
  optimizer = optax.sgd(lr)
  state = step_lib.VIState(params=params, opt_state=optimizer.init(params),
                           step=jnp.int32(4))
  step = jax.jit(step_lib.core_step(_objective(q, False), optimizer, False))
  new, info = step(state, key, None)
  want = _closed_form(q, params, key, MU)
  _close(info.loss, want["loss"])
  _close(info.grads["loc"], want["loc"])
  _close(info.grads["raw_scale"], want["raw_scale"])
  # The update is plain SGD on those gradients.
  for name in ("loc", "raw_scale"):
    _close(new.params[name], np.asarray(params[name]) - lr * want[name])
  # The quantities are those at the params before the update; the step counts.
  _close(info.params["loc"], np.asarray(params["loc"]), rtol=0, atol=0)
  assert int(info.step) == 4 and int(new.step) == 5
  assert bool(info.is_finite) and not bool(info.has_converged)
  assert info.model_params == () and info.model_grads == ()
  assert new.model_params == ()
  # The core step owns none of the guard's or the criterion's slices.
  assert not bool(new.converged) and int(new.num_nonfinite) == 0
  assert int(new.num_consecutive_nonfinite) == 0


def test_core_step_threads_the_optimizer_state():
  # SGD with momentum b: trace_1 = g_1, trace_2 = g_2 + b g_1; each update
  # is -lr trace. Both gradients are the closed form at that step's params.
  q, params = _surrogate_and_params()
  lr, b = 0.05, 0.9
  optimizer = optax.sgd(lr, momentum=b)
  state = step_lib.VIState(params=params, opt_state=optimizer.init(params),
                           step=jnp.int32(0))
  step = jax.jit(step_lib.core_step(_objective(q, False), optimizer, False))
  k1, k2 = jax.random.split(jax.random.key(1))
  state1, _ = step(state, k1, None)
  g1 = _closed_form(q, params, k1, MU)
  state2, info2 = step(state1, k2, None)
  g2 = _closed_form(q, state1.params, k2, MU)
  for name in ("loc", "raw_scale"):
    _close(info2.grads[name], g2[name])
    want = (np.asarray(params[name]) - lr * g1[name] -
            lr * (g2[name] + b * g1[name]))
    _close(state2.params[name], want)
  assert int(state2.step) == 2


def test_core_step_learns_model_params_with_their_closed_form_gradient():
  q, params = _surrogate_and_params()
  mu0 = jnp.array([0., 0., 0.])
  lr, key = 0.2, jax.random.key(2)
  optimizer = optax.sgd(lr)
  trainable = step_lib.joint(params, {"mu": mu0}, True)
  state = step_lib.VIState(params=params, opt_state=optimizer.init(trainable),
                           step=jnp.int32(0), model_params={"mu": mu0})
  step = jax.jit(step_lib.core_step(_objective(q, True), optimizer, True))
  new, info = step(state, key, None)
  want = _closed_form(q, params, key, np.zeros(3))
  _close(info.loss, want["loss"])
  _close(info.grads["loc"], want["loc"])
  _close(info.grads["raw_scale"], want["raw_scale"])
  _close(info.model_grads["mu"], want["mu"])
  _close(info.model_params["mu"], np.zeros(3), rtol=0, atol=0)
  _close(new.model_params["mu"], -lr * want["mu"])
  _close(new.params["loc"], np.asarray(params["loc"]) - lr * want["loc"])


def test_core_step_under_vmap_over_keys_gives_each_keys_gradient():
  q, params = _surrogate_and_params()
  optimizer = optax.sgd(0.1)
  state = step_lib.VIState(params=params, opt_state=optimizer.init(params),
                           step=jnp.int32(0))
  step = step_lib.core_step(_objective(q, False), optimizer, False)
  keys = jax.random.split(jax.random.key(3), 3)
  _, info = jax.jit(jax.vmap(step, in_axes=(None, 0, None)))(state, keys, None)
  for i, key in enumerate(keys):
    want = _closed_form(q, params, key, MU)
    _close(info.loss[i], want["loss"])
    _close(info.grads["loc"][i], want["loc"])
    _close(info.grads["raw_scale"][i], want["raw_scale"])


@pytest.mark.parametrize("learn", [True, False])
def test_joint_is_what_the_optimizer_updates(learn):
  params, mp = {"loc": jnp.zeros(2)}, {"mu": jnp.ones(1)}
  got = step_lib.joint(params, mp, learn)
  if learn:
    assert got == (params, mp)
  else:
    assert got is params


def test_state_and_quantities_defaults_are_an_active_clean_state():
  state = step_lib.VIState(params={}, opt_state=(), step=jnp.int32(0))
  assert not bool(state.converged)
  assert int(state.num_nonfinite) == 0 == int(state.num_consecutive_nonfinite)
  assert state.model_params == () and state.data_state == ()
  assert state.criterion_state == ()
  tq = step_lib.TraceableQuantities(loss=jnp.zeros(()), params={}, grads={},
                                    step=jnp.int32(0))
  assert bool(tq.is_finite) and not bool(tq.has_converged)
