"""joint / point_mass (structured surrogates) and from_prior (automatic surrogates)."""

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfb, tfd = tfp.bijectors, tfp.distributions
S = vi.surrogates
KEY = jax.random.key(0)


def test_point_mass_is_the_observed_value():
  counts = jnp.array([3, 0, 7], jnp.int32)
  s = S.point_mass(counts)
  assert s.init(KEY) == ()
  z, log_q = jax.jit(s.sample_and_log_prob, static_argnums=2)((), KEY, 4)
  assert z.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(z), np.tile(np.asarray(counts), (4, 1)))
  np.testing.assert_array_equal(np.asarray(log_q), 0.)
  lp = s.log_prob((), jnp.array([[3, 0, 7], [3, 1, 7]]))
  np.testing.assert_array_equal(np.asarray(lp), [0., -np.inf])
  # distrax.Deterministic agrees.
  np.testing.assert_array_equal(
      np.asarray(s.distribution_fn(()).log_prob(jnp.array([[3, 0, 7], [3, 1, 7]]))),
      [0., -np.inf])


def test_joint_with_point_mass_normal_normal_posterior():
  # The seed's Normal-Normal model with the observation carried by the
  # surrogate (the GP-Poisson example's Deterministic trick): the target is
  # the joint log density of (z, y). Exact posterior: N(2.5, 1/sqrt(2)).
  def joint_log_prob(z, y):
    return tfd.Normal(0., 1.).log_prob(z) + tfd.Normal(z, 1.).log_prob(y)

  s = S.joint({"z": S.mean_field_normal(()), "y": S.point_mass(5.)})
  result = vi.fit(joint_log_prob, s,
                  optax.adam(optax.exponential_decay(0.1, 1000, 0.02)), 1000,
                  key=KEY, sample_size=16)
  z, _ = s.sample_and_log_prob(result.params, jax.random.key(1), 20000)
  np.testing.assert_array_equal(np.asarray(z["y"]), 5.)
  np.testing.assert_allclose(float(z["z"].mean()), 2.5, atol=0.03)
  np.testing.assert_allclose(float(z["z"].std()), 1 / np.sqrt(2), atol=0.03)


def test_joint_with_integer_counts_gamma_poisson():
  # rate ~ Gamma(2, 1), y_i ~ Poisson(rate), counts observed through a point
  # mass; the model is a TFP JointDistributionNamed whose log_prob is the
  # target (tfp.vi.fit_surrogate_posterior's GP-Poisson pattern). Posterior:
  # Gamma(2 + sum y, 1 + n), mean 33/9, sd sqrt(33)/9.
  counts = jnp.array([3, 5, 2, 4, 6, 1, 4, 6], jnp.int32)
  model = tfd.JointDistributionNamed(dict(
      rate=tfd.Gamma(2., 1.),
      y=lambda rate: tfd.Sample(tfd.Poisson(rate), counts.shape[0])))
  s = S.joint({"rate": S.mean_field_normal((), tfb.Softplus()),
               "y": S.point_mass(counts)})
  result = vi.fit(lambda **z: model.log_prob(z), s,
                  optax.adam(optax.exponential_decay(0.1, 1500, 0.02)), 1500,
                  key=KEY, sample_size=16)
  z, _ = s.sample_and_log_prob(result.params, jax.random.key(1), 20000)
  np.testing.assert_allclose(float(z["rate"].mean()), 33 / 9, rtol=0.03)
  np.testing.assert_allclose(float(z["rate"].std()), np.sqrt(33) / 9, rtol=0.1)


def test_joint_merge_full_rank_globals_mean_field_locals_matches_tfp():
  s = S.joint([S.full_rank_normal({"mu": (), "tau": ()},
                                  {"mu": None, "tau": tfb.Softplus()}),
               S.mean_field_normal({"theta": (3,)})], merge=True)
  params = s.init(KEY)
  params = jax.tree_util.tree_map(
      lambda l: l + 0.2 * jax.random.normal(KEY, l.shape), params)
  z, log_q = jax.jit(s.sample_and_log_prob, static_argnums=2)(params, KEY, 6)
  assert sorted(z) == ["mu", "tau", "theta"]
  g, l = params[0], params[1]
  tril = S.full_rank_scale_tril(g)
  glob = tfd.TransformedDistribution(
      tfd.MultivariateNormalTriL(g["loc"], tril),
      tfb.Blockwise([tfb.Identity(), tfb.Softplus()]))
  loc_ = tfd.MultivariateNormalDiag(l["loc"], jax.nn.softplus(l["raw_scale"]))
  ref = (glob.log_prob(jnp.stack([z["mu"], z["tau"]], -1)) +
         loc_.log_prob(z["theta"]))
  chex.assert_trees_all_close(log_q, ref, atol=1e-4, rtol=1e-4)
  chex.assert_trees_all_close(s.log_prob(params, z), ref, atol=1e-4,
                              rtol=1e-4)
  assert s.reparameterized and s.distribution_fn is None


