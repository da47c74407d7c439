"""Multi-process SVI: 2 processes x 2 host devices vs 1 process x 4 devices.

Starts processes on 127.0.0.1 (tests/_multiprocess_worker.py; JAX's
multi-controller runtime, gloo CPU collectives) that fit a minibatch logistic
regression, each from its own half of the rows, and checks that

- params and trace equal a one-process, four-device fit with the same
  `num_shards` (to 1e-5), on every process;
- the loop state saved mid-run by the 2-process job with orbax-checkpoint
  (its minibatch permutation laid out over both processes' devices) and
  restored by two fresh processes resumes to the end state of the
  uninterrupted 2-process fit.

Every subprocess runs under a deadline and all of them are killed as soon as
one fails or the deadline passes.
"""

import os
import socket
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_multiprocess_worker.py")
sys.path.insert(0, HERE)
import _multiprocess_worker as worker  # noqa: E402  (constants only)

PHASE_TIMEOUT_S = 150


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env():
  # Local traffic only: no proxies (they can hang jax.distributed).
  env = {k: v for k, v in os.environ.items() if "_proxy" not in k.lower()}
  env.pop("XLA_FLAGS", None)  # the worker sets its own device count
  env["PYTHONPATH"] = os.path.dirname(os.path.dirname(HERE)) + os.pathsep + env.get(
      "PYTHONPATH", "")
  return env


def _run_all(commands, tmp_path, name):
  """Runs the commands together; kills all on a failure or the deadline."""
  procs, logs = [], []
  try:
    for i, cmd in enumerate(commands):
      log = open(tmp_path / f"{name}{i}.log", "w+")
      logs.append(log)
      procs.append(subprocess.Popen([sys.executable, WORKER] + cmd,
                                    env=_env(), stdout=log,
                                    stderr=subprocess.STDOUT))
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  report = []
  for cmd, p, log in zip(commands, procs, logs):
    log.seek(0)
    report.append(f"$ worker {' '.join(cmd)} -> rc {p.returncode}\n"
                  f"{log.read()[-2000:]}")
    log.close()
  assert all(p.returncode == 0 for p in procs), (
      f"{name}: a worker failed or passed {PHASE_TIMEOUT_S} s:\n" +
      "\n".join(report))


def _two_processes(phase, out, ckpt):
  port = str(_free_port())
  return [[phase, out, ckpt, "--devices", "2", "--process-id", str(i),
           "--num-processes", "2", "--port", port] for i in range(2)]


def _assert_close(a, b, tol, what):
  np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=what)


def test_two_processes_match_one_process_and_resume(tmp_path):
  ref, run, res = (str(tmp_path / n) for n in ("ref", "run", "res"))
  ckpt = str(tmp_path / "ckpt")
  _run_all([["reference", ref, ckpt, "--devices", "4"]] +
           _two_processes("run", run, ckpt), tmp_path, "run")
  _run_all(_two_processes("resume", res, ckpt), tmp_path, "resume")
  load = lambda prefix, i: dict(np.load(f"{prefix}.{i}.npz"))
  reference, runs, resumes = load(ref, 0), [load(run, i) for i in range(2)], [
      load(res, i) for i in range(2)]
  params = [k for k in reference if k.startswith("param_")]
  assert sorted(params) == ["param_loc", "param_raw_scale"]
  n_first = worker.N_FIRST
  for i, (r, s) in enumerate(zip(runs, resumes)):
    for k in params + ["trace"]:
      _assert_close(r[k], reference[k], 1e-5, f"process {i} {k} vs 1 process")
    assert r["trace"].shape == (worker.N_STEPS,)
    # The first fit stopped mid-epoch, inside the uninterrupted fit's path.
    _assert_close(r["first_trace"], r["trace"][:n_first], 1e-6, "first fit")
    # The saved minibatch permutation was laid out over both processes.
    assert "data" in str(r["permutation_spec"]), r["permutation_spec"]
    assert int(s["restored_step"]) == n_first
    assert int(s["step"]) == worker.N_STEPS
    for k in params:
      _assert_close(s[k], r[k], 1e-6, f"process {i} resumed {k}")
    _assert_close(s["trace"], r["trace"][n_first:], 1e-6, "resumed trace")
  for k in params + ["trace"]:  # replicated: both processes hold the same
    np.testing.assert_array_equal(runs[0][k], runs[1][k])
    np.testing.assert_array_equal(resumes[0][k], resumes[1][k])


def test_skip_warning_only_on_the_main_process(monkeypatch):
  # One process pretending to be process 1 or 0: the host-side warning of
  # skipped steps (NaN data rows) comes from process 0 only.
  import warnings  # pylint: disable=g-import-not-at-top
  import distrax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  data = jnp.linspace(4., 6., 40).at[jnp.array([3, 17])].set(jnp.nan)
  target = vi.minibatch.scaled_log_prob(
      distrax.Normal(0., 10.).log_prob,
      lambda rows, z: jnp.sum(distrax.Normal(z, 1.).log_prob(rows)))
  s = vi.surrogates.mean_field_normal(())
  for index in (1, 0):
    monkeypatch.setattr(jax, "process_index", lambda i=index: i)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      r = vi.fit(target, s, optax.adam(0.05), 200, key=jax.random.key(2),
                 data=data, batch_size=4, max_consecutive_nonfinite=None,
                 progress_bar=False)
    assert int(r.num_nonfinite) > 0
    skips = [w for w in caught if "skipped" in str(w.message)]
    assert len(skips) == (index == 0), index
