"""Can a fit be trusted? The verdict rules of `vi.auto_fit`, and their words.

A stage of the automatic fit runs R independent fits of one family (different
keys: different initial jitter and Monte Carlo draws) and passes when both

* **PSIS k-hat** of its best fit (highest ELBO) is below
  `min(max_k_hat, 0.7, 1 - 1/log10(S))` for S draws (Yao, Vehtari, Simpson,
  Gelman 2018; Vehtari et al. 2024, `vi_jax.criticism.diagnostics.pareto_k_threshold`;
  `vi.auto_fit`'s max_k_hat is 0.5, Yao et al.'s "good"): q is close to p and
  its PSIS corrections can be used; and
* the independent fits **agree**: every PSIS-corrected unconstrained mean
  within `mean_tol` (0.1) pooled sds of each other and every PSIS-corrected
  sd ratio within `sd_tol` (10%). The corrected moments are what the user
  gets (`AutoFitResult.sample` resamples by the PSIS weights), so the fits
  must agree on those, not on q's own moments, which carry the fixed-draw
  error of DADVI (about 1/sqrt(M) sd for M draws) that PSIS removes.
  Disagreement means the fits stopped in different places (a multimodal or
  badly scaled objective, too few draws) even where each fit alone looks
  plausible (Welandawe et al. 2024 use the same idea in RAABBVI).

The functions here are pure JAX for the numbers and plain Python for the
words: `agreement` runs inside a stage's compiled program, `stage_verdict`,
`failure_warning` and `summary_table` on the host after it.
"""

import math
from typing import NamedTuple, Sequence

import jax.numpy as jnp

from vi_jax._src.types import Array

__all__ = [
    "MEAN_TOL",
    "SD_TOL",
    "TIME_BUDGET_SPENT",
    "StageRecord",
    "agreement",
    "stage_verdict",
    "failure_warning",
    "summary_table",
    "table_header",
    "format_record",
]

# The words every record cut short or left out by `auto_fit(max_time=...)`
# carries in its note (`StageRecord.out_of_time` marks those records).
TIME_BUDGET_SPENT = "the time budget was spent"
MEAN_TOL = 0.1  # max |mean_a - mean_b| / pooled sd between independent fits
SD_TOL = 0.1  # max |sd_a / sd_b - 1| (both orders) between independent fits


class StageRecord(NamedTuple):
  """What one stage of `vi.auto_fit` did (`AutoFitResult.history`).

  Attributes:
    family: "pathfinder" (the start), "mean_field", "full_rank", "low_rank"
      or "flow".
    method: how it was fitted ("Pathfinder, L-BFGS", "DADVI, L-BFGS",
      "Adam, warmup-cosine").
    k_hat: PSIS k-hat of the stage's best fit (nan when not computed).
    k_hat_threshold: the threshold it was held to.
    elbo: ELBO estimate of the best fit, `mean(log p - log q)` (nats).
    mean_gap: max over dims and fit pairs of `|mean_a - mean_b| / sd`
      (unconstrained coordinates; nan for the start).
    sd_gap: max over dims and fit pairs of `|sd_a / sd_b - 1|`.
    num_grad_evals: target-gradient evaluations of the stage, all fits.
    wall_time: seconds, compilation included.
    passed: the stage's fit can be trusted (always False for the start).
    note: the verdict in words.
    out_of_time: the time budget (`auto_fit(max_time=...)`) cut the stage's
      fits short or left the stage out; its note says which.
  """
  family: str
  method: str
  k_hat: float
  k_hat_threshold: float
  elbo: float
  mean_gap: float
  sd_gap: float
  num_grad_evals: int
  wall_time: float
  passed: bool
  note: str
  out_of_time: bool = False


def agreement(mean: Array, sd: Array) -> tuple[Array, Array]:
  """How far apart R independent fits are.

  Args:
    mean: `[R, dim]` each fit's mean (unconstrained coordinates).
    sd: `[R, dim]` each fit's standard deviation.

  Returns:
    `(mean_gap, sd_gap)`, scalars: the max over dims and pairs (a, b) of
    `|mean_a - mean_b| / sqrt((sd_a^2 + sd_b^2) / 2)` and of
    `max(sd_a / sd_b, sd_b / sd_a) - 1`. Non-finite moments give inf.
  """
  pooled = jnp.sqrt(0.5 * (sd[:, None] ** 2 + sd[None, :] ** 2))
  mean_gap = jnp.abs(mean[:, None] - mean[None, :]) / pooled
  ratio = sd[:, None] / sd[None, :]
  sd_gap = jnp.maximum(ratio, 1. / ratio) - 1.
  finite = jnp.all(jnp.isfinite(mean)) & jnp.all(jnp.isfinite(sd)) & jnp.all(
      sd > 0)
  off_diag = ~jnp.eye(mean.shape[0], dtype=bool)[:, :, None]
  inf = jnp.asarray(jnp.inf, mean.dtype)
  mean_gap = jnp.where(finite, jnp.max(jnp.where(off_diag, mean_gap, 0.)), inf)
  sd_gap = jnp.where(finite, jnp.max(jnp.where(off_diag, sd_gap, 0.)), inf)
  return mean_gap, sd_gap


