"""Scaling: step time against dimension and sample size; minibatch throughput.

    python -m benchmarks.scaling [--quick] [--out DIR]

1. Step time (s / 1000 steps) of vi_jax mean-field (S = 16, loss traced) and
   of the bare kernel against the latent dimension, on a synthetic diagonal
   Gaussian and a synthetic logistic regression (1000 rows).
2. Step time against the sample size S on the breast-cancer logistic
   regression.
3. Minibatch throughput (data rows per second) against the dataset size N, for
   a logistic regression with 20 features, minibatches of 512 rows drawn with
   replacement, S = 16, through `vi.fit(loss=...)` with a hand-written
   minibatch -ELBO (the target's likelihood rescaled by N / batch), next to
   full-batch `vi.fit` (rows/s = N x steps / time). vi_jax has no minibatch
   module on this branch; when it lands, measure it here.

Writes `scaling_dim.png`, `scaling_sample_size.png`, `scaling_minibatch.png`
to `--out` (default: the benchmarks folder) and prints the tables.
"""

import argparse
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import kernels
from benchmarks import report
from benchmarks import targets
from benchmarks import timing
import vi_jax as vi

SAMPLE_SIZE = 16
BATCH_SIZE = 512


def _steps(cost, quick):
  """Steps for a run of roughly constant work; `cost` ~ flops per step."""
  if quick:
    return 20
  return int(np.clip(3e8 / max(cost, 1), 50, 2000))


def _time_pair(target, sample_size, steps, repeats):
  optimizer = optax.adam(1e-2)
  surrogate = vi.surrogates.mean_field_normal(target.event_shape,
                                              target.bijector)
  key = jax.random.key(0)
  fns = {
      "bare kernel": kernels.bare_kernel(target.unconstrained_log_prob,
                                         target.dim, optimizer, sample_size,
                                         steps,
                                         kernels.surrogate_params("mean-field",
                                                                  target)),
      "vi_jax": lambda k: vi.fit(target.target_log_prob_fn, surrogate,
                                 optimizer, steps, key=k,
                                 sample_size=sample_size).trace,
  }
  compiled = {n: timing.compile_fn(f, key)[0] for n, f in fns.items()}
  runs = timing.time_interleaved(compiled, (key,), repeats)
  return {n: statistics.median(t) / steps * 1000 for n, t in runs.items()}


def dimension_scaling(dims, repeats, quick):
  rows = []
  for kind in ("Gaussian", "logistic regression"):
    for d in dims:
      if kind == "Gaussian":
        target = targets.synthetic_gaussian(d)
        cost = SAMPLE_SIZE * d * 10
      else:
        target = targets.synthetic_logistic_regression(d - 1, 1000)
        cost = SAMPLE_SIZE * d * 1000 * 4
      steps = _steps(cost, quick)
      t = _time_pair(target, SAMPLE_SIZE, steps, repeats)
      rows.append(dict(kind=kind, dim=d, steps=steps, kernel=t["bare kernel"],
                       vi_jax=t["vi_jax"], ratio=t["vi_jax"] /
                       t["bare kernel"]))
      print(rows[-1], flush=True)
  return rows


def sample_size_scaling(sizes, repeats, quick):
  target = targets.breast_cancer_logistic_regression()
  rows = []
  for s in sizes:
    steps = _steps(s * 31 * 569 * 4, quick)
    t = _time_pair(target, s, steps, repeats)
    rows.append(dict(sample_size=s, steps=steps, kernel=t["bare kernel"],
                     vi_jax=t["vi_jax"], ratio=t["vi_jax"] / t["bare kernel"]))
    print(rows[-1], flush=True)
  return rows


def _lr_log_prob(x, y, scale):

  def log_p(w):
    logits = x @ w
    return (-0.5 * jnp.sum(w**2) +
            scale * jnp.sum(y * logits - jax.nn.softplus(logits)))

  return log_p


def minibatch_negative_elbo(x, y, batch_size):
  """A hand-written minibatch -ELBO `LossFn` for a logistic regression."""
  n = x.shape[0]

  def loss(target_log_prob_fn, surrogate, params, key, sample_size):
    del target_log_prob_fn  # the full-data target; the minibatch one is below
    k_rows, k_draws = jax.random.split(key)
    idx = jax.random.randint(k_rows, (batch_size,), 0, n)
    log_p = vi.target.batched_target(
        _lr_log_prob(x[idx], y[idx], n / batch_size))
    z, log_q = surrogate.sample_and_log_prob(params, k_draws, sample_size)
    return -jnp.mean(log_p(z) - log_q)

  return loss


