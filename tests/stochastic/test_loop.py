"""The chunked scan (vi_jax.stochastic.loop): a fit run as chunks of at most 64 steps
(with a remainder, NaN losses at chosen steps, an early stop, under vmap and
grad) equals the guarded step run one step at a time from Python
(`vi.build`'s init/step pair)."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vi_jax as vi
from vi_jax.stochastic import loop


def normal_normal_log_prob(z, x=5.):
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(x)


def _step_keys(key, num_steps):
  # fit's documented key schedule: key of iteration t = fold_in(split(key)[1], t).
  loop_key = jax.random.split(key)[1]
  return jax.vmap(lambda t: jax.random.fold_in(loop_key, t))(
      jnp.arange(num_steps))


def _loss_nan_at(key, num_steps, bad_steps):
  """-ELBO that is NaN at the steps `bad_steps` (found by their key)."""
  bad = jax.random.key_data(_step_keys(key, num_steps)[np.asarray(bad_steps)])
  base = vi.losses.negative_elbo()

  def loss(target, surrogate, params, k, sample_size):
    hit = jnp.any(jnp.all(jax.random.key_data(k) == bad, axis=-1))
    value = base(target, surrogate, params, k, sample_size)
    return value + jnp.where(hit, jnp.nan, 0.)

  return loss


def _reference(loss, key, num_steps, max_consecutive_nonfinite):
  """The guarded step, one step at a time from Python."""
  alg = vi.build(normal_normal_log_prob, vi.surrogates.mean_field_normal(()),
                 optax.adam(0.05), sample_size=2, loss=loss,
                 max_consecutive_nonfinite=max_consecutive_nonfinite)
  state, step = alg.init(jax.random.split(key)[0]), jax.jit(alg.step)
  losses, skipped, active = [], [], []
  for k in _step_keys(key, num_steps):
    live = bool(state.num_consecutive_nonfinite < (
        max_consecutive_nonfinite or num_steps + 1))
    state, info = step(state, k)
    losses.append(float(info.loss))
    active.append(live)
    skipped.append(live and not bool(info.is_finite))
  taken = int(np.sum(active))
  trace = np.asarray(losses)
  trace[taken:] = trace[taken - 1]  # TFP's padding
  return state, trace, np.asarray(skipped), taken


def _fit(loss, key, num_steps, max_consecutive_nonfinite):
  return vi.fit(normal_normal_log_prob, vi.surrogates.mean_field_normal(()),
                optax.adam(0.05), num_steps, key=key, sample_size=2, loss=loss,
                max_consecutive_nonfinite=max_consecutive_nonfinite)


def _assert_same(r, ref):
  # Floats to rounding: XLA compiles a step inside a scan and alone
  # differently (the unchunked scan differed from this reference by the
  # same 1e-6).
  state, trace, skipped, taken = ref
  for got, want in zip(jax.tree_util.tree_leaves(r.state),
                       jax.tree_util.tree_leaves(state)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                               atol=1e-6)
  np.testing.assert_allclose(np.asarray(r.trace), trace, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(r.skipped), skipped)
  assert int(r.num_steps_taken) == taken
  assert int(r.num_nonfinite) == int(skipped.sum())


@pytest.mark.parametrize("num_steps, bad_steps, max_nonfinite", [
    (200, [3, 4, 120, 199], 10),  # chunks of 50, skips in some
    (211, [1, 64, 65, 66, 210], None),  # prime: chunks of 64 + a remainder
    (150, [40, 41, 42] + list(range(60, 150)), 5),  # stops; inactive chunks
])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_equals_the_guarded_step_one_at_a_time(num_steps, bad_steps,
                                                   max_nonfinite):
  key = jax.random.key(3)
  loss = _loss_nan_at(key, num_steps, bad_steps)
  ref = _reference(loss, key, num_steps, max_nonfinite)
  assert ref[2].any()  # positive control: the guard did reject steps
  _assert_same(_fit(loss, key, num_steps, max_nonfinite), ref)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_vmapped_fits_equal_their_own_runs():
  # Under vmap the guard's conditional becomes a select; the member with
  # non-finite steps skips them and the clean member is unaffected.
  num_steps, keys = 120, jax.random.split(jax.random.key(4), 2)
  loss = _loss_nan_at(keys[0], num_steps, [30, 31])
  batched = jax.jit(jax.vmap(lambda k: _fit(loss, k, num_steps, 10)))(keys)
  for i, key in enumerate(keys):
    ref = _reference(loss, key, num_steps, 10)
    _assert_same(jax.tree_util.tree_map(lambda x, i=i: x[i], batched), ref)
  assert int(batched.num_nonfinite[0]) == 2
  assert int(batched.num_nonfinite[1]) == 0


def test_grad_through_chunks_with_a_skipped_step_matches_closed_form():
  # SGD on -(z - x)^2 / 2 from z = 0 with lr 0.1: each accepted step maps
  # z -> z + 0.1 (x - z), so after n accepted steps d z / d x = 1 - 0.9^n.
  # 150 steps run as 3 chunks of 50; step 70 is rejected.
  num_steps, key = 150, jax.random.key(5)
  loss = _loss_nan_at(key, num_steps, [70])

  def final_point(x):
    r = vi.fit(lambda z: -0.5 * (z - x)**2, vi.surrogates.delta(()),
               optax.sgd(0.1), num_steps, key=key, loss=loss)
    return r.params["loc"][0]

  np.testing.assert_allclose(float(jax.grad(final_point)(3.)),
                             1 - 0.9**(num_steps - 1), rtol=1e-5)


@pytest.mark.parametrize("num_steps, every, limit, want", [
    (10000, None, 64, 50),  # a divisor: no remainder
    (20, None, 64, 20),  # one chunk
    (211, None, 64, 64),  # prime: chunks of 64 and a remainder
    (400, 100, 64, 50),  # divides the bar's granularity too
    (5000, 10, 64, 10),
    (10000, None, 5, 5),  # wide trace rows: short chunks
])
def test_chunk_length(num_steps, every, limit, want):
  assert loop._chunk_length(num_steps, every, limit) == want
