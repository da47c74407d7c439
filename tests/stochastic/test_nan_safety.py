"""NaN/inf safety: skipped steps, counts, early stop, error at initialization."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vi_jax as vi


def normal_normal_log_prob(z, x=5.):
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(x)


@jax.custom_jvp
def _poison_grad(x, flag):
  return x


@_poison_grad.defjvp
def _poison_grad_jvp(primals, tangents):
  x, flag = primals
  dx, _ = tangents
  return x, dx * jnp.where(flag, jnp.nan, 1.)


_SALT = 7


def _injected(key, rate):
  return jax.random.uniform(jax.random.fold_in(key, _SALT)) < rate


def nan_grad_loss(rate):
  """-ELBO whose gradient is NaN (loss finite) on a `rate` share of steps."""
  base = vi.losses.negative_elbo()

  def loss(target, surrogate, params, key, sample_size):
    value = base(target, surrogate, params, key, sample_size)
    return _poison_grad(value, _injected(key, rate))

  return loss


def _step_keys(key, num_steps):
  # fit's documented key schedule: key of iteration t = fold_in(split(key)[1], t).
  loop_key = jax.random.split(key)[1]
  return jax.vmap(lambda t: jax.random.fold_in(loop_key, t))(
      jnp.arange(num_steps))


@pytest.mark.parametrize("rate", [0.01, 0.1])
def test_injected_nan_gradients_are_skipped_and_posterior_recovered(rate):
  num_steps, key = 2000, jax.random.key(0)
  s = vi.surrogates.mean_field_normal(())
  r = vi.fit(normal_normal_log_prob, s,
             optax.adam(optax.exponential_decay(0.1, num_steps, 0.02)),
             num_steps, key=key, sample_size=16, loss=nan_grad_loss(rate),
             trace_fn=lambda tq: (tq.loss, tq.is_finite))
  injected = np.asarray(jax.vmap(lambda k: _injected(k, rate))(
      _step_keys(key, num_steps)))
  assert injected.sum() > 0.5 * rate * num_steps
  assert int(r.num_nonfinite) == int(injected.sum())
  np.testing.assert_array_equal(~np.asarray(r.trace[1]), injected)
  assert int(r.num_steps_taken) == num_steps and not bool(r.diverged)
  assert all(np.all(np.isfinite(np.asarray(l)))
             for l in jax.tree_util.tree_leaves(r.state))
  assert abs(float(r.params["loc"][0]) - 2.5) < 0.05
  assert abs(float(jax.nn.softplus(r.params["raw_scale"][0])) /
             (1 / np.sqrt(2)) - 1) < 0.05


def test_persistent_nonfinite_stops_with_a_report():
  # The target is NaN for z > 1: once the surrogate's draws cross 1 every
  # step is non-finite and the params stop moving.
  def target(z):
    return jnp.where(z > 1., jnp.nan, normal_normal_log_prob(z))

  s = vi.surrogates.delta(())
  with pytest.warns(RuntimeWarning, match="5 consecutive steps had a non-finite"):
    r = vi.fit(target, s, optax.sgd(0.05), 500, key=jax.random.key(0),
               max_consecutive_nonfinite=5)
  losses = np.asarray(r.trace)
  first_bad = int(np.argmax(~np.isfinite(losses)))
  assert bool(r.diverged) and int(r.num_steps_taken) == first_bad + 5
  assert int(r.num_nonfinite) == 5
  assert np.all(np.asarray(r.trace_mask) == (np.arange(500) < first_bad + 5))
  loc = float(r.params["loc"][0])
  assert np.isfinite(loc) and loc > 1.
  # The params are those of the last finite step: replay plain SGD on the
  # closed-form gradient d/dz log p = -z + (5 - z) = 5 - 2z.
  z = 0.
  for _ in range(first_bad):
    z = z + 0.05 * (5. - 2. * z)
  np.testing.assert_allclose(loc, z, rtol=1e-5)


def test_nonfinite_loss_at_init_raises_before_the_loop():
  s = vi.surrogates.mean_field_normal(())
  with pytest.raises(FloatingPointError, match="initial params"):
    vi.fit(lambda z: jnp.log(-jnp.abs(z) - 1.), s, optax.adam(0.1), 100,
           key=jax.random.key(0))
  with pytest.raises(FloatingPointError, match="not finite"):
    vi.fit(normal_normal_log_prob, s, optax.adam(0.1), 100,
           key=jax.random.key(0),
           init_params={"loc": jnp.array([jnp.inf]),
                        "raw_scale": jnp.zeros(1)})


def test_default_path_has_no_callback_and_grad_flows():
  s = vi.surrogates.delta(())

  def final_point(x):
    r = vi.fit(lambda z: -0.5 * (z - x)**2, s, optax.sgd(0.1), 20,
               key=jax.random.key(0))
    return r.params["loc"][0]

  # NaN safety keeps the loop differentiable: d z_T / d x = 1 - (1 - lr)^T.
  np.testing.assert_allclose(float(jax.grad(final_point)(3.)), 1 - 0.9**20,
                             rtol=1e-5)
  text = str(jax.make_jaxpr(final_point)(3.))
  assert "callback" not in text and "is_finite" in text


def test_nonfinite_update_with_finite_gradients_is_skipped():
  # optax.adam(nan): loss and gradients are finite, the update is NaN. The
  # guard checks the updated params too, so no step is taken and the
  # returned params are the initial ones (finite), as the warning says.
  s = vi.surrogates.mean_field_normal(())
  key = jax.random.key(0)
  with pytest.warns(RuntimeWarning, match="last finite ones"):
    r = vi.fit(normal_normal_log_prob, s, optax.adam(jnp.nan), 100, key=key,
               max_consecutive_nonfinite=5)
  init = s.init(jax.random.split(key)[0])
  for got, want in zip(jax.tree_util.tree_leaves(r.params),
                       jax.tree_util.tree_leaves(init)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
  assert bool(r.diverged) and int(r.num_nonfinite) == 5
  np.testing.assert_array_equal(np.asarray(r.skipped), np.arange(100) < 5)


def test_skipped_steps_from_nonfinite_data_rows_are_reported():
  # 2 of 40 rows are NaN; with 4 rows per step (10 steps an epoch) each
  # epoch has 2 or fewer steps whose minibatch holds a NaN row: those
  # steps are skipped, counted, marked in FitResult.skipped and warned of.
  data = jnp.linspace(4., 6., 40).at[jnp.array([3, 17])].set(jnp.nan)
  target = vi.minibatch.scaled_log_prob(
      distrax.Normal(0., 10.).log_prob,
      lambda rows, z: jnp.sum(distrax.Normal(z, 1.).log_prob(rows)))
  s = vi.surrogates.mean_field_normal(())
  with pytest.warns(RuntimeWarning, match=r"skipped.*data holds 2 rows"):
    r = vi.fit(target, s, optax.adam(0.05), 500, key=jax.random.key(2),
               data=data, batch_size=4, max_consecutive_nonfinite=None)
  skipped = np.asarray(r.skipped)
  np.testing.assert_array_equal(skipped, ~np.isfinite(np.asarray(r.trace)))
  assert 0 < skipped.sum() == int(r.num_nonfinite) <= 2 * 50
  assert not bool(r.diverged)
  assert np.isfinite(float(r.params["loc"][0]))


def test_nonfinite_data_at_init_is_named():
  data = jnp.ones(10).at[0].set(jnp.nan)
  target = vi.minibatch.scaled_log_prob(
      distrax.Normal(0., 10.).log_prob,
      lambda rows, z: jnp.sum(distrax.Normal(z, 1.).log_prob(rows)))
  s = vi.surrogates.mean_field_normal(())
  with pytest.raises(FloatingPointError, match="data holds 1 rows"):
    vi.fit(target, s, optax.adam(0.05), 10, key=jax.random.key(0), data=data)