def minibatch_throughput(sizes, repeats, quick, num_features=20):
  rng = np.random.default_rng(0)
  optimizer = optax.adam(1e-2)
  surrogate = vi.surrogates.mean_field_normal((num_features,))
  key = jax.random.key(0)
  rows = []
  for n in sizes:
    x = jnp.asarray(rng.normal(size=(n, num_features)), jnp.float32)
    y = jnp.asarray(rng.uniform(size=n) < 0.5, jnp.float32)
    steps_mb = 20 if quick else 1000
    steps_fb = 20 if quick else int(np.clip(3e7 / n, 20, 1000))

    def run_mb(k, x, y):
      return vi.fit(_lr_log_prob(x, y, 1.), surrogate, optimizer, steps_mb,
                    key=k, sample_size=SAMPLE_SIZE,
                    loss=minibatch_negative_elbo(x, y, BATCH_SIZE)).trace

    def run_fb(k, x, y):
      return vi.fit(_lr_log_prob(x, y, 1.), surrogate, optimizer, steps_fb,
                    key=k, sample_size=SAMPLE_SIZE).trace

    compiled = {"minibatch": timing.compile_fn(run_mb, key, x, y)[0],
                "full batch": timing.compile_fn(run_fb, key, x, y)[0]}
    runs = timing.time_interleaved(compiled, (key, x, y), repeats)
    mb = statistics.median(runs["minibatch"])
    fb = statistics.median(runs["full batch"])
    rows.append(dict(n=n, minibatch_rows_per_s=BATCH_SIZE * steps_mb / mb,
                     full_batch_rows_per_s=n * steps_fb / fb,
                     minibatch_s_per_1000=mb / steps_mb * 1000,
                     full_batch_s_per_1000=fb / steps_fb * 1000))
    print(rows[-1], flush=True)
  return rows


def tables(dim_rows, s_rows, mb_rows) -> str:
  parts = [
      "Step time against latent dimension (mean-field, S = 16):\n",
      report.markdown_table(
          ("target", "dim", "steps", "kernel s/1000", "vi_jax s/1000",
           "ratio"),
          [(r["kind"], r["dim"], r["steps"], r["kernel"], r["vi_jax"],
            r["ratio"]) for r in dim_rows]),
      "\n\nStep time against sample size (breast-cancer logistic "
      "regression, mean-field):\n",
      report.markdown_table(
          ("S", "steps", "kernel s/1000", "vi_jax s/1000", "ratio"),
          [(r["sample_size"], r["steps"], r["kernel"], r["vi_jax"], r["ratio"])
           for r in s_rows]),
      f"\n\nMinibatch throughput (logistic regression, 20 features, batch "
      f"{BATCH_SIZE}, S = 16, hand-written minibatch loss via "
      "vi.fit(loss=...)):\n",
      report.markdown_table(
          ("N rows", "minibatch rows/s", "full-batch rows/s",
           "minibatch s/1000 steps", "full-batch s/1000 steps"),
          [(r["n"], r["minibatch_rows_per_s"], r["full_batch_rows_per_s"],
            r["minibatch_s_per_1000"], r["full_batch_s_per_1000"])
           for r in mb_rows]),
  ]
  return "".join(parts)


def plots(dim_rows, s_rows, mb_rows, out):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  paths = []
  fig, ax = plt.subplots(figsize=(6, 4))
  for kind in dict.fromkeys(r["kind"] for r in dim_rows):
    sel = [r for r in dim_rows if r["kind"] == kind]
    ax.loglog([r["dim"] for r in sel], [r["kernel"] for r in sel], "o--",
              label=f"{kind}: bare kernel")
    ax.loglog([r["dim"] for r in sel], [r["vi_jax"] for r in sel], "s-",
              label=f"{kind}: vi_jax mean-field")
  ax.set(xlabel="latent dimension", ylabel="s / 1000 steps",
         title="Step time against dimension (S = 16)")
  ax.legend(fontsize=7)
  paths.append(os.path.join(out, "scaling_dim.png"))
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  ax.loglog([r["sample_size"] for r in s_rows], [r["kernel"] for r in s_rows],
            "o--", label="bare kernel")
  ax.loglog([r["sample_size"] for r in s_rows], [r["vi_jax"] for r in s_rows],
            "s-", label="vi_jax mean-field")
  ax.set(xlabel="sample size S", ylabel="s / 1000 steps",
         title="Step time against sample size (breast cancer)")
  ax.legend()
  paths.append(os.path.join(out, "scaling_sample_size.png"))
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  ax.loglog([r["n"] for r in mb_rows],
            [r["minibatch_rows_per_s"] for r in mb_rows], "s-",
            label=f"minibatch ({BATCH_SIZE} rows)")
  ax.loglog([r["n"] for r in mb_rows],
            [r["full_batch_rows_per_s"] for r in mb_rows], "o--",
            label="full batch")
  ax.set(xlabel="dataset size N", ylabel="rows / s",
         title="Throughput against dataset size (S = 16)")
  ax.legend()
  paths.append(os.path.join(out, "scaling_minibatch.png"))
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)
  return paths


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=os.path.dirname(__file__))
  parser.add_argument("--repeats", type=int, default=None)
  args = parser.parse_args(argv)
  repeats = args.repeats or (1 if args.quick else 3)
  if args.quick:
    dims, sizes, ns = (10,), (1,), (1000,)  # one point each: CI-sized
  else:
    dims, sizes, ns = ((10, 100, 1000, 10000), (1, 4, 16, 64, 256),
                       (1000, 10000, 100000, 1000000))
  dim_rows = dimension_scaling(dims, repeats, args.quick)
  s_rows = sample_size_scaling(sizes, repeats, args.quick)
  mb_rows = minibatch_throughput(ns, repeats, args.quick)
  text = tables(dim_rows, s_rows, mb_rows)
  print(text, flush=True)
  paths = plots(dim_rows, s_rows, mb_rows, args.out)
  return dict(dim=dim_rows, sample_size=s_rows, minibatch=mb_rows,
              table=text, plots=paths)


if __name__ == "__main__":
  main()
