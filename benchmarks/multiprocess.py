"""Multi-process minibatch SVI throughput (rows/s) on JAX's distributed runtime.

    python -m benchmarks.multiprocess [--steps 500] [--repeats 3]
        [--batch-size 1024] [--sample-size 1]

The 1,000,000 x 20 logistic regression (rows drawn with a per-block seed, so
every layout fits the same global data), mean-field normal, Adam, `vi.fit(...,
data=..., batch_size=..., num_shards=4)`, run as

- 1 process x 1 device (num_shards=4 on one device: the baseline),
- 1 process x 4 host devices (`vi.sharding.shard_data` over the 4 devices),
- 2 processes x 2 host devices each (`jax.distributed` on 127.0.0.1, gloo CPU
  collectives; each process holds only its half of the rows).

Each configuration is started as its own processes (the host device count is
fixed when jax is imported). The fit is compiled once (`jax.jit(...).lower
.compile()`), run once as a warm-up, then `--repeats` times after a barrier;
rows/s = batch_size x steps / median seconds, measured on process 0. Host
devices share the machine's cores, so on a 2-core machine the sharded runs
show the partitioning and collective overhead, not a speed-up: this script
reports, it does not assert scaling.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

from benchmarks.million_rows import blocks
from benchmarks.million_rows import D
from benchmarks.million_rows import NUM_BLOCKS

CONFIGS = ((1, 1), (1, 4), (2, 2))  # (processes, host devices per process)
TIMEOUT_S = 600


def worker(args):
  """One process of one configuration; process 0 prints a RESULT line."""
  os.environ["XLA_FLAGS"] = (
      f"--xla_force_host_platform_device_count={args.devices}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  if args.num_processes > 1:
    jax.distributed.initialize(
        f"127.0.0.1:{args.port}", num_processes=args.num_processes,
        process_id=args.process_id,
        coordinator_bind_address=f"127.0.0.1:{args.port}",
        initialization_timeout=120)
  import statistics
  import distrax
  import jax.numpy as jnp
  import optax
  from jax.experimental import multihost_utils
  import vi_jax as vi

  data = vi.sharding.shard_data(blocks(args.process_id, args.num_processes))
  target = vi.minibatch.scaled_log_prob(
      lambda w: distrax.Normal(0., 1.).log_prob(w).sum(),
      lambda r, w: jnp.sum(r[1] * (r[0] @ w) - jax.nn.softplus(r[0] @ w)))
  fit = jax.jit(lambda data: vi.fit(
      target, vi.surrogates.mean_field_normal((D,)), optax.adam(1e-2),
      args.steps, key=jax.random.key(0), sample_size=args.sample_size,
      data=data, batch_size=args.batch_size, num_shards=NUM_BLOCKS,
      progress_bar=False))
  t0 = time.perf_counter()
  compiled = fit.lower(data).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(data))
  runs = []
  for _ in range(args.repeats):
    multihost_utils.sync_global_devices("benchmarks.multiprocess")
    t0 = time.perf_counter()
    result = jax.block_until_ready(compiled(data))
    runs.append(time.perf_counter() - t0)
  med = statistics.median(runs)
  if vi.sharding.is_main_process():
    print("RESULT" + json.dumps(dict(
        processes=args.num_processes, devices=jax.device_count(),
        rows_per_s=args.batch_size * args.steps / med,
        ms_per_step=1e3 * med / args.steps, compile_s=compile_s,
        runs_s=runs, final_loss=float(result.trace[-1]))), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(num_processes, devices, args):
  """Runs one configuration's processes; kills them all on failure/timeout."""
  port = str(_free_port())
  common = ["--worker", "--devices", str(devices), "--num-processes",
            str(num_processes), "--port", port, "--steps", str(args.steps),
            "--repeats", str(args.repeats), "--batch-size",
            str(args.batch_size), "--sample-size", str(args.sample_size)]
  # Local traffic only: no proxies (they can hang jax.distributed).
  env = {k: v for k, v in os.environ.items() if "_proxy" not in k.lower()}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "benchmarks.multiprocess", "--process-id", str(i)]
      + common, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(num_processes)]
  outs = []
  try:
    deadline = time.monotonic() + TIMEOUT_S
    for p in procs:
      outs.append(p.communicate(timeout=max(1., deadline - time.monotonic()))[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  if any(p.returncode for p in procs):
    raise RuntimeError(f"{num_processes} x {devices} failed:\n" +
                       "\n".join(o[-3000:] for o in outs))
  line = [l for l in outs[0].splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def table(rows) -> str:
  lines = ["| processes x devices | rows/s | ms/step | compile s | final loss |",
           "|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['processes']} x {r['devices'] // r['processes']} | "
        f"{r['rows_per_s']:,.0f} | {r['ms_per_step']:.3f} | "
        f"{r['compile_s']:.1f} | {r['final_loss']:.1f} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=500)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--batch-size", type=int, default=1024)
  p.add_argument("--sample-size", type=int, default=1)
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument("--num-processes", type=int, default=1,
                 help=argparse.SUPPRESS)
  p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    return worker(args)
  rows = [_launch(n, d, args) for n, d in CONFIGS]
  print(f"1,000,000 x {D} logistic regression, batch {args.batch_size}, "
        f"S = {args.sample_size}, num_shards = {NUM_BLOCKS}, {args.steps} "
        f"steps, median of {args.repeats}:")
  print(table(rows))
  return rows


if __name__ == "__main__":
  main()
