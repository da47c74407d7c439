"""Surrogate families (low-rank, mixtures, flows, custom, structured, automatic):
exact log densities against TFP, normalization, shapes, jit/vmap/grad."""

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfb, tfd = tfp.bijectors, tfp.distributions
S = vi.surrogates
KEY = jax.random.key(0)


def _perturbed(params, key, scale=0.1):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  return jax.tree_util.tree_unflatten(treedef, [
      l + scale * jax.random.normal(k, l.shape, l.dtype)
      for l, k in zip(leaves, keys)])


def _custom_mvn(event_shape, bijector=None):
  dim = vi.bijectors.latent_space(event_shape, bijector).dim
  return S.from_distribution(
      lambda p: distrax.MultivariateNormalDiag(p["loc"], jnp.exp(p["log_s"])),
      {"loc": jnp.zeros(dim), "log_s": jnp.zeros(dim)}, bijector,
      event_shape=event_shape)


FAMILIES = {
    "low_rank": lambda es, b=None: S.low_rank_normal(es, 2, b),
    "mixture_mean_field": lambda es, b=None: S.mixture(es, 3, b),
    "mixture_full_rank": lambda es, b=None: S.mixture(
        es, 2, b, components="full_rank"),
    "real_nvp": lambda es, b=None: S.real_nvp(es, b, hidden_sizes=(8,)),
    "neural_spline_flow": lambda es, b=None: S.neural_spline_flow(
        es, b, num_layers=2, hidden_sizes=(8,), num_bins=4),
    "iaf": lambda es, b=None: S.inverse_autoregressive_flow(
        es, b, hidden_sizes=(8,)),
    "from_distribution": _custom_mvn,
    "from_prior_mean_field": lambda es, b=None: S.from_prior(
        jax.tree_util.tree_map(lambda sh: tfd.Normal(jnp.zeros(sh), 1.), es,
                               is_leaf=vi.bijectors.is_shape)),
    "joint": lambda es, b=None: S.joint({
        "a": S.full_rank_normal((2,)), "b": S.real_nvp(es, b, hidden_sizes=(4,))}),
}


def _params(name, s, key=KEY):
  return _perturbed(s.init(key), jax.random.fold_in(key, 1))


def _sample(s):
  return jax.jit(s.sample_and_log_prob, static_argnums=2)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("event_shape,bijector", [
    ((2, 3), tfb.Softplus()),
    ({"w": (2,), "s": ((), (1, 2))},
     {"w": None, "s": (tfb.Exp(), None)})])
def test_log_prob_at_own_draws_equals_log_q_and_shapes(name, event_shape,
                                                       bijector):
  if name in ("from_prior_mean_field", "from_distribution", "joint") and \
      not isinstance(event_shape, dict):
    pytest.skip("wraps families tested here; array shapes add nothing")
  if name == "from_prior_mean_field":
    bijector = None  # from_prior chooses the bijectors (identity for Normal).
  s = FAMILIES[name](event_shape, bijector)
  params = _params(name, s)
  z, log_q = _sample(s)(params, jax.random.key(2), 16)
  chex.assert_shape(log_q, (16,))
  chex.assert_tree_all_finite(log_q)
  want = jax.tree_util.tree_map(lambda sh: (16,) + tuple(sh), event_shape,
                                is_leaf=vi.bijectors.is_shape)
  if name == "joint":
    want = {"a": (16, 2), "b": want}
  got = jax.tree_util.tree_map(lambda x: x.shape, z)
  assert jax.tree_util.tree_structure(got, is_leaf=vi.bijectors.is_shape) == \
      jax.tree_util.tree_structure(want, is_leaf=vi.bijectors.is_shape)
  assert jax.tree_util.tree_leaves(got, is_leaf=vi.bijectors.is_shape) == \
      jax.tree_util.tree_leaves(want, is_leaf=vi.bijectors.is_shape)
  # log_prob at the draws, given with two batch axes [4, 4], equals log_q to
  # float32's acceptance tolerance 1e-5.
  z2 = jax.tree_util.tree_map(lambda x: x.reshape((4, 4) + x.shape[1:]), z)
  chex.assert_trees_all_close(jax.jit(s.log_prob)(params, z2),
                              log_q.reshape(4, 4), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "joint"])
def test_density_integrates_to_one_in_1d_and_2d(name):
  s1 = FAMILIES[name](())
  x = jnp.linspace(-12., 12., 24001)
  dens = jnp.exp(jax.jit(s1.log_prob)(_params(name, s1), x))
  np.testing.assert_allclose(float(jnp.trapezoid(dens, x)), 1., atol=2e-3)
  s2 = FAMILIES[name]((2,))
  g = jnp.linspace(-9., 9., 361)
  xx, yy = jnp.meshgrid(g, g, indexing="ij")
  dens = jnp.exp(jax.jit(s2.log_prob)(_params(name, s2),
                                      jnp.stack([xx, yy], -1)))
  mass = jnp.trapezoid(jnp.trapezoid(dens, g, axis=1), g)
  np.testing.assert_allclose(float(mass), 1., atol=3e-3)


