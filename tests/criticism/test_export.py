"""Summary table and ArviZ export: names, shapes, az.summary, diagnostics."""

import collections
import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi
from vi_jax.criticism import export

tfd = tfp.distributions

with warnings.catch_warnings():
  warnings.simplefilter("ignore")
  az = pytest.importorskip("arviz")

EVENT_SHAPE = {"w": (3,), "sigma": (), "L": (2, 2)}


def log_prob(w, sigma, L):
  return (tfd.Normal(1., 2.).log_prob(w).sum() +
          tfd.Exponential(1.).log_prob(sigma) +
          tfd.Normal(0., 1.).log_prob(L).sum())


@pytest.fixture(scope="module")
def fitted():
  s = vi.surrogates.mean_field_normal(
      EVENT_SHAPE, {"w": None, "sigma": vi.bijectors.positive(), "L": None})
  r = vi.fit(log_prob, s, optax.adam(0.05), 400, key=jax.random.key(0),
             sample_size=8)
  return s, r


def test_inference_data_names_shapes_and_az_summary(fitted):
  s, r = fitted
  idata = export.to_inference_data(s, r.params, jax.random.key(1), 1000,
                                   target_log_prob_fn=log_prob,
                                   loss_trace=r.trace, num_chains=4)
  assert set(idata.groups()) >= {"posterior", "sample_stats", "vi_trace"}
  post = idata.posterior
  assert set(post.data_vars) == {"w", "sigma", "L"}
  assert post["w"].shape == (4, 250, 3)
  assert post["sigma"].shape == (4, 250)
  assert post["L"].shape == (4, 250, 2, 2)
  assert post["L"].dims == ("chain", "draw", "L_dim_0", "L_dim_1")
  assert float(post["sigma"].min()) > 0.  # constrained space
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    table = az.summary(idata, round_to="none")
  assert list(table.index) == ["L[0, 0]", "L[0, 1]", "L[1, 0]", "L[1, 1]",
                               "sigma", "w[0]", "w[1]", "w[2]"]
  # Independent draws: ArviZ's ESS is close to the number of draws, r_hat ~1.
  assert table["ess_bulk"].min() > 700
  assert np.all(np.abs(table["r_hat"] - 1.) < 0.02)
  # Our plain summary of the same draws agrees with ArviZ's mean and sd.
  ours = export.summary(s, r.params, jax.random.key(1), 1000).to_dict()
  for name in table.index:
    assert ours[name]["mean"] == pytest.approx(table.loc[name, "mean"],
                                               rel=1e-4, abs=1e-5)
    assert ours[name]["sd"] == pytest.approx(table.loc[name, "sd"], rel=1e-4)
  # The fit is close to the exact posterior (= prior here): w ~ N(1, 2).
  assert np.all(np.abs(table.loc[["w[0]", "w[1]", "w[2]"], "mean"] - 1.) < 0.3)
  np.testing.assert_allclose(idata.vi_trace["loss"].values, np.asarray(r.trace))


