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


# The convergence recipe's pieces, each against a closed form. -------------


def _logistic(rows, w, b):
  logits = rows["x"] @ w + b
  return jnp.sum(rows["y"] * logits - jax.nn.softplus(logits))


def _logistic_prior(w, b):
  return distrax.Normal(0., 1.).log_prob(w).sum() + distrax.Normal(
      0., 1.).log_prob(b)


def _cv_data(n=40, d=3):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, d)).astype(np.float32)
  y = (rng.uniform(size=n) < 0.5).astype(np.float32)
  return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def _block(data, i, b):
  return minibatch.Batch(jax.tree_util.tree_map(lambda v: v[i * b:(i + 1) * b],
                                                data), jnp.float32(40 / b))


def test_taylor_control_variate_is_unbiased_and_exact_at_the_anchor():
  data, b = _cv_data(), 8
  anchor = {"w": jnp.array([0.3, -0.2, 0.1]), "b": jnp.array(0.4)}
  target = minibatch.taylor_control_variate(_logistic_prior, _logistic, data,
                                            anchor)

  def full(z):  # the full-data log density
    return _logistic_prior(**z) + _logistic(data, **z)

  z = {"w": jnp.array([1., 0.5, -1.]), "b": jnp.array(-0.7)}
  # Over a partition of the rows into batches, the scaled batch terms sum to
  # the full-data ones: the mean over the 5 blocks is the full log density.
  mean = np.mean([float(target(_block(data, i, b), **z)) for i in range(5)])
  np.testing.assert_allclose(mean, float(full(z)), rtol=1e-5)
  # At the anchor every batch gives the full value and gradient (no noise),
  # unlike the plain scaled minibatch target (the control).
  plain = minibatch.scaled_log_prob(_logistic_prior, _logistic)
  full_grad = jax.grad(full)(anchor)
  for i in range(5):
    batch = _block(data, i, b)
    np.testing.assert_allclose(float(target(batch, **anchor)),
                               float(full(anchor)), rtol=1e-5)
    grad = jax.grad(lambda a, batch=batch: target(batch, **a))(anchor)
    np.testing.assert_allclose(grad["w"], full_grad["w"], atol=1e-4)
    np.testing.assert_allclose(grad["b"], full_grad["b"], atol=1e-4)
  plain_grad = jax.grad(lambda a: plain(_block(data, 0, b), **a))(anchor)
  assert np.max(np.abs(plain_grad["w"] - full_grad["w"])) > 0.1


def test_taylor_control_variate_is_exact_on_a_gaussian_location_model():
  # l(rows; mu) = sum log N(y_i; mu, 1): the Taylor remainder is
  # -B (mu - a)^2 / 2 whatever the rows, so every batch gives the full log
  # density at every mu.
  y = jnp.asarray(np.random.default_rng(1).normal(2., 1., 40), jnp.float32)
  prior = distrax.Normal(0., 3.).log_prob
  lik = lambda rows, mu: jnp.sum(distrax.Normal(mu, 1.).log_prob(rows))
  target = minibatch.taylor_control_variate(prior, lik, y, jnp.float32(1.5))
  full = lambda mu: prior(mu) + lik(y, mu)
  for i, mu in zip(range(5), (-1., 0., 1.9, 3., 6.)):
    batch = minibatch.Batch(y[i * 8:(i + 1) * 8], jnp.float32(5.))
    np.testing.assert_allclose(float(target(batch, jnp.float32(mu))),
                               float(full(mu)), rtol=1e-5)
    np.testing.assert_allclose(
        float(jax.grad(lambda m, batch=batch: target(batch, m))(
            jnp.float32(mu))), float(jax.grad(full)(mu)), rtol=1e-4,
        atol=1e-3)


def _elbo_loc_grad(surrogate, params, mu, key, sample_size):
  def loss(p):
    z, log_q = surrogate.sample_and_log_prob(p, key, sample_size)
    log_p = distrax.MultivariateNormalDiag(mu).log_prob(z)
    return -jnp.mean(log_p - log_q)
  return jax.grad(loss)(params)["loc"]


def test_antithetic_draws_are_mirrored_and_exact_for_a_gaussian_target():
  q = vi.surrogates.mean_field_normal((3,))
  params = {"loc": jnp.array([1., -2., 0.5]),
            "raw_scale": jnp.array([0.3, -0.4, 1.])}
  anti = minibatch.antithetic(q, lambda p: p["loc"])
  z, log_q = anti.sample_and_log_prob(params, jax.random.key(0), 4)
  np.testing.assert_allclose(z[:2] + z[2:], 2 * params["loc"] + 0 * z[:2],
                             atol=1e-5)
  np.testing.assert_allclose(log_q, q.log_prob(params, z), rtol=1e-5)
  z3, log_q3 = anti.sample_and_log_prob(params, jax.random.key(0), 3)
  assert z3.shape == (3, 3) and log_q3.shape == (3,)
  # For a target N(mu, I) the reparameterization gradient of -ELBO in the
  # mean is loc - mu; a mirrored pair gives it exactly for every key, plain
  # draws do not (the control).
  mu = jnp.array([0., 1., 2.])
  for seed in range(3):
    key = jax.random.key(seed)
    np.testing.assert_allclose(_elbo_loc_grad(anti, params, mu, key, 2),
                               params["loc"] - mu, atol=1e-5)
  plain = _elbo_loc_grad(q, params, mu, jax.random.key(0), 2)
  assert np.max(np.abs(plain - (params["loc"] - mu))) > 1e-2


def test_tail_averaged_is_the_mean_of_the_last_iterates():
  # SGD(0.1) on |p - c|^2 / 2: p_t = c + 0.9^t (p_0 - c) in closed form.
  c, p0, steps, start = jnp.array([1., -1.]), jnp.array([3., 2.]), 20, 12
  opt = minibatch.tail_averaged(optax.sgd(0.1), start=start)
  p, state = p0, opt.init(p0)
  for _ in range(steps):
    updates, state = opt.update(p - c, state, p)
    p = optax.apply_updates(p, updates)
  t = np.arange(start + 1, steps + 1)
  expected = np.asarray(c) + np.mean(0.9 ** t) * np.asarray(p0 - c)
  np.testing.assert_allclose(minibatch.averaged_params(state), expected,
                             rtol=1e-5)
  np.testing.assert_allclose(p, c + 0.9 ** steps * (p0 - c), rtol=1e-5)
  with pytest.raises(ValueError, match="tail_averaged"):
    minibatch.averaged_params(optax.sgd(0.1).init(p0))
  with pytest.raises(ValueError, match="start"):
    minibatch.tail_averaged(optax.sgd(0.1), start=-1)


def test_tail_averaged_inside_fit_averages_the_traced_params():
  q = vi.surrogates.mean_field_normal(())
  target = lambda z: distrax.Normal(1., 0.5).log_prob(z)
  r = vi.fit(target, q, minibatch.tail_averaged(optax.sgd(0.05), start=150),
             200, key=jax.random.key(0), sample_size=2,
             trace_fn=lambda tq: tq.params, progress_bar=False)
  # The trace holds the params each step started from; the average is over
  # the params after updates 151..200.
  averaged = minibatch.averaged_params(r.state.opt_state)
  for name in ("loc", "raw_scale"):
    after = np.concatenate([r.trace[name][151:], r.params[name][None]])
    np.testing.assert_allclose(averaged[name], np.mean(after, axis=0),
                               rtol=1e-5)


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