def stage_verdict(k_hat: float, threshold: float, mean_gap: float,
                  sd_gap: float, *, mean_tol: float = MEAN_TOL,
                  sd_tol: float = SD_TOL) -> tuple[bool, str]:
  """`(passed, note)` for one stage from its k-hat and its fits' agreement."""
  reasons = []
  if not k_hat < threshold:  # nan fails
    reasons.append(f"k-hat {k_hat:.2f} >= {threshold:.2f}")
  if not mean_gap <= mean_tol:
    reasons.append(f"fits disagree on means ({mean_gap:.2g} sd > {mean_tol})")
  if not sd_gap <= sd_tol:
    reasons.append(f"fits disagree on sds ({sd_gap:.0%} > {sd_tol:.0%})")
  if reasons:
    return False, "fail: " + "; ".join(reasons)
  return True, (f"pass: k-hat {k_hat:.2f} < {threshold:.2f}, fits agree "
                f"({mean_gap:.2g} sd, sds {sd_gap:.0%})")


def failure_warning(history: Sequence[StageRecord], chosen: str) -> str:
  """The warning `vi.auto_fit` gives when no family passes: what failed, what to try."""
  tried = [r for r in history if r.family != "pathfinder" and
           r.method != "not run"]
  lines = [f"vi.auto_fit: no family passed; returning the {chosen} fit "
           "(highest ELBO) with reliable=False. Tried:"]
  lines += [f"  {r.family}: k-hat {r.k_hat:.2f}, {r.note}" for r in tried]
  advice = ["What to try:"]
  if any(r.out_of_time for r in history):
    left_out = [r.family for r in history if r.method == "not run"]
    advice.append(
        f"  {TIME_BUDGET_SPENT} before a family passed"
        + (f" ({', '.join(left_out)} not run)" if left_out else "")
        + ": a larger max_time (or None), or a smaller num_draws / "
        "max_grad_evals.")
  if any(not r.k_hat < r.k_hat_threshold for r in tried):
    advice.append(
        "  a high k-hat means q misses mass of p. If the model "
        "has hierarchical scales (a funnel: group effects drawn around a group "
        "sd), use a non-centered parameterization (effect = mean + sd * "
        "z_raw, z_raw ~ N(0, 1)); check for multimodality or heavy tails.")
  if any(not (r.mean_gap <= MEAN_TOL and r.sd_gap <= SD_TOL) for r in tried):
    advice.append(
        "  independent fits disagreed: use more draws (num_draws), more "
        "restarts (num_restarts) or a larger gradient budget (max_grad_evals).")
  if "flow" not in [r.family for r in history]:
    advice.append("  a richer family: families=(..., 'flow').")
  advice.append("  or a sampler (NUTS) for a reference on this model.")
  return "\n".join(lines + advice)


def _fmt(x: float, spec: str) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else (
      format(x, spec))


_HEADER = (f"{'stage':<11} {'method':<24} {'k-hat':>6} {'ELBO':>11} "
           f"{'mean gap':>9} {'sd gap':>7} {'grad evals':>11} {'wall s':>7}  "
           "verdict")


def table_header() -> str:
  """The header line of `summary_table` (and of `auto_fit(verbose=True)`)."""
  return _HEADER + "\n" + "-" * len(_HEADER)


def format_record(r: StageRecord) -> str:
  """One row of `summary_table`."""
  return (f"{r.family:<11} {r.method:<24} {_fmt(r.k_hat, '6.2f'):>6} "
          f"{_fmt(r.elbo, '11.3f'):>11} {_fmt(r.mean_gap, '9.3f'):>9} "
          f"{_fmt(r.sd_gap, '7.1%'):>7} {r.num_grad_evals:>11,} "
          f"{r.wall_time:>7.2f}  {r.note}")


def summary_table(history: Sequence[StageRecord], family: str, k_hat: float,
                  reliable: bool, num_grad_evals: int) -> str:
  """The history as a text table, with the verdict in words."""
  rows = [table_header()] + [format_record(r) for r in history]
  if reliable:
    verdict = (f"reliable: the {family} fit passed (PSIS k-hat {k_hat:.2f}, "
               "independent fits agree); sample() returns PSIS-resampled "
               "draws.")
  else:
    verdict = (f"NOT reliable: no family passed; the {family} fit (highest "
               f"ELBO, k-hat {k_hat:.2f}) is returned and should not be "
               "trusted.")
    if any(r.out_of_time for r in history):
      verdict += (f" {TIME_BUDGET_SPENT[0].upper()}{TIME_BUDGET_SPENT[1:]} "
                  "(max_time): stages were cut short or not run.")
  rows += ["", verdict, f"target-gradient evaluations in all: "
           f"{num_grad_evals:,}"]
  return "\n".join(rows)
