"""Plots of a fit: loss trace, marginals of q against a reference, 2-D pairs.

matplotlib is an optional dependency (`pip install vi_jax[interop]`),
imported when a plot is made. Figures are built with
`matplotlib.figure.Figure` (no pyplot, no global state), so they render
headless: `fig.savefig("loss.png")`. Each function accepts an existing `ax`
(or `axes`) to draw into instead.
"""

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax.criticism import export
from vi_jax._src.types import Params, PRNGKey, PyTree
from vi_jax.model.target import batched_target

__all__ = ["plot_loss", "plot_marginals", "plot_pair"]


def _figure(figsize):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=figsize, layout="constrained")


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
  """Centered moving average (shorter windows at the ends), nan-aware."""
  y = np.asarray(y, np.float64)
  ok = np.isfinite(y)
  kernel = np.ones(window)
  num = np.convolve(np.where(ok, y, 0.), kernel, mode="same")
  den = np.convolve(ok.astype(np.float64), kernel, mode="same")
  with np.errstate(invalid="ignore", divide="ignore"):
    return num / den


def plot_loss(loss_trace: Any, *, ax=None, window: Optional[int] = None,
              log_scale: bool = False, label: str = "loss (-ELBO)"):
  """The loss trace with a smoothed line.

  Args:
    loss_trace: `[num_steps]` losses (`vi.fit(...).trace` with the default
      trace_fn).
    ax: optional matplotlib Axes to draw into.
    window: moving-average window in steps (default `max(1, num_steps // 50)`).
    log_scale: plot `loss - min(loss) + 1` on a log axis (useful when the loss
      spans orders of magnitude early on).
    label: legend label of the raw trace.

  Returns:
    The matplotlib Figure.

  Raises:
    ValueError: `loss_trace` is not 1-D.
  """
  y = np.asarray(loss_trace, np.float64)
  if y.ndim != 1 or y.shape[0] < 1:
    raise ValueError(f"loss_trace must be [num_steps]; got shape {y.shape}.")
  window = window or max(1, y.shape[0] // 50)
  if ax is None:
    fig = _figure((6., 3.5))
    ax = fig.add_subplot()
  fig = ax.figure
  steps = np.arange(y.shape[0])
  smooth = _smooth(y, window)
  if log_scale:
    shift = np.nanmin(y) - 1.
    y, smooth = y - shift, smooth - shift
    ax.set_yscale("log")
  ax.plot(steps, y, lw=0.6, alpha=0.35, color="C0", label=label)
  ax.plot(steps, smooth, lw=1.8, color="C0",
          label=f"moving average ({window} steps)")
  ax.set_xlabel("step")
  ax.set_ylabel("loss" + (" - min + 1" if log_scale else ""))
  ax.legend(frameon=False)
  return fig


def _components(draws: PyTree, var_names=None) -> tuple[list, np.ndarray]:
  """Draws as (row names, [S, num_components]) like the summary table."""
  names, cols = [], []
  for name, x in export.named_draws(draws, var_names).items():
    x = np.asarray(x, np.float64)
    names += export._row_names(name, x.shape[1:])  # pylint: disable=protected-access
    cols.append(x.reshape(x.shape[0], -1))
  return names, np.concatenate(cols, axis=1)


def _select(names: list, dims) -> list[int]:
  if dims is None:
    return list(range(len(names)))
  out = []
  for d in dims:
    if isinstance(d, str):
      if d not in names:
        raise ValueError(f"unknown component {d!r}; known: {names}.")
      out.append(names.index(d))
    else:
      if not 0 <= int(d) < len(names):
        raise ValueError(f"component index {d} out of range [0, {len(names)}).")
      out.append(int(d))
  return out


def plot_marginals(draws: PyTree, *, reference_draws: PyTree = None,
                   reference_mean: PyTree = None, reference_std: PyTree = None,
                   dims: Optional[Sequence] = None, max_panels: int = 12,
                   ncols: int = 4, var_names=None, bins: int = 40):
  """Marginal densities of q's draws against reference draws or moments.

  Each panel shows one scalar component: a kernel density estimate of q's
  draws, and either a histogram of `reference_draws` or the normal density
  with the reference mean and standard deviation (e.g. inference_gym's ground
  truth), with the reference mean marked.

  Args:
    draws: q's draws, a pytree with leading `[S]` (e.g.
      `vi.export.sample(surrogate, params, key, 4000)`).
    reference_draws: optional pytree of reference draws (same structure,
      leading `[S_ref]`), e.g. NUTS draws.
    reference_mean: optional pytree of reference means (structure of one
      draw); needs `reference_std`.
    reference_std: optional pytree of reference standard deviations.
    dims: optional component names (`"w[0]"`) or indices to plot (default the
      first `max_panels`).
    max_panels: most panels drawn when `dims` is None.
    ncols: panels per row.
    var_names: optional names of the latents, one per leaf.
    bins: histogram bins for reference draws.

  Returns:
    The matplotlib Figure.

  Raises:
    ValueError: unknown `dims`, or `reference_mean` without `reference_std`.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if (reference_mean is None) != (reference_std is None):
    raise ValueError("reference_mean and reference_std go together.")
  names, q = _components(draws, var_names)
  idx = _select(names, dims)[:max_panels if dims is None else None]
  ref = None
  if reference_draws is not None:
    ref_names, ref = _components(reference_draws, var_names)
    if ref_names != names:
      raise ValueError("reference_draws must have the structure of draws; "
                       f"got components {ref_names} vs {names}.")
  mom = None
  if reference_mean is not None:
    add_axis = lambda t: jax.tree_util.tree_map(lambda x: np.asarray(x)[None],
                                                t)
    m_names, m = _components(add_axis(reference_mean), var_names)
    s_names, s = _components(add_axis(reference_std), var_names)
    if m_names != names or s_names != names:
      raise ValueError("reference_mean and reference_std must have the "
                       f"structure of one draw; got components {m_names} vs "
                       f"{names}.")
    mom = (m[0], s[0])
  ncols = min(ncols, len(idx))
  nrows = -(-len(idx) // ncols)
  fig = _figure((2.6 * ncols, 2.1 * nrows))
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax, i in zip(axes, idx):
    x = q[:, i]
    lo, hi = np.quantile(x, [0.001, 0.999])
    if ref is not None:
      lo, hi = min(lo, np.quantile(ref[:, i], 0.001)), max(
          hi, np.quantile(ref[:, i], 0.999))
      ax.hist(ref[:, i], bins=bins, range=(lo, hi), density=True,
              color="0.75", label="reference")
    if mom is not None:
      m, s = mom[0][i], mom[1][i]
      lo, hi = min(lo, m - 3.5 * s), max(hi, m + 3.5 * s)
      grid = np.linspace(lo, hi, 200)
      ax.plot(grid, stats.norm.pdf(grid, m, s), color="0.3", ls="--",
              label="reference N(mean, sd)")
      ax.axvline(m, color="0.3", lw=0.8)
    grid = np.linspace(lo, hi, 200)
    if np.std(x) > 0:
      ax.plot(grid, stats.gaussian_kde(x)(grid), color="C0", lw=1.6, label="q")
    ax.axvline(np.mean(x), color="C0", lw=0.8)
    ax.set_title(names[i], fontsize=9)
    ax.set_yticks([])
  for ax in axes[len(idx):]:
    ax.set_visible(False)
  axes[0].legend(fontsize=7, frameon=False)
  return fig


def plot_pair(target_log_prob_fn: Callable[..., Any], surrogate,
              params: Params, key: PRNGKey, *, dims: Sequence = (0, 1),
              num_draws: int = 2000, grid_size: int = 80,
              bounds: Optional[Sequence[Sequence[float]]] = None,
              var_names=None, ax=None):
  """A 2-D view of q against the target density on a grid.

  Shows filled contours of the target density `exp(log p)` over two scalar
  components of the latents, q's density as contour lines, and q's draws. For
  more than two latent components both densities are *conditional slices*
  with the other components fixed at q's mean (the draws are q's 2-D
  marginal); the picture is exact for a 2-D target.

  Args:
    target_log_prob_fn: the target (TFP's calling convention).
    surrogate: a `vi_jax.surrogates.Surrogate`.
    params: its (fitted) params.
    key: a PRNG key for q's draws.
    dims: two component names (`"w[0]"`) or indices of the flattened latents.
    num_draws: q draws to scatter and to set the slice point and bounds.
    grid_size: points per axis of the grid.
    bounds: optional `((x_lo, x_hi), (y_lo, y_hi))`; default q's 0.5% and
      99.5% quantiles widened by 30%.
    var_names: optional latent names, one per leaf.
    ax: optional matplotlib Axes.

  Returns:
    The matplotlib Figure.

  Raises:
    ValueError: `dims` not two distinct components.
  """
  z, _ = surrogate.sample_and_log_prob(params, key, num_draws)
  names, flat = _components(z, var_names)
  idx = _select(names, dims)
  if len(idx) != 2 or idx[0] == idx[1]:
    raise ValueError(f"dims must name two distinct components; got {dims!r}.")
  leaves, treedef = jax.tree_util.tree_flatten(z)
  shapes = [l.shape[1:] for l in leaves]
  sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
  offsets = np.cumsum([0] + sizes)
  dtypes = [l.dtype for l in leaves]

  def unflatten(v):  # [n, D] -> pytree with leading [n]
    return jax.tree_util.tree_unflatten(treedef, [
        jnp.reshape(v[:, offsets[k]:offsets[k + 1]],
                    (v.shape[0],) + shapes[k]).astype(dtypes[k])
        for k in range(len(shapes))])

  if bounds is None:
    bounds = []
    for i in idx:
      lo, hi = np.quantile(flat[:, i], [0.005, 0.995])
      pad = 0.3 * (hi - lo) if hi > lo else 1.
      bounds.append((lo - pad, hi + pad))
  gx = np.linspace(*bounds[0], grid_size)
  gy = np.linspace(*bounds[1], grid_size)
  xx, yy = np.meshgrid(gx, gy)
  points = np.tile(flat.mean(0), (grid_size * grid_size, 1))
  points[:, idx[0]] = xx.ravel()
  points[:, idx[1]] = yy.ravel()
  z_grid = unflatten(jnp.asarray(points))
  log_p = np.asarray(batched_target(target_log_prob_fn)(z_grid),
                     np.float64).reshape(xx.shape)
  log_q = np.asarray(surrogate.log_prob(params, z_grid),
                     np.float64).reshape(xx.shape)
  if ax is None:
    fig = _figure((4.8, 4.2))
    ax = fig.add_subplot()
  fig = ax.figure
  finite = np.isfinite(log_p)
  p = np.where(finite, np.exp(log_p - np.max(log_p[finite])), 0.)
  ax.contourf(xx, yy, p, levels=12, cmap="Greys")
  qd = np.where(np.isfinite(log_q), np.exp(log_q - np.nanmax(log_q)), 0.)
  ax.contour(xx, yy, qd, levels=[0.011, 0.135, 0.607], colors="C0",
             linewidths=1.2)  # exp(-4.5), exp(-2), exp(-0.5): 3, 2, 1 sd
  ax.scatter(flat[:, idx[0]], flat[:, idx[1]], s=2, alpha=0.25, color="C1",
             label="q draws")
  ax.set_xlim(bounds[0])
  ax.set_ylim(bounds[1])
  ax.set_xlabel(names[idx[0]])
  ax.set_ylabel(names[idx[1]])
  ax.set_title("target (grey) vs q (blue contours)", fontsize=9)
  return fig
