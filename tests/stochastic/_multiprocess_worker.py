"""One process of tests/stochastic/test_multiprocess.py (not collected by pytest).

    python tests/_multiprocess_worker.py PHASE OUT_PREFIX CKPT_DIR \
        --devices D [--process-id I --num-processes P --port PORT]

Every process fits the same minibatch logistic regression on its own slice of
the rows (process i holds rows [i N/P, (i+1) N/P)) and writes its results to
`OUT_PREFIX.<process_id>.npz`. PHASE:

- `reference`: one process holding all rows; the whole fit.
- `run`: the whole fit, and a fit of the first `N_FIRST` steps whose loop
  state is saved with `vi.checkpoint.save(CKPT_DIR, ..., format="orbax")`.
- `resume`: fresh processes restore that checkpoint (template: the abstract
  `vi.build(...).init` state) and fit the remaining steps.
"""

import argparse
import os

N, D = 4096, 4  # rows, coefficients
BATCH_SIZE, NUM_SHARDS, SAMPLE_SIZE = 512, 4, 4
N_STEPS, N_FIRST = 60, 27  # an epoch is N / BATCH_SIZE = 8 steps


def _args():
  p = argparse.ArgumentParser()
  p.add_argument("phase", choices=("reference", "run", "resume"))
  p.add_argument("out")
  p.add_argument("ckpt")
  p.add_argument("--devices", type=int, required=True)
  p.add_argument("--process-id", type=int, default=0)
  p.add_argument("--num-processes", type=int, default=1)
  p.add_argument("--port", type=int, default=0)
  return p.parse_args()


def _params(result):
  return {f"param_{k}": v for k, v in result.params.items()}


def _gloo_on_loopback():
  """Makes gloo listen on 127.0.0.1 (by default it binds the address the
  host name resolves to). jax 0.10 does not pass jaxlib's `hostname` argument
  through, so the factory it calls is wrapped; skipped if that moves."""
  from jax._src import xla_bridge
  make = getattr(xla_bridge._jax, "make_gloo_tcp_collectives", None)
  if make is not None:
    xla_bridge._jax.make_gloo_tcp_collectives = (
        lambda distributed_client, **kw: make(
            distributed_client, **{"hostname": "127.0.0.1", **kw}))


def main():
  args = _args()
  # Host devices must be set before jax is imported.
  os.environ["XLA_FLAGS"] = (
      f"--xla_force_host_platform_device_count={args.devices}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  if args.num_processes > 1:
    # CPU collectives between processes: gloo (jax's default on CPU since
    # 0.5; set explicitly so an older default of "none" fails loudly here).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _gloo_on_loopback()
    jax.distributed.initialize(
        f"127.0.0.1:{args.port}", num_processes=args.num_processes,
        process_id=args.process_id,
        coordinator_bind_address=f"127.0.0.1:{args.port}",
        initialization_timeout=60)
  import distrax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import vi_jax as vi

  assert jax.process_count() == args.num_processes
  assert jax.device_count() == args.devices * args.num_processes
  rng = np.random.default_rng(0)
  x = rng.standard_normal((N, D)).astype(np.float32)
  y = (rng.uniform(size=N) < 1 / (1 + np.exp(-x @ np.linspace(-1, 1, D)))
       ).astype(np.float32)
  rows = N // args.num_processes
  mine = slice(args.process_id * rows, (args.process_id + 1) * rows)
  data = vi.sharding.shard_data((x[mine], y[mine]))
  assert vi.sharding.num_devices(data) == 4

  target = vi.minibatch.scaled_log_prob(
      lambda w: distrax.Normal(0., 1.).log_prob(w).sum(),
      lambda r, w: jnp.sum(r[1] * (r[0] @ w) - jax.nn.softplus(r[0] @ w)))
  surrogate = vi.surrogates.mean_field_normal((D,))
  opt = optax.adam(optax.exponential_decay(0.05, N_STEPS, 0.1))
  key = jax.random.key(0)
  kw = dict(key=key, sample_size=SAMPLE_SIZE, data=data,
            batch_size=BATCH_SIZE, num_shards=NUM_SHARDS,
            progress_bar=False)  # the same program on every process
  fit = lambda n, **extra: vi.fit(target, surrogate, opt, n, **kw, **extra)

  out = {}
  if args.phase in ("reference", "run"):
    whole = fit(N_STEPS)
    out.update(trace=whole.trace, **_params(whole))
  if args.phase == "run":
    first = fit(N_FIRST)
    out["first_trace"] = first.trace
    out["permutation_spec"] = str(
        first.state.data_state.permutation.sharding.spec)
    vi.checkpoint.save(args.ckpt, first.state, format="orbax")
  if args.phase == "resume":
    alg = vi.build(target, surrogate, opt, sample_size=SAMPLE_SIZE, data=data,
                   batch_size=BATCH_SIZE, num_shards=NUM_SHARDS)
    like = jax.eval_shape(alg.init, key)
    state = vi.checkpoint.load(args.ckpt, like, format="orbax")
    out["restored_step"] = state.step
    second = fit(N_STEPS - N_FIRST, init_state=state)
    out.update(trace=second.trace, step=second.state.step, **_params(second))
  # Params, trace and step are replicated: every process holds all of them.
  np.savez(f"{args.out}.{args.process_id}.npz",
           **{k: np.asarray(v) for k, v in out.items()})


if __name__ == "__main__":
  main()
