"""A stage's fits run by the host over the compiled target: the same solution
as the in-program solver, the -ELBO's gradient by the chain rule, no compile
on a second call, and a deadline that stops them."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax._src import time_budget
from vi_jax.auto import stage_programs
from vi_jax.auto import stages
from vi_jax.criticism import diagnostics
from vi_jax.model import bijectors
from vi_jax.model.compiled_density import BATCH
from vi_jax.model.compiled_density import compiled_density
from vi_jax.objectives.losses import negative_elbo
from vi_jax.solvers import sample_average

PRECISION = jnp.array([1., 10., 100.])
SPACE = bijectors.latent_space((3,))
CONFIG = stages.Config(num_draws=1000, dadvi_draws=30, max_dadvi_draws=480,
                       max_iterations=500, flow_steps=200, dtype=None,
                       max_k_hat=0.5)
LOC, SCALE_TRIL = jnp.zeros(3), jnp.eye(3)


def _target(z):
  return -0.5 * jnp.sum(PRECISION * z ** 2)


DENSITY = compiled_density(_target, SPACE)


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


def test_host_dadvi_fits_match_the_in_program_solver_and_the_closed_form():
  rung, keys, params0 = _start("mean_field")
  surrogate = stage_programs.whitened(rung, CONFIG, SPACE, LOC, SCALE_TRIL)
  fit = lambda: stage_programs.fit(DENSITY, rung, CONFIG, 30, LOC, SCALE_TRIL,
                                   params0, keys, time_budget.deadline(600.))
  out = fit()
  _, compiles = _backend_compiles(fit)
  assert compiles == 0  # a second fit reuses every program
  assert not out.out_of_time and out.iterations < CONFIG.max_iterations
  for r in range(2):
    # vi.dadvi's in-program L-BFGS on the same fixed draws: the same optimum.
    whole, _ = jax.jit(lambda p, k: sample_average.fixed_draw_solve(
        _target, surrogate, p, k, num_draws=30,
        max_iterations=CONFIG.max_iterations))(
            jax.tree_util.tree_map(lambda x: x[r], params0), keys[r])
    host = jax.tree_util.tree_map(lambda x: x[r], out.params)
    for a, b in zip(jax.tree_util.tree_leaves(host),
                    jax.tree_util.tree_leaves(whole)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-3)
    # Mean-field on a diagonal Gaussian is exact: the mean is 0 and the sds
    # 1 / sqrt(precision), up to the error of 30 fixed draws (about
    # 1 / sqrt(30) sd in the mean: 4 standard errors allowed).
    z, _ = surrogate.sample_and_log_prob(host, jax.random.key(2), 4000)
    sd = 1. / np.sqrt(np.asarray(PRECISION))
    assert np.all(np.abs(np.asarray(z.mean(0))) < 4 / np.sqrt(30) * sd)
    np.testing.assert_allclose(np.asarray(z.std(0)) * np.sqrt(
        np.asarray(PRECISION)), 1., rtol=0.4)


def test_the_chain_rule_gradient_is_the_negative_elbos():
  """The host's gradient (the target's gradient at the draws, pulled back
  through the family's draws) equals jax.grad of vi's -ELBO through the
  target, for the flow (the hardest family) at its initial params."""
  rung, keys, params0 = _start("flow")
  surrogate = stage_programs.whitened(rung, CONFIG, SPACE, LOC, SCALE_TRIL)
  params = jax.tree_util.tree_map(lambda x: x[0], params0)
  theta, layout = stage_programs._ravel(params)
  n, key = stage_programs.FLOW_SAMPLE_SIZE, keys[1]
  draws, grad = stage_programs._dadvi_programs(rung, CONFIG, 3, layout, n)
  x, _ = draws(LOC, SCALE_TRIL, theta, key)
  _, g = DENSITY.value_and_grad(np.asarray(x))
  ours = np.asarray(grad(theta, LOC, SCALE_TRIL, key, g))
  direct = jax.grad(lambda p: negative_elbo()(_target, surrogate, p, key, n))(
      params)
  np.testing.assert_allclose(ours, stage_programs._ravel(direct)[0],
                             rtol=1e-4, atol=1e-5)


def test_judge_draws_is_psis_of_the_log_weights():
  x = np.asarray(jax.random.normal(jax.random.key(3), (2, 1000, 3))) * 1.3
  log_q = -0.5 * np.sum((x / 1.3) ** 2, -1) - 3 * np.log(1.3 * np.sqrt(
      2 * np.pi))
  elbo, k_hat, _, _ = stage_programs.judge_draws(DENSITY, x, log_q)
  for r in range(2):
    log_w = np.asarray(jax.vmap(_target)(x[r])) - log_q[r]
    assert abs(float(elbo[r]) - log_w.mean()) < 1e-3 * abs(log_w.mean())
    assert abs(float(k_hat[r]) - float(diagnostics.psis(
        jnp.asarray(log_w)).pareto_k)) < 1e-5


def test_a_passed_deadline_stops_the_flow_before_its_steps():
  rung, keys, params0 = _start("flow")
  out = stage_programs.fit(DENSITY, rung, CONFIG, 0, LOC, SCALE_TRIL,
                           params0, keys, time_budget.deadline(1e-9))
  assert out.out_of_time and out.iterations == 0 and out.num_grad_evals == 0
  whole = stage_programs.fit(DENSITY, rung, CONFIG, 0, LOC, SCALE_TRIL,
                             params0, keys, math.inf)
  assert not whole.out_of_time
  assert whole.num_grad_evals == 2 * CONFIG.flow_steps * (
      stage_programs.FLOW_SAMPLE_SIZE)


def test_flow_chunks_under_a_deadline_are_sized_to_at_most_two_seconds():
  next_stop = stage_programs._next_stop  # pylint: disable=protected-access
  assert next_stop(0, 0., math.inf, 2000) == 2000  # no deadline: one call
  assert next_stop(0, 0., 50., 2000) == 10  # the first chunk compiles
  # 10 ms a step, 100 s left: half of it would be 5,000 steps; a chunk is
  # sized to 2 s (200 steps), so a machine that slows down mid-chunk overruns
  # the deadline by seconds, not by half the budget.
  assert next_stop(10, 0.01, 100., 2000) == 210
  assert next_stop(10, 0.01, 1., 2000) == 60  # half the time left
  assert next_stop(1990, 0.001, 100., 2000) == 2000  # never past the limit


def test_the_evaluation_reserve_is_timed_on_one_batch_and_compiles_evaluate():
  rung, keys, params0 = _start("full_rank")
  calls = []

  def counted(chunk):
    calls.append(chunk.shape[0])
    return DENSITY.value_kernel(chunk)

  density = dataclasses.replace(DENSITY, value_kernel=counted)
  eval_key = jax.random.key(4)
  seconds = stage_programs.evaluation_seconds(
      density, rung, CONFIG, LOC, SCALE_TRIL, params0, eval_key)
  assert 0. < seconds < math.inf
  # The target on two batches (the first call compiles), not on the R x S
  # rows an evaluation takes.
  assert calls == [BATCH, BATCH]
  del calls[:]
  out, compiles = _backend_compiles(lambda: stage_programs.evaluate(
      density, rung, CONFIG, LOC, SCALE_TRIL, params0, eval_key))
  assert compiles == 0  # the reserve compiled every program it times
  assert len(calls) == -(-2 * CONFIG.num_draws // BATCH)
  assert np.all(np.isfinite(np.asarray(out[1])))
