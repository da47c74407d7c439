"""Progress reporting from inside the compiled fit loop (a tqdm bar).

The loop calls `jax.debug.callback` at most once every `every` steps (inside
a `lax.cond`), handing the host the step count and the current loss; the host
side updates a `tqdm` bar (which shows steps/s itself). When progress is off no
callback is traced at all, so the compiled program has none.

The bar object is host-side display state, created on the first callback of a
run and closed on the last one, so a compiled fit can be called again (or
under an outer `jax.jit`) and draws a fresh bar each time.
"""

import sys
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

__all__ = ["ProgressBar", "resolve_progress_bar"]


class ProgressBar(NamedTuple):
  """Settings of the progress bar.

  Attributes:
    every: update the bar at most every `every` steps; None picks
      `max(1, num_steps // 100)` (about 100 updates per fit).
    file: where tqdm writes (default `sys.stderr`).
    desc: the bar's label.
    mininterval: tqdm's minimum seconds between redraws.
  """
  every: Optional[int] = None
  file: Any = None
  desc: str = "vi.fit"
  mininterval: float = 0.1


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
    if progress_bar.every is not None and (
        not isinstance(progress_bar.every, int) or progress_bar.every < 1):
      raise ValueError(
          f"ProgressBar.every must be a Python int >= 1; got {progress_bar.every!r}.")
    return progress_bar
  raise TypeError("progress_bar must be None, a bool or a "
                  f"vi_jax.progress.ProgressBar; got {progress_bar!r}.")


class _HostBar:
  """Host side of the callback: owns the tqdm bar of the current run."""

  def __init__(self, total: int, settings: ProgressBar):
    self.total = total
    self.settings = settings
    self.bar = None

  def start(self):
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    self.close()
    self.bar = tqdm(total=self.total, desc=self.settings.desc,
                    file=self.settings.file or sys.stderr, unit="step",
                    dynamic_ncols=True, mininterval=self.settings.mininterval)

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


def make_reporter(settings: ProgressBar, num_steps: int):
  """Returns `(start(), report(step, loss), finish(steps_done, loss), host)`.

  `start` is traced once before the loop (opens the bar, so steps/s counts
  from the start); `report` is called in the loop body with the step index
  (0-based within this fit) and fires a callback when
  `(step + 1) % every == 0`; `finish` is traced once after the loop and
  closes the bar at the real number of steps.
  """
  every = settings.every or max(1, num_steps // 100)
  host = _HostBar(num_steps, settings)

  def callback(step, loss, done):
    host(step, loss, done)

  def start(token):
    jax.debug.callback(lambda _: host.start(), token)

  def report(step, loss):
    jax.lax.cond((step + 1) % every == 0,
                 lambda: jax.debug.callback(callback, step + 1, loss,
                                            jnp.bool_(False)),
                 lambda: None)

  def finish(steps_done, loss):
    jax.debug.callback(callback, steps_done, loss, jnp.bool_(True))

  return start, report, finish, host