@pytest.mark.parametrize("name", ["low_rank", "mixture_full_rank", "iaf"])
def test_density_integrates_to_one_on_positive_support(name):
  # The support bijector's Jacobian included: a 1-D density in z > 0.
  s = FAMILIES[name]((), tfb.Softplus())
  z = jnp.concatenate([jnp.geomspace(1e-8, 1e-2, 4000),
                       jnp.linspace(1e-2 + 1e-6, 40., 40000)])
  dens = jnp.exp(jax.jit(s.log_prob)(_params(name, s), z))
  np.testing.assert_allclose(float(jnp.trapezoid(dens, z)), 1., atol=3e-3)


@pytest.mark.parametrize("name", FAMILIES)
def test_jit_vmap_grad_compose(name):
  chex.clear_trace_counter()
  s = FAMILIES[name]({"a": (2,), "b": ()}, None)
  params = _params(name, s)
  keys = jax.random.split(KEY, 3)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def draws(params, keys):
    return jax.vmap(lambda k: s.sample_and_log_prob(params, k, 5))(keys)

  z, lq = draws(params, keys)
  draws(params, keys)  # second call: no retrace
  chex.assert_shape(lq, (3, 5))
  # grads of the negative ELBO of a standard normal target and of log_prob at
  # given points, under one jit.
  target = lambda **z: -0.5 * sum(
      jnp.sum(l**2) for l in jax.tree_util.tree_leaves(z))
  z0 = jax.tree_util.tree_map(lambda x: x[0], z)
  stl = vi.losses.negative_elbo(stick_the_landing=True)
  g, g2, g3 = jax.jit(lambda p: (
      jax.grad(lambda q: vi.losses.negative_elbo()(target, s, q, KEY, 8))(p),
      jax.grad(lambda q: s.log_prob(q, z0).sum())(p),
      jax.grad(lambda q: stl(target, s, q, KEY, 8))(p)))(params)
  chex.assert_trees_all_equal_structs(g, params)
  chex.assert_tree_all_finite((g, g2, g3))
  assert any(float(jnp.abs(l).sum()) > 0 for l in jax.tree_util.tree_leaves(g))


# Peer-library comparisons, one per family.


def test_low_rank_matches_tfp_mvn_with_dense_scale():
  s = S.low_rank_normal((4,), 2, tfb.Softplus())
  params = _perturbed(s.init(KEY), KEY, 0.3)
  z, log_q = _sample(s)(params, jax.random.key(1), 9)
  d = jax.nn.softplus(params["raw_scale_diag"])
  u = params["scale_factor"]
  scale = jnp.diag(d) + u @ u.T
  ref = tfd.TransformedDistribution(
      tfd.MultivariateNormalTriL(params["loc"],
                                 jnp.linalg.cholesky(scale @ scale.T)),
      tfb.Softplus())
  chex.assert_trees_all_close(log_q, ref.log_prob(z), atol=2e-4, rtol=2e-4)
  assert s.distribution_fn is not None
  chex.assert_trees_all_close(s.distribution_fn(params).log_prob(z), log_q,
                              atol=1e-5, rtol=1e-5)


def test_low_rank_rejects_bad_rank():
  with pytest.raises(ValueError, match="rank"):
    S.low_rank_normal((3,), 0)


@pytest.mark.parametrize("components", ["mean_field", "full_rank"])
def test_mixture_log_prob_matches_tfp_mixture(components):
  s = S.mixture((3,), 4, tfb.Exp(), components=components)
  params = _perturbed(s.init(KEY), KEY, 0.3)
  z, log_q = _sample(s)(params, jax.random.key(1), 9)
  if components == "mean_field":
    comp = tfd.MultivariateNormalDiag(params["loc"],
                                      jax.nn.softplus(params["raw_scale"]))
  else:
    comp = tfd.MultivariateNormalTriL(
        params["loc"],
        tfb.FillScaleTriL(diag_shift=1e-5).forward(params["raw_scale_tril"]))
  ref = tfd.TransformedDistribution(
      tfd.MixtureSameFamily(tfd.Categorical(logits=params["logits"]), comp),
      tfb.Exp())
  chex.assert_trees_all_close(log_q, ref.log_prob(z), atol=1e-4, rtol=1e-4)
  # distribution_fn: the distrax distribution of z (Exp bijector included).
  chex.assert_trees_all_close(
      jax.jit(lambda p, x: s.distribution_fn(p).log_prob(x))(params, z),
      ref.log_prob(z), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make", [S.real_nvp, S.neural_spline_flow,
                                  S.inverse_autoregressive_flow])
