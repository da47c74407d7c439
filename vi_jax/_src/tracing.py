"""Whether a call runs under a JAX transformation (jit, vmap, grad, scan).

One place answers it for the whole package: `vi.fit` checks its start on the
host and reports progress only outside a transformation, and the run-once
programs take compiler options only on a top-level jit.
"""

import jax

__all__ = ["is_traced", "under_transformation"]


def is_traced(*trees) -> bool:
  """True when any leaf of `trees` is a JAX tracer.

  Args:
    *trees: pytrees of arrays (or anything: non-array leaves are not tracers).

  Returns:
    Python bool.
  """
  return any(isinstance(l, jax.core.Tracer)
             for l in jax.tree_util.tree_leaves(trees))


def under_transformation(*trees) -> bool:
  """True when called inside a transformation, or when `trees` hold tracers.

  A staged trace (an outer `jax.jit`, `lax.scan`, `vmap`, `grad`,
  `eval_shape`) shows as an unclean trace state even when the arguments are
  concrete (e.g. `grad` with respect to arrays the target closes over).

  Args:
    *trees: the call's arguments.

  Returns:
    Python bool.
  """
  try:
    from jax._src import core as jax_core  # pylint: disable=g-import-not-at-top
    clean = bool(jax_core.trace_state_clean())
  except (ImportError, AttributeError):  # a JAX without it: a staged constant
    clean = not isinstance(jax.numpy.zeros(()), jax.core.Tracer)
  return not clean or is_traced(*trees)
