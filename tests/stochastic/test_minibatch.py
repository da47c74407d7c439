"""Minibatch SVI: without-replacement epochs, N/B scaling, 100k-row logistic
regression against scikit-learn's full-data MAP, bounded memory."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.linear_model import LogisticRegression

import vi_jax as vi
from vi_jax.stochastic import minibatch


@pytest.mark.parametrize("num_shards", [1, 2])
def test_each_epoch_visits_every_row_once(num_shards):
  n, b = 100, 10
  data = {"i": jnp.arange(n), "x": jnp.arange(n, dtype=jnp.float32) * 2.}
  state = minibatch.init_state(n, num_shards)
  draw = jax.jit(lambda s, k: minibatch.draw(s, k, data, b, num_shards))
  epochs = []
  for e in range(2):
    rows = []
    for t in range(n // b):
      batch, state = draw(state, jax.random.key(10 * e + t))
      np.testing.assert_array_equal(np.asarray(batch.data["x"]),
                                    2. * np.asarray(batch.data["i"]))
      assert float(batch.scale) == n / b
      idx = np.asarray(batch.data["i"])
      if num_shards == 2:  # half of every batch from each block of 50 rows
        assert np.all(idx[:5] < 50) and np.all(idx[5:] >= 50)
      rows.append(idx)
    rows = np.concatenate(rows)
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))
    epochs.append(rows)
  assert not np.array_equal(epochs[0], epochs[1])  # a fresh permutation


def _logistic_data(n, d, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  w = np.linspace(-1., 1., d).astype(np.float32)
  y = (rng.uniform(size=n) < 1 / (1 + np.exp(-x @ w))).astype(np.float32)
  return x, y


def _loglik(rows, w):
  x, y = rows
  logits = x @ w
  return jnp.sum(y * logits - jax.nn.softplus(logits))


TARGET = minibatch.scaled_log_prob(
    lambda w: distrax.Normal(0., 1.).log_prob(w).sum(), _loglik)


def test_minibatch_svi_100k_rows_matches_full_data_posterior_mean():
  n, d, b = 100_000, 5, 1000
  x, y = _logistic_data(n, d)
  # Full-data MAP under the N(0, 1) prior (C = 1, no intercept); with 100k
  # rows the posterior mean equals it to O(1/N), well below the tolerance.
  sk = LogisticRegression(C=1., fit_intercept=False, tol=1e-10,
                          max_iter=1000).fit(x, y)
  w_map = sk.coef_[0]
  # Laplace posterior sds from the full data.
  p = 1 / (1 + np.exp(-x @ w_map))
  sd = np.sqrt(np.diag(np.linalg.inv(
      (x * (p * (1 - p))[:, None]).T @ x + np.eye(d))))
  s = vi.surrogates.mean_field_normal((d,))
  r = vi.fit(TARGET, s, optax.adam(optax.exponential_decay(0.05, 2000, 0.02)),
             2000, key=jax.random.key(0), sample_size=4,
             data=(jnp.asarray(x), jnp.asarray(y)), batch_size=b)
  loc = np.asarray(r.params["loc"])
  assert np.all(np.abs(loc - w_map) < 1.5 * sd), (loc, w_map, sd)
  # The likelihood is scaled by N/B: the loss is on the full-data scale.
  full_neg_log_lik = -float(_loglik((x, y), jnp.asarray(w_map)))
  assert abs(float(r.trace[-100:].mean()) / full_neg_log_lik - 1) < 0.02


def _float_outvars_with_rows(jaxpr, n, found):
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      aval = getattr(v, "aval", None)
      if (aval is not None and hasattr(aval, "shape") and n in aval.shape and
          jnp.issubdtype(aval.dtype, jnp.floating)):
        found.append((str(eqn.primitive), aval.shape))
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _float_outvars_with_rows(inner, n, found)
  return found


def _loop_bodies(jaxpr):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      yield eqn.params["jaxpr"].jaxpr
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _loop_bodies(inner)


def test_no_per_step_copy_of_the_data():
  n, d, b = 100_000, 5, 1000
  x, y = _logistic_data(n, d)
  s = vi.surrogates.mean_field_normal((d,))
  jaxpr = jax.make_jaxpr(lambda k, data: vi.fit(
      TARGET, s, optax.adam(0.01), 10, key=k, data=data, batch_size=b).params)(
          jax.random.key(0), (jnp.asarray(x), jnp.asarray(y)))
  bodies = list(_loop_bodies(jaxpr.jaxpr))
  assert bodies
  for body in bodies:
    # Inside the step nothing float has N rows: only [B] rows are gathered
    # (the O(N) int32 permutation is the only N-sized value).
    assert _float_outvars_with_rows(body, n, []) == []
  # Positive control: a target that touches all rows does show up.
  full = jax.make_jaxpr(lambda k, data: vi.fit(
      lambda batch, w: _loglik(batch.data, w) + 2. * batch.data[0].sum(), s,
      optax.adam(0.01), 10, key=k, data=data).params)(
          jax.random.key(0), (jnp.asarray(x), jnp.asarray(y)))
  assert any(_float_outvars_with_rows(body, n, [])
             for body in _loop_bodies(full.jaxpr))


def test_bad_minibatch_input():
  s = vi.surrogates.mean_field_normal((2,))
  data = (jnp.zeros((10, 2)), jnp.zeros((10,)))
  target = lambda batch, w: -jnp.sum(w**2)
  with pytest.raises(ValueError, match="batch_size"):
    vi.fit(target, s, optax.adam(0.1), 5, key=jax.random.key(0), data=data,
           batch_size=11)
  with pytest.raises(ValueError, match="leading"):
    vi.fit(target, s, optax.adam(0.1), 5, key=jax.random.key(0),
           data=(jnp.zeros((10, 2)), jnp.zeros((9,))), batch_size=2)
  with pytest.raises(ValueError, match="num_shards"):
    vi.fit(target, s, optax.adam(0.1), 5, key=jax.random.key(0), data=data,
           batch_size=5, num_shards=3)
  with pytest.raises(ValueError, match="without data"):
    vi.fit(lambda w: -jnp.sum(w**2), s, optax.adam(0.1), 5,
           key=jax.random.key(0), batch_size=5)


# The convergence recipe's pieces, re-exported as vi.minibatch. -----------


def test_recipe_pieces_reject_bad_input_naming_it():
  lik = lambda rows, mu: jnp.sum(rows * mu)
  with pytest.raises(TypeError, match="anchor"):
    minibatch.taylor_control_variate(jnp.sin, lik, jnp.ones(4), jnp.int32(1))
  with pytest.raises(TypeError, match="log_likelihood_fn"):
    minibatch.taylor_control_variate(jnp.sin, None, jnp.ones(4), 1.)
  with pytest.raises(TypeError, match="mean_fn"):
    minibatch.antithetic(vi.surrogates.mean_field_normal(()), None)
  with pytest.raises(TypeError, match="surrogate"):
    minibatch.antithetic(object(), lambda p: p)
  with pytest.raises(TypeError, match="optimizer"):
    minibatch.tail_averaged(0.1, start=3)
