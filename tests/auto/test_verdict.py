"""auto_fit's verdict (vi_jax.auto.verdict): the agreement of fits against
the pairwise gaps computed by hand in numpy, the pass/fail rule at its
thresholds, and the words of the table and the warning against the records
they were given."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_jax.auto import verdict
from vi_jax.auto.verdict import StageRecord


def _numpy_gaps(mean, sd):
  """max over pairs a != b and dims of |m_a - m_b| / sqrt((s_a^2 + s_b^2) / 2)
  and of max(s_a / s_b, s_b / s_a) - 1, by loops."""
  mean_gap = sd_gap = 0.
  r, dim = mean.shape
  for a in range(r):
    for b in range(r):
      if a == b:
        continue
      for i in range(dim):
        pooled = math.sqrt((sd[a, i] ** 2 + sd[b, i] ** 2) / 2)
        mean_gap = max(mean_gap, abs(mean[a, i] - mean[b, i]) / pooled)
        sd_gap = max(sd_gap, max(sd[a, i] / sd[b, i], sd[b, i] / sd[a, i]) - 1)
  return mean_gap, sd_gap


@pytest.mark.parametrize("num_fits", [2, 3, 5])
def test_agreement_equals_the_pairwise_gaps_by_hand(num_fits):
  rng = np.random.default_rng(num_fits)
  mean = rng.normal(size=(num_fits, 4))
  sd = rng.uniform(0.5, 2., size=(num_fits, 4))
  got = jax.jit(verdict.agreement)(jnp.asarray(mean, jnp.float32),
                                   jnp.asarray(sd, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), _numpy_gaps(mean, sd), rtol=1e-5)


def test_agreement_of_two_fits_in_closed_form():
  # Means 0.2 apart where both sds are 1; sds 1 and 2 where the means agree:
  # mean gap 0.2, sd gap 2 / 1 - 1 = 1.
  mean = jnp.array([[0., 5.], [0.2, 5.]])
  sd = jnp.array([[1., 1.], [1., 2.]])
  mean_gap, sd_gap = verdict.agreement(mean, sd)
  np.testing.assert_allclose([float(mean_gap), float(sd_gap)], [0.2, 1.],
                             rtol=1e-6)
  # The pooled sd: means 1 apart with sds 1 and 7 -> 1 / sqrt(25) = 0.2.
  mean_gap, _ = verdict.agreement(jnp.array([[0.], [1.]]),
                                  jnp.array([[1.], [7.]]))
  np.testing.assert_allclose(float(mean_gap), 0.2, rtol=1e-6)
  # Identical fits agree exactly.
  same = verdict.agreement(jnp.ones((3, 2)), jnp.ones((3, 2)))
  assert [float(g) for g in same] == [0., 0.]


@pytest.mark.parametrize("where, value", [
    ("mean", np.nan), ("mean", np.inf), ("sd", np.nan), ("sd", 0.),
    ("sd", -1.)])
def test_agreement_of_nonfinite_or_degenerate_moments_is_inf(where, value):
  moments = {"mean": np.zeros((2, 3)), "sd": np.ones((2, 3))}
  moments[where][1, 2] = value
  gaps = verdict.agreement(jnp.asarray(moments["mean"]),
                           jnp.asarray(moments["sd"]))
  assert [float(g) for g in gaps] == [math.inf, math.inf]


@pytest.mark.parametrize("k_hat, mean_gap, sd_gap, passed, words", [
    (0.3, 0.05, 0.05, True, ["pass: k-hat 0.30 < 0.50", "0.05 sd", "sds 5%"]),
    (0.5, 0.05, 0.05, False, ["k-hat 0.50 >= 0.50"]),  # strict: at 0.5 fails
    (0.3, 0.1, 0.1, True, ["pass"]),  # agreement at the tolerances passes
    (math.nan, 0., 0., False, ["k-hat nan >= 0.50"]),
    (0.3, 0.2, 0.05, False, ["fits disagree on means (0.2 sd > 0.1)"]),
    (0.3, 0.05, 0.25, False, ["fits disagree on sds (25% > 10%)"]),
    (0.9, math.inf, math.inf, False,
     ["k-hat 0.90 >= 0.50", "disagree on means", "disagree on sds"]),
])
def test_stage_verdict(k_hat, mean_gap, sd_gap, passed, words):
  ok, note = verdict.stage_verdict(k_hat, 0.5, mean_gap, sd_gap)
  assert ok == passed
  assert note.startswith("pass: " if passed else "fail: ")
  for w in words:
    assert w in note, (w, note)


def test_stage_verdict_tolerances_are_arguments():
  assert verdict.stage_verdict(0.3, 0.5, 0.2, 0.05, mean_tol=0.25)[0]
  assert not verdict.stage_verdict(0.3, 0.5, 0.05, 0.05, sd_tol=0.01)[0]


def _record(family, k_hat, mean_gap=0.01, sd_gap=0.02, passed=False, **kw):
  fields = dict(family=family, method="DADVI, L-BFGS", k_hat=k_hat,
                k_hat_threshold=0.5, elbo=-12.3456, mean_gap=mean_gap,
                sd_gap=sd_gap, num_grad_evals=12345, wall_time=1.5,
                passed=passed, note=f"note of {family}")
  fields.update(kw)
  return StageRecord(**fields)


START = _record("pathfinder", 0.81, math.nan, math.nan,
                method="Pathfinder, L-BFGS", k_hat_threshold=math.nan,
                num_grad_evals=321)


def test_failure_warning_names_what_failed_and_what_to_try():
  history = [START, _record("mean_field", 0.93),
             _record("full_rank", 0.42, mean_gap=0.4)]
  text = verdict.failure_warning(history, "full_rank")
  assert text.startswith("vi.auto_fit: no family passed; returning the "
                         "full_rank fit")
  assert "reliable=False" in text
  assert "  mean_field: k-hat 0.93, note of mean_field" in text
  assert "  full_rank: k-hat 0.42, note of full_rank" in text
  assert "pathfinder" not in text and "0.81" not in text  # the start is no fit
  assert "non-centered parameterization" in text  # k-hat 0.93 >= 0.5
  assert "independent fits disagreed" in text  # mean gap 0.4 > 0.1
  assert "families=(..., 'flow')" in text  # flow not tried
  assert text.rstrip().endswith("or a sampler (NUTS) for a reference on this "
                                "model.")


def test_failure_warning_only_gives_the_advice_that_applies():
  # Both fits agree and the flow was tried: only the k-hat advice is left.
  history = [_record("mean_field", 0.75), _record("flow", 0.66)]
  text = verdict.failure_warning(history, "flow")
  assert "non-centered" in text and "flow: k-hat 0.66" in text
  assert "disagreed" not in text and "families=(" not in text
  # k-hats below their threshold, fits disagree on sds: only that advice.
  history = [_record("mean_field", 0.2, sd_gap=0.3), _record("flow", 0.3)]
  text = verdict.failure_warning(history, "mean_field")
  assert "disagreed" in text and "non-centered" not in text


def test_summary_table_lists_every_stage_and_the_verdict():
  history = [START, _record("mean_field", 0.93),
             _record("full_rank", 0.42, passed=True, note="pass: ...")]
  text = verdict.summary_table(history, "full_rank", 0.42, True, 25011)
  lines = text.splitlines()
  assert lines[:2] == verdict.table_header().splitlines()
  assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])
  rows = lines[2:5]
  assert [r.split()[0] for r in rows] == ["pathfinder", "mean_field",
                                          "full_rank"]
  assert "0.93" in rows[1] and "0.42" in rows[2] and "0.81" in rows[0]
  assert "-12.346" in rows[1] and "12,345" in rows[1] and "2.0%" in rows[1]
  assert rows[2].endswith("pass: ...")
  assert ("reliable: the full_rank fit passed (PSIS k-hat 0.42, independent "
          "fits agree)") in text
  assert lines[-1] == "target-gradient evaluations in all: 25,011"
  text = verdict.summary_table(history, "mean_field", 0.93, False, 7)
  assert ("NOT reliable: no family passed; the mean_field fit (highest ELBO, "
          "k-hat 0.93)") in text


def test_format_record_puts_each_number_under_its_header():
  header = verdict.table_header().splitlines()[0]
  row = verdict.format_record(_record("flow", 0.4567, mean_gap=0.0123,
                                      sd_gap=0.045, wall_time=3.25))
  for title, value in [("k-hat", "0.46"), ("ELBO", "-12.346"),
                       ("mean gap", "0.012"), ("sd gap", "4.5%"),
                       ("grad evals", "12,345"), ("wall s", "3.25")]:
    end = header.index(title) + len(title)
    assert row[end - len(value):end] == value, (title, row)


def test_format_record_writes_missing_numbers_as_a_dash():
  row = verdict.format_record(START)
  header = verdict.table_header().splitlines()[0]
  for title in ("mean gap", "sd gap"):
    end = header.index(title) + len(title)
    assert row[end - 1] == "-" and row[end - 2] == " "
  assert "nan" not in row
