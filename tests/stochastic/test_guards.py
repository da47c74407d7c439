"""The non-finite guard (vi_jax.stochastic.guards): a guarded step on
`0.5 |x - 3|^2` with SGD with momentum, NaN injected through the step's batch,
against the same SGD replayed in numpy with the rejected steps left out; the
host-side reports against the counts and rows they were given."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vi_jax.stochastic import guards
from vi_jax.stochastic import step as step_lib

LR, MOMENTUM, TARGET = 0.1, 0.5, 3.
OPTIMIZER = optax.sgd(LR, momentum=MOMENTUM)
X0 = np.array([0., 1.], np.float32)


@jax.custom_jvp
def _poison_grad(x, flag):
  return x


@_poison_grad.defjvp
def _poison_grad_jvp(primals, tangents):
  x, flag = primals
  dx, _ = tangents
  return x, dx * jnp.where(flag, jnp.nan, 1.)


def _objective(params, key, batch):
  """0.5 |x - 3|^2; batch["loss"]: NaN loss and gradient; batch["grad"]:
  NaN gradient only; batch["value"]: NaN loss only (finite gradient)."""
  del key
  value = 0.5 * jnp.sum((params["x"] - TARGET) ** 2)
  value = _poison_grad(value, batch["grad"])
  value = value + jnp.where(batch["value"], jnp.nan, 0.)
  return value * jnp.where(batch["loss"], jnp.nan, 1.)


def _inner(converge_on_flag=False):
  core = step_lib.core_step(_objective, OPTIMIZER, False)
  if not converge_on_flag:
    return core

  def step(state, key, batch):  # a criterion that fires when told to
    new, info = core(state, key, batch)
    return new, info._replace(has_converged=batch["converge"])
  return step


def _batch(loss=False, grad=False, value=False, converge=False):
  return {"loss": jnp.asarray(loss), "grad": jnp.asarray(grad),
          "value": jnp.asarray(value), "converge": jnp.asarray(converge)}


def _init():
  params = {"x": jnp.asarray(X0)}
  return step_lib.VIState(params=params, opt_state=OPTIMIZER.init(params),
                          step=jnp.int32(0), converged=jnp.zeros((), bool),
                          num_nonfinite=jnp.int32(0),
                          num_consecutive_nonfinite=jnp.int32(0))


def _guarded(max_nonfinite=10, skip=True, gated=False):
  return jax.jit(guards.with_nonfinite_guard(
      _inner(gated), skip_nonfinite=skip, max_consecutive_nonfinite=max_nonfinite,
      gated=gated))


def _replay(bad, max_nonfinite):
  """numpy SGD with momentum over the accepted steps: `(x, trace, skipped,
  num_nonfinite, consecutive)`; inactive after `max_nonfinite` rejections."""
  x, trace = X0.astype(np.float64), np.zeros(2)
  skipped, consecutive = [], 0
  for b in bad:
    active = max_nonfinite is None or consecutive < max_nonfinite
    if active and not b:
      trace = (x - TARGET) + MOMENTUM * trace
      x = x - LR * trace
      consecutive = 0
    elif active:
      consecutive += 1
    skipped.append(active and b)
  return x, trace, np.asarray(skipped), int(np.sum(skipped)), consecutive


def _momentum(state):
  return np.asarray(state.opt_state[0].trace["x"])


def test_nan_loss_step_keeps_params_and_optimizer_state_and_counts_one():
  step, key = _guarded(), jax.random.key(0)
  s1, _ = step(_init(), key, _batch())  # a finite step: momentum is non-zero
  s2, info = step(s1, key, _batch(loss=True))
  assert not bool(info.is_finite)
  np.testing.assert_array_equal(np.asarray(s2.params["x"]),
                                np.asarray(s1.params["x"]))
  np.testing.assert_array_equal(_momentum(s2), _momentum(s1))
  assert int(s2.num_nonfinite) == 1 and int(s2.num_consecutive_nonfinite) == 1
  assert int(s2.step) == 2  # the step (and so the key) advances
  # A finite step resets the consecutive count, not the total, and moves on
  # from the kept state as if the rejected step had not been.
  s3, info = step(s2, key, _batch())
  assert bool(info.is_finite)
  assert int(s3.num_nonfinite) == 1 and int(s3.num_consecutive_nonfinite) == 0
  x, trace, *_ = _replay([False, True, False], 10)
  np.testing.assert_allclose(np.asarray(s3.params["x"]), x, rtol=1e-6)
  np.testing.assert_allclose(_momentum(s3), trace, rtol=1e-6)


@pytest.mark.parametrize("which", ["grad", "value"])
def test_nan_in_the_gradient_alone_or_the_loss_alone_is_rejected(which):
  step, key = _guarded(), jax.random.key(0)
  s1, _ = step(_init(), key, _batch())
  s2, info = step(s1, key, _batch(**{which: True}))
  assert not bool(info.is_finite)
  assert np.isfinite(float(info.loss)) == (which == "grad")
  assert np.isnan(np.asarray(info.grads["x"])).all() == (which == "grad")
  np.testing.assert_array_equal(np.asarray(s2.params["x"]),
                                np.asarray(s1.params["x"]))
  assert int(s2.num_nonfinite) == 1


def test_nonfinite_update_from_finite_gradients_is_rejected():
  # The step size is NaN from the optimizer's second update on: loss and
  # gradient stay finite, the updated params do not. The guard keeps the
  # optimizer's count too, so every later update is NaN and rejected.
  lr = lambda count: jnp.where(count >= 1, jnp.nan, LR)
  optimizer = optax.sgd(lr)
  step = jax.jit(guards.with_nonfinite_guard(
      step_lib.core_step(_objective, optimizer, False), skip_nonfinite=True,
      max_consecutive_nonfinite=3, gated=False))
  params = {"x": jnp.asarray(X0)}
  state = step_lib.VIState(params=params, opt_state=optimizer.init(params),
                           step=jnp.int32(0))
  infos = []
  for _ in range(5):
    state, info = step(state, jax.random.key(0), _batch())
    infos.append(bool(info.is_finite))
  assert infos == [True, False, False, False, False]
  np.testing.assert_allclose(np.asarray(state.params["x"]),
                             X0 - LR * (X0 - TARGET), rtol=1e-6)
  assert int(state.num_nonfinite) == 3  # inactive after the third
  assert not bool(guards.is_active(state, 3))


@pytest.mark.parametrize("max_nonfinite", [None, 3])
def test_guarded_steps_equal_sgd_replayed_over_the_accepted_steps(
    max_nonfinite):
  bad = [False, True, False, False, True, True, False, True, False, False,
         True, True, True, False, False]
  step, key = _guarded(max_nonfinite), jax.random.key(0)
  state, finite = _init(), []
  for b in bad:
    state, info = step(state, key, _batch(loss=b))
    finite.append(bool(info.is_finite))
  x, trace, skipped, count, consecutive = _replay(bad, max_nonfinite)
  np.testing.assert_allclose(np.asarray(state.params["x"]), x, rtol=1e-5)
  np.testing.assert_allclose(_momentum(state), trace, rtol=1e-5)
  assert int(state.num_nonfinite) == count
  assert int(state.num_consecutive_nonfinite) == consecutive
  assert int(state.step) == len(bad)
  np.testing.assert_array_equal(~np.asarray(finite), np.asarray(bad))
  if max_nonfinite is None:
    assert count == sum(bad) and bool(guards.is_active(state, None))
  else:  # stopped at the third of three consecutive NaNs (step 12)
    assert count == 7 and not skipped[13:].any()
    assert not bool(guards.is_active(state, max_nonfinite))


def test_max_consecutive_nonfinite_stops_and_the_report_says_it_diverged():
  max_nonfinite, step, key = 3, _guarded(3), jax.random.key(0)
  bad = [False, False, True, True, True, False, False]
  state, skipped, active = _init(), [], []
  for b in bad:
    live = bool(guards.is_active(state, max_nonfinite))
    state, info = step(state, key, _batch(loss=b))
    active.append(live)
    skipped.append(live and not bool(info.is_finite))
  # After the third NaN the state is inactive: the finite steps after it
  # change nothing but the step count.
  assert active == [True] * 5 + [False] * 2
  x, *_ = _replay(bad[:5], max_nonfinite)
  np.testing.assert_allclose(np.asarray(state.params["x"]), x, rtol=1e-6)
  assert int(state.num_nonfinite) == 3
  diverged = int(state.num_consecutive_nonfinite) >= max_nonfinite
  assert diverged
  text = guards.skip_report(state.num_nonfinite, np.asarray(skipped), diverged,
                            sum(active), max_nonfinite, None)
  assert text.startswith("vi.fit stopped at step 5: 3 consecutive steps")
  assert "in all 3 steps" in text and "the first at step 2" in text
  assert "last finite ones" in text


def test_without_skipping_a_nan_update_is_taken():
  # skip_nonfinite=False and no stop: the guard returns the inner step's
  # proposal as it is (NaN params) and counts nothing.
  step, key = _guarded(max_nonfinite=None, skip=False), jax.random.key(0)
  state, info = step(_init(), key, _batch(loss=True))
  assert np.isnan(np.asarray(state.params["x"])).all()
  assert int(state.num_nonfinite) == 0 and bool(info.is_finite)


def test_a_criterion_that_fires_stops_the_state_only_on_a_finite_update():
  step, key = _guarded(gated=True), jax.random.key(0)
  s1, _ = step(_init(), key, _batch())
  # Fired on a rejected (NaN) update: not converged, nothing changes.
  s2, info = step(s1, key, _batch(loss=True, converge=True))
  assert not bool(info.has_converged) and not bool(s2.converged)
  np.testing.assert_array_equal(np.asarray(s2.params["x"]),
                                np.asarray(s1.params["x"]))
  # Fired on an accepted update: that update is kept, then the state is
  # inactive and later steps leave it (and its counters) as it is.
  s3, info = step(s2, key, _batch(converge=True))
  assert bool(info.has_converged) and bool(s3.converged)
  assert not bool(guards.is_active(s3, 10))
  s4, _ = step(s3, key, _batch())
  s5, _ = step(s4, key, _batch(loss=True))
  x, trace, *_ = _replay([False, True, False], 10)
  for s in (s3, s4, s5):
    np.testing.assert_allclose(np.asarray(s.params["x"]), x, rtol=1e-6)
    np.testing.assert_allclose(_momentum(s), trace, rtol=1e-6)
  assert int(s5.num_nonfinite) == 1 and int(s5.num_consecutive_nonfinite) == 0


def test_vmapped_guard_rejects_only_the_members_with_nan():
  # Under vmap the guard's conditional is a select per member.
  guard = guards.with_nonfinite_guard(_inner(), skip_nonfinite=True,
                                      max_consecutive_nonfinite=10, gated=False)
  bad = np.array([[False, True, False, True], [False, False, False, False]])
  in_batch = {"loss": 0, "grad": None, "value": None, "converge": None}
  step = jax.jit(jax.vmap(guard, in_axes=(0, None, in_batch)))
  state = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), _init())
  for t in range(bad.shape[1]):
    state, _ = step(state, jax.random.key(0), _batch(loss=bad[:, t]))
  for i in range(2):
    x, trace, _, count, _ = _replay(list(bad[i]), 10)
    np.testing.assert_allclose(np.asarray(state.params["x"][i]), x, rtol=1e-6)
    assert int(state.num_nonfinite[i]) == count
  assert int(state.num_nonfinite[0]) == 2 and int(state.num_nonfinite[1]) == 0


@pytest.mark.parametrize("converged, consecutive, max_nonfinite, want", [
    (False, 0, None, True),
    (False, 99, None, True),
    (False, 2, 3, True),
    (False, 3, 3, False),
    (True, 0, 3, False),
    (True, 0, None, False),
])
def test_is_active(converged, consecutive, max_nonfinite, want):
  state = _init()._replace(converged=jnp.asarray(converged),
                           num_consecutive_nonfinite=jnp.int32(consecutive))
  assert bool(guards.is_active(state, max_nonfinite)) == want


def _data():
  x = np.ones((6, 2, 2), np.float32)
  x[1, 0, 1] = np.nan
  y = np.zeros(6, np.float32)
  y[4] = -np.inf
  return {"x": x, "y": y, "n": np.arange(6)}  # an int leaf is never bad


def test_nonfinite_rows_marks_rows_with_any_nonfinite_float():
  np.testing.assert_array_equal(guards.nonfinite_rows(_data()),
                                [False, True, False, False, True, False])
  clean = {"x": np.ones((3, 2)), "n": np.arange(3)}
  np.testing.assert_array_equal(guards.nonfinite_rows(clean), [False] * 3)


def test_data_note_names_the_count_and_first_bad_row():
  assert guards.data_note(None) == ""
  assert guards.data_note({"x": np.ones((3, 2))}) == " The data is finite."
  note = guards.data_note(_data())
  assert "holds 2 rows with non-finite values" in note
  assert "the first is row 1" in note


def test_skip_report_without_divergence():
  skipped = np.array([False, False, False, True, False, True, True])
  assert guards.skip_report(0, np.zeros(7, bool), False, 7, 10, None) == ""
  text = guards.skip_report(3, skipped, False, 7, 10, _data())
  assert text.startswith("vi.fit: 3 steps had a non-finite loss")
  assert "the first at step 3 of this fit" in text
  assert "the returned params are finite" in text and "stopped" not in text
  assert "holds 2 rows" in text  # the data note is appended


@pytest.mark.parametrize("where", [None, ("a", 0), ("b", 299), ("c", 5)])
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_all_finite_checks_every_leaf_of_every_group(where, bad):
  # 1 + 300 + 40 floats: the check reduces groups of at most 512 bytes.
  tree = {"a": jnp.ones(()), "b": jnp.arange(300.), "c": jnp.zeros((4, 10)),
          "n": jnp.arange(3)}
  if where is not None:
    name, i = where
    tree[name] = tree[name].reshape(-1).at[i].set(bad).reshape(
        tree[name].shape)
  want = all(np.isfinite(np.asarray(l)).all()
             for l in jax.tree_util.tree_leaves(tree))
  assert bool(jax.jit(guards.all_finite)(tree)) == want
