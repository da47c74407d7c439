"""Progress reporting from inside the compiled fit loop (a tqdm bar).

The scan runs in chunks of `every` steps (a nested `lax.scan`, so no per-step
cost); between chunks a device-side comparison decides whether to call the
host (`io_callback`) with the step count and the current loss; the host
updates a `tqdm` bar (which shows steps/s itself) and answers with the step
at which to call next, about `mininterval` seconds later at the measured
rate. The early-stopping while loop makes the same comparison every step. When progress is off no
callback is traced at all, so the compiled program has none.

The bar object is host-side display state, created on the first report of a
run and closed at its end (by the host after a top-level `fit` returns, by a
last callback under an outer transformation), so a compiled fit can be called
again (or under an outer `jax.jit`) and draws a fresh bar each time.
"""

import sys
from typing import Any, NamedTuple, Optional

import time

import jax
from jax.experimental import io_callback
import jax.numpy as jnp
import numpy as np

from vi_jax._src.validation import positive_int

__all__ = ["ProgressBar", "resolve_progress_bar"]


class ProgressBar(NamedTuple):
  """Settings of the progress bar.

  Attributes:
    every: the loop checks whether to update the bar every `every` steps (a
      device-side comparison); None picks `max(1, num_steps // 100)`.
    file: where tqdm writes (default `sys.stderr`).
    desc: the bar's label.
    mininterval: seconds between updates: the host schedules the next update
      from the measured steps/s (also tqdm's minimum redraw interval).
  """
  every: Optional[int] = None
  file: Any = None
  desc: str = "vi.fit"
  mininterval: float = 0.2


def resolve_progress_bar(progress_bar) -> Optional[ProgressBar]:
  """None -> on iff stderr is a TTY; True/False; or a `ProgressBar`.

  Raises:
    TypeError: anything else.
  """
  if progress_bar is None:
    isatty = getattr(sys.stderr, "isatty", None)
    progress_bar = bool(isatty and isatty())
  if progress_bar is True:
    return ProgressBar()
  if progress_bar is False:
    return None
  if isinstance(progress_bar, ProgressBar):
    if progress_bar.every is not None:
      positive_int("ProgressBar.every", progress_bar.every)
    return progress_bar
  raise TypeError("progress_bar must be None, a bool or a "
                  f"vi_jax.stochastic.progress.ProgressBar; got {progress_bar!r}.")


class _HostBar:
  """Host side of the callback: owns the tqdm bar of the current run."""

  def __init__(self, total: int, settings: ProgressBar):
    self.total = total
    self.settings = settings
    self.bar = None

  def start(self):
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    self.close()
    from vi_jax.stochastic.sharding import is_main_process  # pylint: disable=g-import-not-at-top
    # The callback is compiled in on every process (one program for all);
    # only process 0 draws.
    self.bar = tqdm(total=self.total, desc=self.settings.desc,
                    file=self.settings.file or sys.stderr, unit="step",
                    dynamic_ncols=True, mininterval=self.settings.mininterval,
                    disable=not is_main_process())
    self.t0 = self.step0 = None

  def report(self, step: int, loss: float, every: int) -> int:
    """Updates the bar; returns the step count to report at next."""
    self(step, loss, False)
    now = time.perf_counter()
    if self.t0 is None:  # the first report of a run: the rate is unknown yet
      self.t0, self.step0 = now, step
      return step + every
    rate = (step - self.step0) / max(now - self.t0, 1e-9)  # steps per second
    ahead = int(rate * self.settings.mininterval)
    return step + max(every, ahead // every * every)

  def __call__(self, step, loss, done):
    step, done = int(step), bool(done)
    if self.bar is None or step < self.bar.n:
      self.start()
    self.bar.set_postfix(loss=f"{float(loss):.4g}", refresh=False)
    self.bar.update(step - self.bar.n)
    if done:
      self.bar.close()
      self.bar = None

  def close(self):
    if self.bar is not None:
      self.bar.close()
      self.bar = None


class Reporter(NamedTuple):
  """The traced side of the bar (see `make_reporter`)."""
  every: int  # steps per chunk: the finest update granularity
  maybe_report: Any  # (steps_done, loss, next_report) -> next_report
  finish: Any  # (steps_done, loss) -> None: last update and close
  host: Any  # the _HostBar


def make_reporter(settings: ProgressBar, num_steps: int) -> Reporter:
  """The callbacks of one fit's bar.

  `fit`'s scan runs chunks of `every` steps; between chunks it calls
  `maybe_report`, a `lax.cond` on `steps_done >= next_report` (device side,
  no host round trip) whose true branch is an `io_callback` that updates the
  bar and returns the next step to report at, chosen by the host from the
  measured steps/s so that updates come about every `mininterval` seconds.
  So a fit pays ~1/mininterval host round trips per second, whatever its
  step time. `finish` (used under an outer transformation; a top-level `fit`
  closes the bar on the host) is traced once, after the loop.
  """
  every = settings.every or max(1, num_steps // 100)
  host = _HostBar(num_steps, settings)

  def done_callback(step, loss):
    host(step, loss, True)

  def report_callback(step, loss):
    return np.asarray(host.report(int(step), float(loss), every), np.int32)

  def maybe_report(steps_done, loss, next_report):
    return jax.lax.cond(
        steps_done >= next_report,
        lambda: io_callback(report_callback,
                            jax.ShapeDtypeStruct((), jnp.int32), steps_done,
                            loss),
        lambda: next_report)

  def finish(steps_done, loss):
    jax.debug.callback(done_callback, steps_done, loss)

  return Reporter(every, maybe_report, finish, host)
