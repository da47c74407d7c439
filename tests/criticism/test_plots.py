"""Plots render headless to non-empty PNGs of sane size; inputs are checked."""

import os
import subprocess
import sys

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vi_jax as vi
from vi_jax.criticism import plots

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from matplotlib import image as mpimg  # noqa: E402  (after matplotlib.use)


def _check_png(path, min_px=(200, 200), max_px=(4000, 4000)):
  assert os.path.getsize(path) > 5_000
  assert os.path.getsize(path) < 3_000_000
  img = mpimg.imread(path)
  h, w = img.shape[:2]
  assert min_px[0] <= w <= max_px[0] and min_px[1] <= h <= max_px[1]
  assert np.ptp(img[..., :3]) > 0.2  # not blank


def banana_log_prob(z):
  # A 2-D banana: x ~ N(0, 2), y | x ~ N(0.3 x^2, 0.5).
  return (distrax.Normal(0., 2.).log_prob(z[0]) +
          distrax.Normal(0.3 * z[0]**2, 0.5).log_prob(z[1]))


@pytest.fixture(scope="module")
def banana_fit():
  s = vi.surrogates.full_rank_normal((2,))
  r = vi.fit(banana_log_prob, s, optax.adam(0.05), 500, key=jax.random.key(0),
             sample_size=8)
  return s, r


def test_plot_loss_writes_png_and_smooths(tmp_path, banana_fit):
  _, r = banana_fit
  fig = plots.plot_loss(r.trace)
  fig.savefig(tmp_path / "loss.png", dpi=80)
  _check_png(tmp_path / "loss.png")
  # The smoothed line of a linear trace is the same line away from the ends.
  fig = plots.plot_loss(np.arange(200.), window=11)
  smooth = fig.axes[0].lines[1].get_ydata()
  np.testing.assert_allclose(smooth[10:-10], np.arange(200.)[10:-10])
  fig = plots.plot_loss(r.trace, log_scale=True)
  assert fig.axes[0].get_yscale() == "log"
  with pytest.raises(ValueError, match="loss_trace"):
    plots.plot_loss(np.zeros((3, 3)))


def test_plot_marginals_against_moments_and_draws(tmp_path):
  key = jax.random.key(0)
  draws = {"mu": jax.random.normal(key, (2000,)),
           "w": 1. + jax.random.normal(key, (2000, 3))}
  fig = plots.plot_marginals(draws,
                             reference_mean={"mu": 0., "w": jnp.ones(3)},
                             reference_std={"mu": 1., "w": jnp.ones(3)})
  assert len([a for a in fig.axes if a.get_visible()]) == 4
  assert [a.get_title() for a in fig.axes[:4]] == ["mu", "w[0]", "w[1]", "w[2]"]
  fig.savefig(tmp_path / "marginals.png", dpi=100)
  _check_png(tmp_path / "marginals.png")
  ref = jax.tree_util.tree_map(lambda x: x + 0.1, draws)
  fig = plots.plot_marginals(draws, reference_draws=ref, dims=["w[1]"])
  assert len([a for a in fig.axes if a.get_visible()]) == 1
  fig.savefig(tmp_path / "m2.png", dpi=80)
  _check_png(tmp_path / "m2.png", min_px=(150, 100))
  with pytest.raises(ValueError, match="unknown component"):
    plots.plot_marginals(draws, dims=["nope"])
  with pytest.raises(ValueError, match="structure"):
    plots.plot_marginals(draws, reference_mean={"mu": 0.},
                         reference_std={"mu": 1.})
  with pytest.raises(ValueError, match="go together"):
    plots.plot_marginals(draws, reference_mean={"mu": 0., "w": jnp.ones(3)})


def test_plot_pair_grid_matches_target(tmp_path, banana_fit):
  s, r = banana_fit
  fig = plots.plot_pair(banana_log_prob, s, r.params, jax.random.key(1),
                        grid_size=40)
  fig.savefig(tmp_path / "pair.png", dpi=80)
  _check_png(tmp_path / "pair.png")
  ax = fig.axes[0]
  assert ax.get_xlabel() == "z[0]" and ax.get_ylabel() == "z[1]"
  with pytest.raises(ValueError, match="two distinct"):
    plots.plot_pair(banana_log_prob, s, r.params, jax.random.key(1),
                    dims=(0, 0))


def test_plot_pair_dict_latents_by_name(tmp_path):
  def log_prob(a, b):
    return (distrax.Normal(0., 1.).log_prob(a).sum() +
            distrax.Normal(a[0], 1.).log_prob(b))
  s = vi.surrogates.mean_field_normal({"a": (2,), "b": ()})
  params = s.init(jax.random.key(0))
  fig = plots.plot_pair(log_prob, s, params, jax.random.key(1),
                        dims=("a[0]", "b"), grid_size=30,
                        bounds=((-3, 3), (-3, 3)))
  assert fig.axes[0].get_xlim() == (-3, 3)
  fig.savefig(tmp_path / "pair2.png", dpi=60)
  _check_png(tmp_path / "pair2.png", min_px=(150, 150))


def test_importing_vi_jax_does_not_import_matplotlib():
  code = ("import sys, vi_jax; assert 'matplotlib' not in sys.modules; "
          "assert 'arviz' not in sys.modules; assert 'numpyro' not in "
          "sys.modules")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  subprocess.run([sys.executable, "-c", code], check=True, env=env,
                 timeout=120)
