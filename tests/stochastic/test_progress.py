"""Progress bar: output captured from a compiled fit; no callback when off."""

import io
import sys

import distrax
import jax
import optax
import pytest

import vi_jax as vi
from vi_jax.stochastic import convergence
from vi_jax.stochastic import progress


def normal_normal_log_prob(z, x=5.):
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(x)


S = vi.surrogates.mean_field_normal(())


def test_bar_output_is_captured_from_the_compiled_loop():
  buf = io.StringIO()
  r = vi.fit(normal_normal_log_prob, S, optax.adam(0.05), 400,
             key=jax.random.key(0), sample_size=4,
             progress_bar=progress.ProgressBar(every=100, file=buf,
                                               desc="nn", mininterval=0.))
  out = buf.getvalue()
  assert "nn" in out and "400/400" in out and "loss=" in out
  assert "step/s" in out or "s/step" in out
  # Updates at steps 100, 200, 300, 400 (tqdm redraws with a carriage return).
  for k in (100, 200, 300):
    assert f"{k}/400" in out
  final = float(r.trace[-1])
  assert f"loss={final:.4g}" in out


def test_bar_closes_at_the_early_stop():
  buf = io.StringIO()
  r = vi.fit(normal_normal_log_prob, S, optax.adam(0.05), 5000,
             key=jax.random.key(0), sample_size=4,
             convergence_criterion=convergence.loss_not_decreasing(
                 rtol=0.05, min_num_steps=50),
             progress_bar=progress.ProgressBar(every=10, file=buf))
  taken = int(r.num_steps_taken)
  assert taken < 5000 and f"{taken}/5000" in buf.getvalue()


def _jaxpr_text(progress_bar):
  return str(jax.make_jaxpr(lambda k: vi.fit(
      normal_normal_log_prob, S, optax.adam(0.05), 50, key=k,
      progress_bar=progress_bar).params)(jax.random.key(0)))


def test_no_callback_is_compiled_when_off():
  assert "callback" not in _jaxpr_text(False)
  assert "callback" not in _jaxpr_text(None)  # default inside an outer trace
  # Positive control: the same inspection sees the bar's callback.
  assert "callback" in _jaxpr_text(progress.ProgressBar(file=io.StringIO()))
  hlo = jax.jit(lambda k: vi.fit(normal_normal_log_prob, S, optax.adam(0.05),
                                 50, key=k, progress_bar=False).params).lower(
                                     jax.random.key(0)).as_text()
  assert "callback" not in hlo.lower()


def test_default_follows_the_terminal(monkeypatch):

  class Tty(io.StringIO):

    def isatty(self):
      return True

  monkeypatch.setattr(sys, "stderr", Tty())
  assert progress.resolve_progress_bar(None) == progress.ProgressBar()
  monkeypatch.setattr(sys, "stderr", io.StringIO())
  assert progress.resolve_progress_bar(None) is None
  assert progress.resolve_progress_bar(False) is None
  with pytest.raises(TypeError, match="progress_bar"):
    progress.resolve_progress_bar("yes")
  with pytest.raises(ValueError, match="every"):
    progress.resolve_progress_bar(progress.ProgressBar(every=0))


class _Tty(io.StringIO):
  def isatty(self):
    return True


@pytest.mark.parametrize("num_processes", [1, 2])
def test_default_bar_is_off_with_several_processes(monkeypatch, num_processes):
  # A TTY stderr turns the default bar on for one process (the control); with
  # several processes the default is off on all (one program for all).
  tty = _Tty()
  monkeypatch.setattr(sys, "stderr", tty)
  monkeypatch.setattr(jax, "process_count", lambda: num_processes)
  vi.fit(normal_normal_log_prob, S, optax.adam(0.05), 50,
         key=jax.random.key(0))
  assert ("50/50" in tty.getvalue()) == (num_processes == 1)


@pytest.mark.parametrize("process_index", [0, 1])
def test_only_the_main_process_draws(monkeypatch, process_index):
  buf = io.StringIO()
  monkeypatch.setattr(jax, "process_index", lambda: process_index)
  vi.fit(normal_normal_log_prob, S, optax.adam(0.05), 50,
         key=jax.random.key(0),
         progress_bar=progress.ProgressBar(every=10, file=buf))
  assert ("50/50" in buf.getvalue()) == (process_index == 0)
