"""Csiszar f-functions against their closed formulas in 60-digit arithmetic.

The reference evaluates each textbook formula (the one in the docstring) with
mpmath at 60 significant digits at the exact float value of each logu; TFP's
tfp.vi functions are compared as a peer where their formulas are stable.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import tensorflow_probability.substrates.jax as tfp

from vi_jax.objectives import csiszar

mpmath.mp.dps = 60


def _mp_reference():
  """name -> (vi_jax function, mpmath formula of u)."""
  log, sqrt = mpmath.log, mpmath.sqrt

  def amari(a, sn):
    def f(u):
      if a == 0:
        v = -log(u)
        return v + (u - 1) if sn else v
      if a == 1:
        v = u * log(u)
        return v - (u - 1) if sn else v
      v = (u**a - 1) / (a * (a - 1))
      return v - (u - 1) / (a - 1) if sn else v
    return f

  def tpow(t, sn):
    def f(u):
      v = u**t - 1 - (t * (u - 1) if sn else 0)
      return -v if 0 < t < 1 else v
    return f

  out = {}
  for sn in (False, True):
    for a in (-1.5, 0., 0.5, 1., 2., 3.):
      out[f"amari_alpha({a},{sn})"] = (functools.partial(
          csiszar.amari_alpha, alpha=a, self_normalized=sn), amari(a, sn))
    for t in (-1., 0.5, 2.):
      out[f"t_power({t},{sn})"] = (functools.partial(
          csiszar.t_power, t=t, self_normalized=sn), tpow(t, sn))
    out[f"kl_reverse({sn})"] = (functools.partial(
        csiszar.kl_reverse, self_normalized=sn), amari(0, sn))
    out[f"kl_forward({sn})"] = (functools.partial(
        csiszar.kl_forward, self_normalized=sn), amari(1, sn))
    out[f"jensen_shannon({sn})"] = (functools.partial(
        csiszar.jensen_shannon, self_normalized=sn),
        lambda u, sn=sn: u * log(u) - (1 + u) * log(1 + u) +
        ((u + 1) * log(2) if sn else 0))
    out[f"arithmetic_geometric({sn})"] = (functools.partial(
        csiszar.arithmetic_geometric, self_normalized=sn),
        lambda u, sn=sn: (1 + u) * log((1 + u) / sqrt(u)) -
        ((1 + u) * log(2) if sn else 0))
    out[f"modified_gan({sn})"] = (functools.partial(
        csiszar.modified_gan, self_normalized=sn),
        lambda u, sn=sn: log(1 + u) - log(u) + ((u - 1) / 2 if sn else 0))
  out["total_variation"] = (csiszar.total_variation, lambda u: abs(u - 1) / 2)
  out["pearson"] = (csiszar.pearson, lambda u: (u - 1)**2)
  out["squared_hellinger"] = (csiszar.squared_hellinger,
                              lambda u: (sqrt(u) - 1)**2)
  out["triangular"] = (csiszar.triangular, lambda u: (u - 1)**2 / (1 + u))
  out["log1p_abs"] = (csiszar.log1p_abs,
                      lambda u: u**(1 if u >= 1 else -1) - 1)
  out["jeffreys"] = (csiszar.jeffreys, lambda u: (u * log(u) - log(u)) / 2)
  out["chi_square"] = (csiszar.chi_square, lambda u: u**2 - 1)
  return out


REFERENCE = _mp_reference()


def _reference(formula, logu: np.ndarray) -> np.ndarray:
  return np.array([float(formula(mpmath.exp(mpmath.mpf(float(x)))))
                   for x in logu])


def _check_against_reference(fn, formula, logu, rtol):
  """|f - ref| <= rtol |ref| where ref fits the dtype; +-inf where it overflows."""
  dtype = logu.dtype
  got = np.asarray(fn(jnp.asarray(logu)))
  assert got.dtype == dtype
  ref = _reference(formula, logu)
  info = np.finfo(dtype)
  fits = np.abs(ref) <= info.max
  assert not np.any(np.isnan(got)), logu[np.isnan(got)]
  np.testing.assert_array_equal(got[~fits], np.sign(ref[~fits]) * np.inf)
  err = np.abs(got[fits] - ref[fits])
  # Values below the smallest normal number may be flushed to zero.
  bound = rtol * np.abs(ref[fits]) + 2 * info.tiny
  worst = np.argmax(err / bound)
  assert np.all(err <= bound), (
      f"logu={logu[fits][worst]}, got {got[fits][worst]}, "
      f"ref {ref[fits][worst]}")


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_matches_closed_formula_on_the_acceptance_grid_float64(name):
  fn, formula = REFERENCE[name]
  with jax.enable_x64(True):
    logu = np.linspace(-10., 10., 201)
    _check_against_reference(fn, formula, logu, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_stable_for_abs_logu_up_to_100_float64_and_float32(name):
  fn, formula = REFERENCE[name]
  grid = np.concatenate([np.linspace(-100., 100., 81),
                         [-1e-3, -1e-6, 1e-6, 1e-3, 0.3, 0.7, 1.2]])
  with jax.enable_x64(True):
    _check_against_reference(fn, formula, grid.astype(np.float64), rtol=1e-11)
  _check_against_reference(fn, formula, grid.astype(np.float32), rtol=5e-5)


def test_self_normalized_jensen_shannon_is_nonnegative_and_accurate_near_zero():
  with jax.enable_x64(True):
    logu = np.concatenate([-np.logspace(-8, 1, 200), np.logspace(-8, 1, 200),
                           [0.]])
    got = np.asarray(csiszar.jensen_shannon(logu, self_normalized=True))
    assert np.all(got >= 0.)
    _, formula = REFERENCE["jensen_shannon(True)"]
    ref = _reference(formula, logu)
    nz = ref != 0
    np.testing.assert_array_less(np.abs(got[nz] - ref[nz]) / ref[nz], 1e-6)
    assert got[~nz].item() == 0.


def test_identities_dual_and_symmetrized():
  with jax.enable_x64(True):
    logu = jnp.linspace(-10., 10., 201)
    for sn in (False, True):
      kf = functools.partial(csiszar.kl_forward, self_normalized=sn)
      kr = functools.partial(csiszar.kl_reverse, self_normalized=sn)
      np.testing.assert_allclose(csiszar.dual_csiszar_function(logu, kf),
                                 kr(logu), rtol=1e-12, atol=1e-12)
      np.testing.assert_allclose(csiszar.dual_csiszar_function(logu, kr),
                                 kf(logu), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        csiszar.symmetrized_csiszar_function(logu, csiszar.kl_reverse),
        csiszar.jeffreys(logu), rtol=1e-12, atol=1e-12)
    # Symmetric f-divergences equal their duals (TFP's docstrings).
    for f in (csiszar.squared_hellinger, csiszar.triangular,
              functools.partial(csiszar.jensen_shannon, self_normalized=True)):
      np.testing.assert_allclose(csiszar.dual_csiszar_function(logu, f),
                                 f(logu), rtol=1e-9, atol=1e-12)


def test_matches_tfp_peer_on_moderate_logu():
  logu = jnp.linspace(-5., 5., 41, dtype=jnp.float32)
  pairs = [
      (csiszar.kl_reverse, tfp.vi.kl_reverse),
      (csiszar.kl_forward, tfp.vi.kl_forward),
      (functools.partial(csiszar.amari_alpha, alpha=0.5, self_normalized=True),
       functools.partial(tfp.vi.amari_alpha, alpha=0.5, self_normalized=True)),
      (functools.partial(csiszar.jensen_shannon, self_normalized=True),
       functools.partial(tfp.vi.jensen_shannon, self_normalized=True)),
      (csiszar.arithmetic_geometric, tfp.vi.arithmetic_geometric),
      (csiszar.chi_square, tfp.vi.chi_square),
      (csiszar.jeffreys, tfp.vi.jeffreys),
      (csiszar.log1p_abs, tfp.vi.log1p_abs),
      (csiszar.modified_gan, tfp.vi.modified_gan),
      (csiszar.pearson, tfp.vi.pearson),
      (csiszar.squared_hellinger, tfp.vi.squared_hellinger),
      (functools.partial(csiszar.t_power, t=2., self_normalized=True),
       functools.partial(tfp.vi.t_power, t=2., self_normalized=True)),
      (csiszar.total_variation, tfp.vi.total_variation),
      (csiszar.triangular, tfp.vi.triangular),
  ]
  for ours, theirs in pairs:
    np.testing.assert_allclose(ours(logu), theirs(logu), rtol=1e-4, atol=1e-4)


def test_jit_vmap_grad_and_finite_gradients():
  f = functools.partial(csiszar.jensen_shannon, self_normalized=True)
  logu = jnp.linspace(-100., 100., 41)
  chex.assert_trees_all_close(jax.jit(f)(logu), f(logu), rtol=1e-6)
  chex.assert_trees_all_close(jax.vmap(f)(logu), f(logu), rtol=1e-6)
  # d/dlogu of JS_sn = u log(2u / (1 + u)) (closed form).
  g = jax.vmap(jax.grad(f))(jnp.linspace(-3., 3., 13))
  x = np.linspace(-3., 3., 13)
  np.testing.assert_allclose(g, np.exp(x) * np.log(2 * np.exp(x) /
                                                   (1 + np.exp(x))),
                             rtol=1e-5, atol=1e-6)
  for name in ("kl_forward(True)", "amari_alpha(0.5,True)", "triangular"):
    fn, _ = REFERENCE[name]
    grads = jax.vmap(jax.grad(fn))(jnp.linspace(-20., 20., 41))
    assert np.all(np.isfinite(grads)), name


def test_bad_hyperparameters_raise():
  with pytest.raises(TypeError, match="alpha"):
    csiszar.amari_alpha(0., alpha=jnp.array(0.5))
  with pytest.raises(TypeError, match="self_normalized"):
    csiszar.kl_reverse(0., self_normalized=None)
  with pytest.raises(TypeError, match="t must"):
    csiszar.t_power(0., t="2")
  with pytest.raises(TypeError, match="csiszar_function"):
    csiszar.dual_csiszar_function(0., 3.)