def test_inference_data_diagnostics_agree_with_arviz_psis(fitted):
  s, r = fitted
  idata = export.to_inference_data(s, r.params, jax.random.key(2), 2000,
                                   target_log_prob_fn=log_prob)
  stats = idata.sample_stats
  assert set(stats.data_vars) == {"log_q", "log_p", "log_weight",
                                  "psis_log_weight"}
  np.testing.assert_allclose(stats["log_weight"], stats["log_p"] -
                             stats["log_q"], rtol=1e-5, atol=1e-5)
  lw = np.asarray(stats["log_weight"]).reshape(-1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    a_lw, a_k = az.psislw(lw.astype(np.float64))
  attrs = idata.posterior.attrs
  assert attrs["pareto_k"] == pytest.approx(float(a_k), abs=1e-3)
  np.testing.assert_allclose(np.asarray(stats["psis_log_weight"]).reshape(-1),
                             a_lw, atol=1e-3)
  # Normalized target: log Z = 0; the estimate and the ELBO bracket it.
  assert abs(attrs["log_z"]) < 4 * attrs["log_z_se"] + 0.02
  assert attrs["elbo"] < attrs["log_z"] + 1e-6
  assert attrs["pareto_k_message"] in ("good", "ok", "bad")
  assert attrs["num_draws"] == 2000
  assert idata.sample_stats.attrs["pareto_k"] == attrs["pareto_k"]


def test_inference_data_from_numpyro_adapter_with_deterministic_sites():
  numpyro = pytest.importorskip("numpyro")
  dist = numpyro.distributions

  def model(y):
    mu = numpyro.sample("mu", dist.Normal(0., 5.))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.))
    numpyro.deterministic("log_sigma", jnp.log(sigma))
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

  y = np.array([0.5, 1.2, -0.3, 0.8, 1.9], np.float32)
  m = vi.adapters.from_numpyro(model, y)
  s = vi.surrogates.mean_field_normal(m.event_shape, m.bijector)
  r = vi.fit(m.target_log_prob_fn, s, optax.adam(0.05), 300,
             key=jax.random.key(0), sample_size=8)
  idata = export.to_inference_data(s, r.params, jax.random.key(1), 500,
                                   target_log_prob_fn=m.target_log_prob_fn,
                                   transform=m.constrain)
  assert set(idata.posterior.data_vars) == {"mu", "sigma", "log_sigma"}
  np.testing.assert_allclose(idata.posterior["log_sigma"],
                             np.log(idata.posterior["sigma"]), rtol=1e-5,
                             atol=1e-6)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert len(az.summary(idata)) == 3


def test_named_draws_for_tuples_namedtuples_and_arrays():
  Point = collections.namedtuple("Point", ["loc", "scale"])
  assert list(export.named_draws(jnp.zeros((5, 2)))) == ["z"]
  assert list(export.named_draws((jnp.zeros(5), jnp.zeros((5, 2))))) == [
      "z_0", "z_1"]
  assert list(export.named_draws(Point(jnp.zeros(5), jnp.ones(5)))) == [
      "loc", "scale"]
  assert list(export.named_draws({"a": {"b": jnp.zeros(5)}})) == ["a.b"]
  assert list(export.named_draws((jnp.zeros(5), {"c": jnp.zeros(5)}))) == [
      "z_0", "z_1.c"]
  assert list(export.named_draws(jnp.zeros(5), var_names=["theta"])) == [
      "theta"]
  with pytest.raises(ValueError, match="var_names"):
    export.named_draws(jnp.zeros(5), var_names=["a", "b"])


def test_summary_from_draws_closed_form():
  # draws 0..99: mean 49.5, sd (ddof=1) sqrt(100 * 101 / 12), median 49.5.
  t = export.summary_from_draws({"x": jnp.arange(100.)},
                                quantiles=(0.5,))
  assert t.names == ["x"]
  assert t.columns == ("mean", "sd", "50%")
  np.testing.assert_allclose(t.values[0], [49.5, math.sqrt(100 * 101 / 12),
                                           49.5], rtol=1e-6)
  text = str(t)
  assert "mean" in text and "x" in text and "49.500" in text
  t2 = export.summary_from_draws({"m": jnp.zeros((10, 2, 3))})
  assert t2.names[:2] == ["m[0, 0]", "m[0, 1]"] and len(t2.names) == 6
  chex.assert_shape(t2.values, (6, 5))
  with pytest.raises(ValueError, match="quantiles"):
    export.summary_from_draws({"x": jnp.zeros(3)}, quantiles=(1.5,))


def test_export_input_validation(fitted):
  s, r = fitted
  with pytest.raises(ValueError, match="divisible"):
    export.to_inference_data(s, r.params, jax.random.key(0), 10, num_chains=3)
  with pytest.raises(ValueError, match="loss_trace"):
    export.to_inference_data(s, r.params, jax.random.key(0), 10,
                             loss_trace=np.zeros((2, 2)))