def test_joint_errors_name_the_argument():
  with pytest.raises(ValueError, match="surrogates"):
    S.joint({"a": S.mean_field_normal(()), "b": 3.})
  with pytest.raises(ValueError, match="share latent names"):
    S.joint([S.mean_field_normal({"a": ()}), S.delta({"a": ()})], merge=True)
  with pytest.raises(ValueError, match="not a dict"):
    S.joint([S.mean_field_normal(()), S.delta({"a": ()})], merge=True)


PRIOR = {
    "sigma": tfd.HalfNormal(1.),                 # positive (TFP)
    "rate": distrax.Gamma(2., 1.),               # positive (distrax)
    "scale": tfd.LogNormal(0., 1.),              # positive (TFP)
    "p": tfd.Beta(2., 3.),                       # unit interval (TFP)
    "q": distrax.Beta(1., 1.),                   # unit interval (distrax)
    "u": distrax.Uniform(-1., 3.),               # interval (distrax)
    "w": tfd.Dirichlet(jnp.ones(4)),             # simplex (TFP)
    "v": distrax.Dirichlet(jnp.ones((2, 3))),    # batch of simplexes (distrax)
    "x": tfd.Normal(jnp.zeros(2), 1.),           # real, batch shape [2]
    "e": distrax.Transformed(distrax.Normal(0., 1.), tfb.Exp()),  # positive
}


@pytest.mark.parametrize("family", ["mean_field", "full_rank", "delta"])
def test_from_prior_samples_lie_in_each_support(family):
  s = S.from_prior(PRIOR, family, **(
      {"init_loc_radius": 2.} if family == "delta" else {"init_scale": 3.}))
  params = s.init(KEY)
  n = 1 if family == "delta" else 2000
  z, log_q = jax.jit(s.sample_and_log_prob, static_argnums=2)(params, KEY, n)
  shapes = jax.tree_util.tree_map(lambda x: x.shape[1:], z)
  assert shapes == {"sigma": (), "rate": (), "scale": (), "p": (), "q": (),
                    "u": (), "w": (4,), "v": (2, 3), "x": (2,), "e": ()}
  for name in ("sigma", "rate", "scale", "e"):
    assert bool(jnp.all(z[name] > 0)), name
  for name in ("p", "q"):
    assert bool(jnp.all((z[name] > 0) & (z[name] < 1))), name
  assert bool(jnp.all((z["u"] > -1) & (z["u"] < 3)))
  for name in ("w", "v"):
    assert bool(jnp.all(z[name] >= 0)), name
    np.testing.assert_allclose(np.asarray(z[name].sum(-1)), 1., rtol=1e-5)
  chex.assert_tree_all_finite(log_q)
  # The prior itself is finite at every draw (inside its support).
  lp = sum(jnp.sum(jnp.reshape(PRIOR[k].log_prob(z[k]), (n, -1)), -1)
           for k in PRIOR)
  chex.assert_tree_all_finite(lp)


def test_from_prior_advi_and_map_on_beta_bernoulli():
  # p ~ Beta(2, 2), 14 heads in 20 flips: posterior Beta(16, 8), mean 2/3,
  # mode 15/22.
  heads, n = 14., 20.
  prior = {"p": tfd.Beta(2., 2.)}
  target = lambda p: (prior["p"].log_prob(p) + heads * jnp.log(p) +
                      (n - heads) * jnp.log1p(-p))
  advi = S.from_prior(prior)
  r = vi.fit(target, advi, optax.adam(optax.exponential_decay(0.1, 1500, 0.02)),
             1500, key=KEY, sample_size=16)
  z, _ = advi.sample_and_log_prob(r.params, jax.random.key(1), 20000)
  np.testing.assert_allclose(float(z["p"].mean()), 2 / 3, atol=0.01)
  np.testing.assert_allclose(float(z["p"].std()), float(tfd.Beta(16., 8.).stddev()),
                             rtol=0.1)
  map_ = S.from_prior(prior, "delta")
  r = vi.fit(target, map_, optax.adam(0.05), 1000, key=KEY)
  z, _ = map_.sample_and_log_prob(r.params, KEY, 1)
  np.testing.assert_allclose(float(z["p"][0]), 15 / 22, atol=1e-3)


def test_from_prior_errors_name_the_latent():
  with pytest.raises(ValueError, match=r"\['k'\].*discrete"):
    S.from_prior({"k": tfd.Poisson(3.), "x": tfd.Normal(0., 1.)})
  with pytest.raises(ValueError, match="family"):
    S.from_prior({"x": tfd.Normal(0., 1.)}, "gaussian")
  with pytest.raises(ValueError, match="prior"):
    S.from_prior({"x": 1.})
  assert S.support_bijector(distrax.Normal(0., 1.)) is None
  with pytest.raises(ValueError, match="discrete"):
    S.support_bijector(distrax.Bernoulli(probs=0.3))
