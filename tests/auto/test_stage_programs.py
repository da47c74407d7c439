"""A stage's fits run by the host in chunks: the same solution as one whole
solve, one compile per program, and a deadline that stops them."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax._src import time_budget
from vi_jax.auto import stage_programs
from vi_jax.auto import stages
from vi_jax.model import bijectors
from vi_jax.solvers import sample_average

PRECISION = jnp.array([1., 10., 100.])
SPACE = bijectors.latent_space((3,))
CONFIG = stages.Config(num_draws=1000, dadvi_draws=30, max_dadvi_draws=480,
                       max_iterations=500, flow_steps=200, dtype=None,
                       max_k_hat=0.5)
LOC, SCALE_TRIL = jnp.zeros(3), jnp.eye(3)


def _target(z):
  return -0.5 * jnp.sum(PRECISION * z ** 2)


def _start(family):
  rung = stages.ladder([family], 3)[0]
  keys = jax.random.split(jax.random.key(0), 2)
  params0 = stage_programs.init_params(SPACE, rung, CONFIG, LOC, SCALE_TRIL,
                                       keys)
  return rung, keys, params0


def _backend_compiles(fn):
  events = []
  listener = lambda name, *_, **__: events.append(name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    out = fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return out, events.count("/jax/core/compile/backend_compile_duration")


def test_chunked_dadvi_fits_match_whole_solves_and_the_closed_form():
  rung, keys, params0 = _start("mean_field")
  surrogate = stage_programs.whitened(rung, CONFIG, SPACE, LOC, SCALE_TRIL)
  at = time_budget.deadline(600.)  # finite: the host runs chunks
  out, compiles = _backend_compiles(lambda: stage_programs.fit(
      _target, SPACE, rung, CONFIG, 30, LOC, SCALE_TRIL, params0, keys, at))
  assert compiles <= 2  # start and advance, each once (no retrace per chunk)
  assert not out.out_of_time and out.iterations < CONFIG.max_iterations
  for r in range(2):
    whole, _ = jax.jit(lambda p, k: sample_average.fixed_draw_solve(
        _target, surrogate, p, k, num_draws=30,
        max_iterations=CONFIG.max_iterations))(
            jax.tree_util.tree_map(lambda x: x[r], params0), keys[r])
    chunked = jax.tree_util.tree_map(lambda x: x[r], out.params)
    np.testing.assert_allclose(np.asarray(chunked["loc"]),
                               np.asarray(whole["loc"]), atol=1e-5)
    # Mean-field on a diagonal Gaussian is exact: the mean is 0 and the sds
    # 1 / sqrt(precision), up to the error of 30 fixed draws (about
    # 1 / sqrt(30) sd in the mean: 4 standard errors allowed).
    z, _ = surrogate.sample_and_log_prob(chunked, jax.random.key(2), 4000)
    sd = 1. / np.sqrt(np.asarray(PRECISION))
    assert np.all(np.abs(np.asarray(z.mean(0))) < 4 / np.sqrt(30) * sd)
    np.testing.assert_allclose(np.asarray(z.std(0)) * np.sqrt(
        np.asarray(PRECISION)), 1., rtol=0.4)


def test_a_passed_deadline_stops_the_flow_before_its_steps():
  rung, keys, params0 = _start("flow")
  out = stage_programs.fit(_target, SPACE, rung, CONFIG, 0, LOC, SCALE_TRIL,
                           params0, keys, time_budget.deadline(1e-9))
  assert out.out_of_time and out.iterations == 0 and out.num_grad_evals == 0
  whole = stage_programs.fit(_target, SPACE, rung, CONFIG, 0, LOC, SCALE_TRIL,
                             params0, keys, math.inf)
  assert not whole.out_of_time
  assert whole.num_grad_evals == 2 * CONFIG.flow_steps * (
      stage_programs.FLOW_SAMPLE_SIZE)
