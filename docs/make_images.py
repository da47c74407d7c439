"""Makes the README's diagnostics and interop figures (docs/images/*.png).

    python docs/make_images.py

Eight schools written in NumPyro syntax (the centered model of inference_gym's
EightSchools, whose ground truth gives the reference moments), fitted with a
full-rank Gaussian; and inference_gym's 2-D Banana for the pair plot.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from inference_gym import using_jax as gym

import vi_jax as vi

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images")
Y = np.array([28., 8., -3., 7., -1., 1., 18., 12.], np.float32)
SIGMA = np.array([15., 10., 16., 11., 9., 11., 10., 18.], np.float32)


def eight_schools(sigma, y=None):
  mu = numpyro.sample("avg_effect", dist.Normal(0., 10.))
  tau = numpyro.sample("tau", dist.LogNormal(5., 1.))
  with numpyro.plate("J", len(sigma)):
    theta = numpyro.sample("school_effects", dist.Normal(mu, tau))
    numpyro.sample("y", dist.Normal(theta, sigma), obs=y)
  numpyro.deterministic("log_stddev", jnp.log(tau))


def main():
  os.makedirs(OUT, exist_ok=True)
  m = vi.adapters.from_numpyro(eight_schools, SIGMA, y=Y)
  s = vi.surrogates.full_rank_normal(m.event_shape, m.bijector)
  r = vi.fit(m.target_log_prob_fn, s,
             optax.adam(optax.cosine_decay_schedule(0.05, 3000, 0.05)), 3000,
             key=jax.random.key(0), sample_size=16)
  vi.plots.plot_loss(r.trace, log_scale=True).savefig(
      os.path.join(OUT, "loss.png"), dpi=110)
  ref = vi.adapters.from_inference_gym(gym.targets.EightSchools()).reference
  keys = ("avg_effect", "log_stddev", "school_effects")
  draws = m.constrain(vi.export.sample(s, r.params, jax.random.key(1), 4000))
  vi.plots.plot_marginals(
      {k: draws[k] for k in keys},
      reference_mean={k: ref.mean[k] for k in keys},
      reference_std={k: ref.standard_deviation[k] for k in keys},
      max_panels=8).savefig(os.path.join(OUT, "marginals.png"), dpi=110)
  print(vi.diagnostics.diagnose(m.target_log_prob_fn, s, r.params,
                                jax.random.key(2), 4000))
  print(vi.export.summary(s, r.params, jax.random.key(1), transform=m.constrain))

  banana = vi.adapters.from_inference_gym(gym.targets.Banana())
  sb = vi.surrogates.full_rank_normal(banana.event_shape, banana.bijector)
  rb = vi.fit(banana.target_log_prob_fn, sb,
              optax.adam(optax.cosine_decay_schedule(0.05, 2000, 0.05)), 2000,
              key=jax.random.key(3), sample_size=16)
  d = vi.diagnostics.diagnose(banana.target_log_prob_fn, sb, rb.params,
                              jax.random.key(4), 4000)
  fig = vi.plots.plot_pair(banana.target_log_prob_fn, sb, rb.params,
                           jax.random.key(5), dims=(0, 1))
  fig.axes[0].set_title(f"Banana: target (grey) vs full-rank q (blue); "
                        f"k-hat = {float(d.pareto_k):.2f}", fontsize=9)
  fig.savefig(os.path.join(OUT, "pair.png"), dpi=110)
  print(d)


if __name__ == "__main__":
  main()
