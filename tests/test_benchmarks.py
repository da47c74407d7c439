"""Smoke test of the benchmarks: every method runs and gives finite numbers.

Runs `python -m benchmarks.run_all --quick` (step cost, accuracy and scaling on
the quick target) in-process. No timing is asserted: only that every method of
every table ran and produced finite values, and that the accuracy metrics are
measured against inference_gym's reference.
"""

import math
import os

from benchmarks import peers
from benchmarks import run_all


def _finite(x):
  return isinstance(x, (int, float)) and math.isfinite(x)


def test_run_all_quick_every_method_finite(tmp_path):
  # A section another benchmark wrote survives the regeneration; a stale
  # one of run_all's own is replaced.
  (tmp_path / "RESULTS.md").write_text(
      "# old\n\n## Step cost\n\nstale\n\n"
      "## Automatic VI: cost to accuracy\n\nkept table\n")
  out = run_all.main(["--quick", "--out", str(tmp_path)])
  text = (tmp_path / "RESULTS.md").read_text()
  assert "kept table" in text and "stale" not in text
  assert text.count("## Step cost") == 1

  step = out["step_cost"]
  methods = {(r["method"], r["family"]) for r in step}
  for family in peers.FAMILIES:
    for m in peers.LIBRARIES + ("bare kernel",):
      assert (m, family) in methods, (m, family)
  for r in step:
    for k in ("s_per_1000", "ratio", "compile_s", "noise"):
      assert _finite(r[k]) and r[k] >= 0, (r, k)

  acc = out["accuracy"]
  assert {(r["method"], r["family"]) for r in acc} == {
      (m, f) for m in peers.LIBRARIES for f in peers.FAMILIES}
  for r in acc:
    for k in ("elbo", "max_mean_err", "mean_mean_err", "median_sd_ratio"):
      assert _finite(r[k]), (r, k)
    # Every method's ELBO is a lower bound on log Z; all fit the same target
    # from the same start with the same budget, so they land close together.
    assert abs(r["elbo"] - acc[0]["elbo"]) < 0.2 * abs(acc[0]["elbo"]) + 5

  scale = out["scaling"]
  for rows in (scale["dim"], scale["sample_size"], scale["minibatch"]):
    assert rows
    for r in rows:
      assert all(_finite(v) for v in r.values() if not isinstance(v, str)), r
  for p in scale["plots"]:
    assert os.path.getsize(p) > 0

  text = open(out["path"]).read()
  for section in ("## Acceptance summary", "## Step cost",
                  "## Accuracy at equal budget", "## Scaling", "## GPU"):
    assert section in text
