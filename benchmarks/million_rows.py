"""The 1,000,000 x 20 logistic regression of the minibatch benchmarks, in blocks.

Used by `benchmarks.multiprocess` (each process loads only its blocks) and
`benchmarks.minibatch_convergence`. Numpy only, imported inside `blocks`:
`benchmarks.multiprocess` sets the host device count before it imports jax.
"""

N, D, NUM_BLOCKS = 1_000_000, 20, 4


def blocks(process_id, num_processes):
  """This process's rows: blocks of N / NUM_BLOCKS rows, each its own seed."""
  import numpy as np
  w = np.linspace(-1., 1., D).astype(np.float32)
  per = NUM_BLOCKS // num_processes
  xs, ys = [], []
  for b in range(process_id * per, (process_id + 1) * per):
    rng = np.random.default_rng(b)
    x = rng.standard_normal((N // NUM_BLOCKS, D)).astype(np.float32)
    xs.append(x)
    ys.append((rng.uniform(size=len(x)) < 1 / (1 + np.exp(-x @ w))).astype(
        np.float32))
  return np.concatenate(xs), np.concatenate(ys)
