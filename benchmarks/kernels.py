"""The bare kernel: the irreducible work every method's step does, to time against.

`bare_kernel` is `lax.scan` over `jax.vmap(jax.grad(log p))` on S points plus
an optax update, in the variants the step-cost tables report (with the loss
value, in vi_jax's chunks); `surrogate_params` gives it a surrogate's params
pytree, so that its optax update is the method's.
"""

import jax
import jax.numpy as jnp
import optax

from benchmarks import targets


def _chunk_steps(num_steps: int, most: int) -> int:
  """The largest divisor of `num_steps` that is at most `most`."""
  return max(d for d in range(1, min(num_steps, most) + 1)
             if num_steps % d == 0)


def bare_kernel(unconstrained_log_prob, dim, optimizer, sample_size,
                num_steps, params=None, with_loss=False, chunk=None):
  """The irreducible work: scan of vmap(grad(log p)) on S points + optax update.

  Args:
    unconstrained_log_prob: `u: [dim] -> scalar`.
    dim: the unconstrained dimension.
    optimizer: the optax optimizer the methods use.
    sample_size: S, points per step.
    num_steps: scan length.
    params: the params pytree the optax update runs on (default: one vector
      `[dim]`). Pass the surrogate's params (e.g. `{"loc": [dim],
      "raw_scale": [dim]}`) for "the same optax update" as the method: the
      update then costs what the method's own update costs. The S points are
      the first `[dim]` leaf plus standard normal noise; every `[dim]` leaf
      gets the mean gradient, other leaves its first entry.

    with_loss: also compute the log densities of the S points with
      `jax.vmap(jax.value_and_grad(log p))` and trace their negated mean every
      step ("bare kernel + loss": what any ELBO that reports its value pays
      on top of the kernel, whatever the engine).
    chunk: None, or at most this many steps per inner `lax.scan` (the
      largest divisor of `num_steps`), an outer scan over the chunks ("bare
      kernel (chunked)"): XLA:CPU runs a loop body op by op, without its
      task-graph executor, only when every buffer the loop touches is at most
      512 bytes; a scan over all `[num_steps, 2]` keys is not. vi_jax's fit
      loop runs in such chunks (`vi_jax.stochastic.loop`), so this is the kernel with
      the same advantage.

  Returns:
    `key -> final params` (with_loss: `(final params, [num_steps] losses)`),
    to jit.
  """
  value_and_grad = jax.vmap(jax.value_and_grad(unconstrained_log_prob))
  if params is None:
    params = jnp.zeros((dim,))
  params = jax.tree_util.tree_map(jnp.zeros_like, params)
  leaves = jax.tree_util.tree_leaves(params)
  first = next(i for i, l in enumerate(leaves) if l.shape == (dim,))

  def run(key):
    opt_state = optimizer.init(params)

    def body(carry, k):
      params, opt_state = carry
      loc = jax.tree_util.tree_leaves(params)[first]
      points = loc + jax.random.normal(k, (sample_size, dim))
      value, g = value_and_grad(points)
      g = -jnp.mean(g, axis=0)
      grads = jax.tree_util.tree_map(
          lambda l: g if l.shape == (dim,) else jnp.broadcast_to(g[0], l.shape),
          params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return ((optax.apply_updates(params, updates), opt_state),
              -jnp.mean(value) if with_loss else None)

    keys = jax.random.split(key, num_steps)
    if chunk is None:
      (final, _), losses = jax.lax.scan(body, (params, opt_state), keys)
    else:
      k = _chunk_steps(num_steps, chunk)
      (final, _), losses = jax.lax.scan(
          lambda carry, ks: jax.lax.scan(body, carry, ks),
          (params, opt_state), keys.reshape((num_steps // k, k)))
      losses = None if losses is None else losses.reshape(-1)
    return (final, losses) if with_loss else final

  return run


def surrogate_params(family: str, target: targets.Target):
  """The vi_jax surrogate's initial params pytree for `family` on `target`."""
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  make = (vi.surrogates.mean_field_normal if family == "mean-field" else
          vi.surrogates.full_rank_normal)
  return make(target.event_shape, target.bijector).init(jax.random.key(0))
