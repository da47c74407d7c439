"""vi_jax demo: vi.auto_fit beside plain Adam fits on real posteriors.

    python -m vi_jax.demo [--steps N] [--sample-size S] [--seed K]
                          [--flow-budget G] [--no-adam]

Targets (data and reference moments ship inside the `inference-gym` package,
the references from long NUTS/Stan runs, so nothing is downloaded):
  * the Normal-Normal model (z ~ N(0, 1), x ~ N(z, 1), x = 5; exact
    posterior N(2.5, 1/sqrt(2))),
  * inference_gym's EightSchools (10 latents, the centered hierarchical model),
  * inference_gym's VectorizedStochasticVolatilitySP500Small (103 latents,
    S&P 500 returns).

Methods: `vi.auto_fit` with its defaults (Laplace check, Pathfinder start,
whitened family ladder, PSIS k-hat and agreement verdict; its flow budget,
16,000 gradient evaluations per flow fit, can be changed with
`--flow-budget`), and plain Adam (cosine decay from
0.05, S draws per step, N steps) with a mean-field and a full-rank Gaussian
in the unconstrained space of the target's `default_event_space_bijector`.

Two fits run at a time, in two threads (the auto_fits first, the largest
target first): most of a fit's wall time is XLA compiling its programs, and
one compilation keeps about one core busy (the demo prints its total wall
time last). Rows print in the targets' order.
"""

import argparse
from concurrent.futures import ThreadPoolExecutor
import math
import time
import warnings

import distrax
import jax
import numpy as np
import optax

from vi_jax.auto.automatic_vi import auto_fit
from vi_jax.criticism import diagnostics
from vi_jax.model import adapters
from vi_jax.stochastic.svi import fit
from vi_jax.surrogates import full_rank_normal
from vi_jax.surrogates import mean_field_normal

COLUMNS = """columns:
  target       the posterior fitted
  method       auto_fit (its chosen family) or Adam with a Gaussian family
  reference    where the true moments come from: exact (closed form) or
               NUTS (inference_gym's ground truth from long MCMC runs)
  dmean/sd     max over latents of |E_q[theta] - mean_ref| / sd_ref (auto_fit:
               its PSIS-resampled draws; Adam: draws of q); 4000 draws
  sd ratio     min..max over latents of sd_q / sd_ref (1 is right)
  k-hat        PSIS k-hat of q (< 0.5 good, auto_fit's bar; < 0.7 usable
               with PSIS corrections; above: q misses mass of p)
  reliable     auto_fit's own verdict (k-hat AND agreement of independent
               fits); '-' for Adam, which gives none
  grad evals   target-gradient evaluations (Adam: steps x draws per step)
  wall s       wall time of the whole fit, compilation included; the demo
               runs two fits at a time (threads), so a fit shares the
               cores with another
  pass         PASS when dmean/sd <= 0.1 and every sd ratio is in
               [0.9, 1.1]; FAIL otherwise. A reliable=no row that FAILs is
               an honest answer; reliable=yes with FAIL would be a bug.
"""

MEAN_TOL, SD_TOL = 0.1, 0.1


def _normal_normal():
  def target_log_prob_fn(z):
    return (distrax.Normal(0., 1.).log_prob(z) +
            distrax.Normal(z, 1.).log_prob(5.))
  return dict(name="normal-normal", reference="exact", fn=target_log_prob_fn,
              event_shape=(), bijector=None, transform=lambda z: z,
              mean=np.array([2.5]), std=np.array([1 / math.sqrt(2.)]))


def _gym_target(name, ctor):
  model = adapters.from_inference_gym(ctor())
  ref = model.reference
  flat = lambda tree: np.concatenate(
      [np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])
  return dict(name=name, reference="NUTS", fn=model.target_log_prob_fn,
              event_shape=model.event_shape, bijector=model.bijector,
              transform=ref.transform, mean=flat(ref.mean),
              std=flat(ref.standard_deviation))


def targets():
  """The demo's targets: dicts of name, reference, fn, event_shape, bijector,
  transform, mean, std."""
  from inference_gym import using_jax as gym  # pylint: disable=g-import-not-at-top
  return [
      _normal_normal(),
      _gym_target("eight schools", gym.targets.EightSchools),
      _gym_target("stoch. volatility SP500 small",
                  gym.targets.VectorizedStochasticVolatilitySP500Small),
  ]


def accuracy(draws, transform, mean_ref, std_ref):
  """`(max |mean err| / std_ref, min sd ratio, max sd ratio)` of draws.

  `transform` maps draws (leading [n]) to the quantity the reference moments
  describe (inference_gym's `sample_transformations["identity"]`).
  """
  z = transform(draws)
  n = jax.tree_util.tree_leaves(z)[0].shape[0]
  x = np.concatenate([np.reshape(np.asarray(l), (n, -1))
                      for l in jax.tree_util.tree_leaves(z)], axis=1)
  err = np.abs(x.mean(0) - mean_ref) / std_ref
  ratio = x.std(0) / std_ref
  return float(err.max()), float(ratio.min()), float(ratio.max())


def _row(t, method, acc, k_hat, reliable, grad_evals, wall):
  ok = acc[0] <= MEAN_TOL and 1 - SD_TOL <= acc[1] and acc[2] <= 1 + SD_TOL
  return dict(target=t["name"], method=method, reference=t["reference"],
              err=acc[0], sd_lo=acc[1], sd_hi=acc[2], k_hat=k_hat,
              reliable=reliable, grad_evals=grad_evals, wall=wall,
              passed=ok)