def test_flow_starts_as_its_base_gaussian(make):
  loc = jnp.array([0.5, -1., 2.])
  s = make((3,), init_loc=loc, init_scale=0.7, num_layers=2,
           hidden_sizes=(8,))
  params = s.init(KEY)
  z, log_q = _sample(s)(params, jax.random.key(3), 50)
  ref = tfd.MultivariateNormalDiag(loc, 0.7 * jnp.ones(3))
  chex.assert_trees_all_close(log_q, ref.log_prob(z), atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(jax.jit(s.log_prob)(params, z), ref.log_prob(z),
                              atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(
      jax.jit(lambda p, x: s.distribution_fn(p).log_prob(x))(params, z),
      ref.log_prob(z), atol=1e-5, rtol=1e-5)


def test_iaf_is_autoregressive():
  # Output i of an IAF layer depends on eps_<=i only: a lower-triangular
  # Jacobian (ascending order in the first layer).
  s = S.inverse_autoregressive_flow((4,), num_layers=1, hidden_sizes=(16,))
  params = _perturbed(s.init(KEY), KEY, 0.5)
  bij = s.distribution_fn(params).bijector
  jac = jax.jacfwd(bij.forward)(jnp.array([0.3, -0.2, 0.1, 0.7]))
  np.testing.assert_allclose(np.triu(np.asarray(jac), 1), 0., atol=1e-7)
  assert np.abs(np.tril(np.asarray(jac), -1)).sum() > 1e-3


def test_flow_argument_errors_name_the_argument():
  with pytest.raises(ValueError, match="num_layers"):
    S.real_nvp((2,), num_layers=0)
  with pytest.raises(ValueError, match="num_bins"):
    S.neural_spline_flow((2,), num_bins=0)
  with pytest.raises(ValueError, match="hidden_sizes"):
    S.inverse_autoregressive_flow((2,), hidden_sizes=(0,))
  with pytest.raises(ValueError, match="components"):
    S.mixture((2,), 2, components="diag")
  with pytest.raises(ValueError, match="num_components"):
    S.mixture((2,), 0)


def test_from_distribution_with_tfp_and_distrax_and_reshaped_events():
  # A TFP distribution (event ()), pushed onto (0, inf) by Exp: a LogNormal.
  s = S.from_distribution(lambda p: tfd.Normal(p["m"], jnp.exp(p["ls"])),
                          {"m": 0.3, "ls": -0.5}, tfb.Exp())
  params = s.init(KEY)
  z, log_q = s.sample_and_log_prob(params, KEY, 7)
  ref = tfd.LogNormal(0.3, jnp.exp(-0.5))
  chex.assert_trees_all_close(log_q, ref.log_prob(z), atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(s.distribution_fn(params).log_prob(z),
                              ref.log_prob(z), atol=1e-5, rtol=1e-5)
  assert s.reparameterized
  # A matrix-event distrax distribution keeps its shape.
  s2 = S.from_distribution(
      lambda p: distrax.Independent(distrax.Normal(p, 1.), 2),
      lambda key: jnp.zeros((2, 3)))
  z2, lq2 = s2.sample_and_log_prob(s2.init(KEY), KEY, 5)
  chex.assert_shape(z2, (5, 2, 3))
  chex.assert_trees_all_close(lq2, tfd.Independent(tfd.Normal(
      jnp.zeros((2, 3)), 1.), 2).log_prob(z2), atol=1e-5)
  # Discrete distributions are flagged as not reparameterized.
  assert not S.from_distribution(lambda r: tfd.Poisson(r), 3.).reparameterized
  with pytest.raises(ValueError, match="event shape"):
    S.from_distribution(lambda p: distrax.MultivariateNormalDiag(p),
                        jnp.zeros(3), event_shape={"a": (2,)})
  with pytest.raises(TypeError, match="build_fn"):
    S.from_distribution(lambda p: p, jnp.zeros(3))


def test_from_distribution_flow_built_by_the_user():
  # TFP's build-surrogate pattern: a user flow from distrax bijectors.
  def build(p):
    return distrax.Transformed(
        distrax.MultivariateNormalDiag(jnp.zeros(2), jnp.ones(2)),
        distrax.Chain([distrax.Block(distrax.ScalarAffine(p["b"], p["s"]), 1),
                       distrax.Block(distrax.Tanh(), 1)]))
  s = S.from_distribution(build, {"b": jnp.array([1., 2.]),
                                  "s": jnp.array([2., 3.])})
  z, log_q = s.sample_and_log_prob(s.init(KEY), KEY, 100)
  assert bool(jnp.all(jnp.abs(z - jnp.array([1., 2.])) < jnp.array([2., 3.])))
  chex.assert_trees_all_close(s.log_prob(s.init(KEY), z), log_q, atol=1e-4)
