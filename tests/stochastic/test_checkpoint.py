"""Checkpoint and resume: N + M steps equal one N+M run bit for bit."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vi_jax as vi
from vi_jax.stochastic import checkpoint
from vi_jax.stochastic import convergence


def normal_normal_log_prob(z, x=5.):
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(x)


def _assert_trees_equal(a, b):
  sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
  assert sa == sb
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _logistic_data(n=600, d=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  y = (rng.uniform(size=n) < 1 / (1 + np.exp(-x @ np.ones(d)))).astype(
      np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def _logistic_target():
  return vi.minibatch.scaled_log_prob(
      lambda w: distrax.Normal(0., 1.).log_prob(w).sum(),
      lambda rows, w: jnp.sum(rows[1] * (rows[0] @ w) -
                              jax.nn.softplus(rows[0] @ w)))


@pytest.mark.parametrize("case,fmt", [("plain", "npz"),
                                      ("minibatch_criterion", "npz"),
                                      ("minibatch_criterion", "orbax")])
def test_resume_n_then_m_is_bit_identical(tmp_path, case, fmt):
  key = jax.random.key(3)
  opt = optax.adam(optax.exponential_decay(0.1, 300, 0.1))
  if case == "plain":
    target, s, kw = normal_normal_log_prob, vi.surrogates.mean_field_normal(
        ()), dict(sample_size=4)
  else:
    target, s = _logistic_target(), vi.surrogates.mean_field_normal((3,))
    # A criterion that never fires still carries state across the split; the
    # minibatch permutation (an epoch is 600 / 64 = 9 steps) does too.
    kw = dict(sample_size=2, data=_logistic_data(), batch_size=64,
              convergence_criterion=convergence.loss_not_decreasing(
                  atol=-1e9, min_num_steps=10_000))
  n, m = 130, 170
  whole = vi.fit(target, s, opt, n + m, key=key, **kw)
  first = vi.fit(target, s, opt, n, key=key, **kw)
  path = tmp_path / ("state.npz" if fmt == "npz" else "state")
  checkpoint.save(path, first.state, format=fmt)
  loaded = checkpoint.load(path, like=jax.eval_shape(lambda: first.state),
                           format=fmt)
  _assert_trees_equal(loaded, first.state)
  second = vi.fit(target, s, opt, m, key=key, init_state=loaded, **kw)
  _assert_trees_equal(second.state, whole.state)
  _assert_trees_equal(second.params, whole.params)
  # The params and whole state are bit-identical; the traced loss values come
  # from differently fused programs and may differ in the last bit.
  np.testing.assert_allclose(
      np.concatenate([np.asarray(first.trace), np.asarray(second.trace)]),
      np.asarray(whole.trace), rtol=1e-6)
  assert int(second.state.step) == n + m


@pytest.mark.parametrize("fmt", ["npz", "orbax"])
def test_load_checks_structure_shapes_and_dtypes(tmp_path, fmt):
  s = vi.surrogates.mean_field_normal((2,))
  alg = vi.build(normal_normal_log_prob, s, optax.adam(0.1))
  state = alg.init(jax.random.key(0))
  path = tmp_path / ("s.npz" if fmt == "npz" else "s")
  checkpoint.save(path, state, format=fmt)
  other = vi.build(normal_normal_log_prob, s, optax.sgd(0.1)).init(
      jax.random.key(0))
  with pytest.raises(ValueError, match="tree structure"):
    checkpoint.load(path, like=other, format=fmt)
  bigger = vi.build(normal_normal_log_prob, vi.surrogates.mean_field_normal(
      (3,)), optax.adam(0.1)).init(jax.random.key(0))
  with pytest.raises(ValueError, match="expects"):
    checkpoint.load(path, like=bigger, format=fmt)
  with pytest.raises(ValueError, match="format must be one of"):
    checkpoint.save(path, state, format="pickle")
  if fmt == "orbax":
    with pytest.raises(ValueError, match="not a vi_jax orbax checkpoint"):
      checkpoint.load(tmp_path / "missing", like=state, format="orbax")
    return
  np.save(tmp_path / "x.npy", np.zeros(2))
  np.savez(tmp_path / "bad.npz", a=np.zeros(2))
  with pytest.raises(ValueError, match="not a vi_jax checkpoint"):
    checkpoint.load(tmp_path / "bad.npz", like=state)
  with pytest.raises(ValueError, match="init_state"):
    vi.fit(normal_normal_log_prob, s, optax.sgd(0.1), 5,
           key=jax.random.key(0), init_state=state)


@pytest.mark.parametrize("fmt", ["npz", "orbax"])
def test_typed_key_leaves_round_trip(tmp_path, fmt):
  tree = {"key": jax.random.key(7), "keys": jax.random.split(
      jax.random.key(1), 3), "x": jnp.arange(3.)}
  path = tmp_path / ("t.npz" if fmt == "npz" else "t")
  checkpoint.save(path, tree, format=fmt)
  got = checkpoint.load(path, like=tree, format=fmt)
  for k in ("key", "keys"):
    assert jnp.issubdtype(got[k].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(got[k]),
                                  jax.random.key_data(tree[k]))
  # The restored keys draw the numbers the saved ones draw.
  np.testing.assert_array_equal(jax.random.normal(got["key"]),
                                jax.random.normal(tree["key"]))
  np.testing.assert_array_equal(got["x"], tree["x"])