def run_auto(t, key, max_grad_evals):
  """`vi.auto_fit` on one target; returns a table row."""
  fit_key, draw_key = jax.random.split(key)
  t0 = time.perf_counter()
  budget = {} if max_grad_evals is None else dict(
      max_grad_evals=max_grad_evals)
  r = auto_fit(t["fn"], t["event_shape"], t["bijector"], key=fit_key,
               **budget)
  wall = time.perf_counter() - t0
  acc = accuracy(r.sample(draw_key, 4000), t["transform"], t["mean"],
                 t["std"])
  return _row(t, f"auto_fit ({r.family})", acc, r.k_hat,
              "yes" if r.reliable else "no", r.num_grad_evals, wall)


def run_adam(t, family, num_steps, sample_size, key):
  """Plain Adam with one Gaussian family on one target; returns a table row."""
  make = {"mean-field": mean_field_normal,
          "full-rank": full_rank_normal}[family]
  surrogate = make(t["event_shape"], t["bijector"])
  optimizer = optax.adam(optax.cosine_decay_schedule(0.05, num_steps, 0.05))
  fit_key, eval_key = jax.random.split(key)
  t0 = time.perf_counter()
  result = fit(t["fn"], surrogate, optimizer, num_steps, key=fit_key,
               sample_size=sample_size, progress_bar=False)
  jax.block_until_ready(result.params)
  wall = time.perf_counter() - t0
  z, log_w = diagnostics.importance_log_weights(
      t["fn"], surrogate, result.params, eval_key, 4000)
  k_hat = float(diagnostics.diagnose_log_weights(log_w).pareto_k)
  acc = accuracy(z, t["transform"], t["mean"], t["std"])
  return _row(t, f"Adam {family}", acc, k_hat, "-", num_steps * sample_size,
              wall)


HEADER = (f"| {'target':<29} | {'method':<22} | {'reference':<9} | "
          f"{'dmean/sd':>10} | {'sd ratio':>11} | {'k-hat':>5} | "
          f"{'reliable':>8} | {'grad evals':>10} | {'wall s':>6} | pass |")


def format_row(r) -> str:
  return (f"| {r['target']:<29} | {r['method']:<22} | {r['reference']:<9} | "
          f"{r['err']:>10.3f} | {r['sd_lo']:>5.2f}..{r['sd_hi']:<4.2f} | "
          f"{r['k_hat']:>5.2f} | {r['reliable']:>8} | {r['grad_evals']:>10,} "
          f"| {r['wall']:>6.1f} | {'PASS' if r['passed'] else 'FAIL'} |")


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0], epilog=COLUMNS,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=10000,
                      help="Adam steps per fit (default 10000)")
  parser.add_argument("--sample-size", type=int, default=16,
                      help="Adam draws per step (default 16)")
  parser.add_argument("--seed", type=int, default=0,
                      help="PRNG seed of every fit (default 0)")
  parser.add_argument("--flow-budget", type=int, default=None,
                      help="auto_fit's max_grad_evals for each flow fit "
                      "(default: auto_fit's own, 16000)")
  parser.add_argument("--no-adam", action="store_true",
                      help="only the vi.auto_fit rows")
  args = parser.parse_args(argv)
  key = jax.random.key(args.seed)
  budget = ("defaults" if args.flow_budget is None else
            f"defaults except a flow budget of {args.flow_budget:,} gradient "
            "evaluations")
  print(f"vi_jax demo, seed {args.seed}: vi.auto_fit ({budget}) vs Adam "
        f"(cosine decay from 0.05, {args.steps} steps, {args.sample_size} "
        f"draws/step); jax {jax.__version__} on {jax.devices()[0]}\n")
  print(HEADER)
  print("|" + "|".join("-" * (len(c)) for c in HEADER.split("|")[1:-1]) + "|")
  families = [] if args.no_adam else ["mean-field", "full-rank"]

  jobs = []  # (target index, fit): every fit is one job
  for i, t in enumerate(targets()):
    for family in ["auto"] + families:
      key, sub = jax.random.split(key)
      jobs.append((i, t, family, sub))
  run = lambda t, family, k: (run_auto(t, k, args.flow_budget) if
                              family == "auto" else
                              run_adam(t, family, args.steps,
                                       args.sample_size, k))
  # Two fits at a time (most of a fit's wall time is XLA compiling its
  # programs, which keeps one core busy): the auto_fits first, the largest
  # target first, so that the short fits fill in; rows print in order.
  order = sorted(range(len(jobs)),
                 key=lambda j: (jobs[j][2] != "auto", -jobs[j][0]))
  rows = []
  t_start = time.perf_counter()
  with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=2) as pool:
    warnings.simplefilter("ignore")  # the verdict is in the row
    futures = {j: pool.submit(run, *jobs[j][1:]) for j in order}
    for j in range(len(jobs)):
      rows.append(futures[j].result())
      print(format_row(rows[-1]), flush=True)
  print(f"\n{COLUMNS}")
  print(f"total wall time {time.perf_counter() - t_start:.1f} s")
  return rows


if __name__ == "__main__":
  main()
