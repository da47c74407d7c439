"""What `vi.auto_fit` shows while it runs: the stage running and its cost so far.

`verbose=True` prints a line when a stage starts and its record when it ends;
a progress bar (tqdm, by default when stderr is a terminal, as `vi.fit`'s)
names the stage running, the seconds spent, the stages done and the
target-gradient evaluations so far, refreshed every half second from a
background thread while a stage compiles and runs. Host-side display state
only: nothing here enters a compiled program.
"""

import sys
import threading
import time
from typing import Optional

from vi_jax.auto import verdict
from vi_jax.auto.verdict import StageRecord

__all__ = ["StageProgress"]

_REFRESH_SECONDS = 0.5


class StageProgress:
  """Reports the stages of one `vi.auto_fit` call (host display state).

  Args:
    verbose: print each stage's start and record (to stdout).
    progress_bar: None (on when stderr is a terminal), or a bool.
    max_time: the call's time budget in seconds (None: none), shown beside
      the elapsed time.
  """

  def __init__(self, verbose: bool, progress_bar: Optional[bool],
               max_time: Optional[float]):
    if progress_bar is None:
      isatty = getattr(sys.stderr, "isatty", None)
      progress_bar = bool(isatty and isatty())
    if not isinstance(progress_bar, bool):
      raise TypeError(f"progress_bar must be None or a bool; got "
                      f"{progress_bar!r}.")
    self.verbose = verbose
    self.max_time = max_time
    self.t0 = time.perf_counter()
    self.num_grad_evals = 0
    self.stage = None
    self.bar = self._open_bar() if progress_bar else None
    self._stop = threading.Event()
    self._thread = None
    if verbose:
      print(verdict.table_header(), flush=True)

  def _open_bar(self):
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(total=None, desc="vi.auto_fit", unit="stage", file=sys.stderr,
                dynamic_ncols=True, bar_format="{desc}: {n} stages done{postfix}")

  def elapsed(self) -> float:
    """Seconds since the call started."""
    return time.perf_counter() - self.t0

  def _postfix(self) -> str:
    budget = "" if self.max_time is None else f" of {self.max_time:g}"
    running = "" if self.stage is None else f"running {self.stage}, "
    return (f"{running}{self.elapsed():.1f} s{budget}, "
            f"{self.num_grad_evals:,} grad evals")

  def start(self, stage: str) -> None:
    """A stage (its name, e.g. "laplace" or "flow") starts."""
    self.stage = stage
    if self.verbose:
      print(f"... {stage} running ({self.elapsed():.1f} s so far)", flush=True)
    if self.bar is not None:
      self.bar.set_postfix_str(self._postfix())
      self._stop.clear()
      self._thread = threading.Thread(target=self._refresh, daemon=True)
      self._thread.start()

  def _refresh(self) -> None:
    while not self._stop.wait(_REFRESH_SECONDS):
      self.bar.set_postfix_str(self._postfix())

  def end(self, record: StageRecord) -> None:
    """A stage ended with `record`."""
    self._halt()
    self.stage = None
    self.num_grad_evals += record.num_grad_evals
    if self.verbose:
      print(verdict.format_record(record), flush=True)
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix_str(self._postfix())

  def _halt(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None

  def close(self) -> None:
    """Ends the display (also after an error)."""
    self._halt()
    if self.bar is not None:
      self.bar.close()
