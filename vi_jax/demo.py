"""The README's main job: fit real posteriors and check them against references.

    python -m vi_jax.demo [--steps N] [--sample-size S]

Targets (data and reference moments ship inside the `inference-gym` package,
reference moments from long NUTS/Stan runs, so nothing is downloaded):
  * the seed's Normal-Normal model (z ~ N(0, 1), x ~ N(z, 1), x = 5; exact
    posterior N(2.5, 1/sqrt(2))),
  * inference_gym's EightSchools (10 dims),
  * inference_gym's VectorizedStochasticVolatilitySP500Small (103 dims, S&P 500
    returns),
each with a mean-field and a full-rank Gaussian surrogate in the unconstrained
space given by the target's `default_event_space_bijector`.

Accuracy columns: max and mean over dims of |E_q[theta] - mean_ref| / std_ref,
and the median over dims of std_q / std_ref, from 4000 surrogate draws.
"""

import argparse
import math
import time

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import vi_jax as vi


def _normal_normal():
  def target_log_prob_fn(z):
    return (distrax.Normal(0., 1.).log_prob(z) +
            distrax.Normal(z, 1.).log_prob(5.))
  return dict(name="normal-normal (seed 000)", fn=target_log_prob_fn,
              event_shape=(), bijector=None, transform=lambda z: z,
              mean=np.array([2.5]), std=np.array([1 / math.sqrt(2.)]))


def _gym_target(name, ctor):
  target = ctor()
  event_shape = target.event_shape
  truth = target.sample_transformations["identity"]
  flat = lambda tree: np.concatenate(
      [np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])
  if isinstance(event_shape, dict):
    fn = lambda **z: target.unnormalized_log_prob(z)
  else:
    struct = type(event_shape)
    fn = lambda *z: target.unnormalized_log_prob(struct(*z))
  if isinstance(event_shape, dict):
    to_struct = lambda z: z
  else:
    to_struct = lambda z: struct(*z)
  return dict(name=name, fn=fn, event_shape=event_shape,
              bijector=target.default_event_space_bijector,
              transform=lambda z: truth(to_struct(z)),
              mean=flat(truth.ground_truth_mean),
              std=flat(truth.ground_truth_standard_deviation))


def targets():
  """The demo's targets: dicts of name, fn, event_shape, bijector, mean, std."""
  from inference_gym import using_jax as gym  # pylint: disable=g-import-not-at-top
  return [
      _normal_normal(),
      _gym_target("eight schools (inference_gym)", gym.targets.EightSchools),
      _gym_target("stochastic volatility SP500 small (inference_gym)",
                  gym.targets.VectorizedStochasticVolatilitySP500Small),
  ]


def accuracy(surrogate, params, key, transform, mean_ref, std_ref,
             num_draws=4000):
  """(max |mean err|/std_ref, mean |mean err|/std_ref, median std_q/std_ref).

  `transform` maps one draw to the quantity the reference moments describe
  (inference_gym's `sample_transformations["identity"]`).
  """
  z, _ = surrogate.sample_and_log_prob(params, key, num_draws)
  z = jax.vmap(transform)(z)
  draws = np.concatenate(
      [np.reshape(np.asarray(x), (num_draws, -1))
       for x in jax.tree_util.tree_leaves(z)], axis=1)
  err = np.abs(draws.mean(0) - mean_ref) / std_ref
  return err.max(), err.mean(), np.median(draws.std(0) / std_ref)


def run_one(t, family, num_steps, sample_size, key):
  """Fits one target with one family; returns a table row."""
  make = {"mean-field": vi.surrogates.mean_field_normal,
          "full-rank": vi.surrogates.full_rank_normal}[family]
  surrogate = make(t["event_shape"], t["bijector"])
  optimizer = optax.adam(optax.cosine_decay_schedule(0.05, num_steps, 0.05))
  fit_key, eval_key = jax.random.split(key)

  def run(k):
    return vi.fit(t["fn"], surrogate, optimizer, num_steps, key=k,
                  sample_size=sample_size, progress_bar=False)

  t0 = time.perf_counter()
  compiled = jax.jit(run).lower(fit_key).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  result = jax.block_until_ready(compiled(fit_key))
  run_s = time.perf_counter() - t0
  final_loss = float(jnp.mean(result.trace[-100:]))
  mx, mean, sd = accuracy(surrogate, result.params, eval_key, t["transform"],
                          t["mean"], t["std"])
  return (t["name"], family, num_steps, run_s, compile_s, final_loss, mx, mean,
          sd)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10000)
  parser.add_argument("--sample-size", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  key = jax.random.key(args.seed)
  header = ("target", "surrogate", "steps", "run s", "compile s",
            "final loss", "max|dmean|/sd", "mean|dmean|/sd", "med sd ratio")
  print(f"vi_jax demo: Adam (cosine decay from 0.05), sample_size="
        f"{args.sample_size}, jax {jax.__version__} on {jax.devices()[0]}\n")
  rows = []
  t_start = time.perf_counter()
  for t in targets():
    for family in ("mean-field", "full-rank"):
      key, sub = jax.random.split(key)
      rows.append(run_one(t, family, args.steps, args.sample_size, sub))
      r = rows[-1]
      print(f"| {r[0]:<50} | {r[1]:<10} | {r[2]:>5} | {r[3]:6.2f} | "
            f"{r[4]:6.2f} | {r[5]:10.3f} | {r[6]:6.3f} | {r[7]:6.3f} | "
            f"{r[8]:6.3f} |", flush=True)
  print("\ncolumns: " + ", ".join(header))
  print(f"total wall time {time.perf_counter() - t_start:.1f} s")
  return rows


if __name__ == "__main__":
  main()
