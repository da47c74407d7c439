"""Structured joint surrogates over named latents, and point masses for observed values.

`joint` combines independent per-latent surrogates (e.g. full-rank over the
global parameters, mean-field over the local ones; NumPyro's AutoGuideList,
TFP's JointDistributionNamed of surrogates). `point_mass` carries an observed
or fixed value inside the surrogate: the trick of
`tfp.vi.fit_surrogate_posterior`'s GP-Poisson example, which represents the
observations by a `Deterministic` distribution (the exact posterior of an
observed value is a point mass at it), so the target can be the model's joint
log density called on every variable.
"""

from typing import Any

import distrax
import jax
import jax.numpy as jnp

from vi_jax.surrogates.base import Surrogate, check_sample_size

__all__ = ["joint", "point_mass"]


def point_mass(value) -> Surrogate:
  """A fixed value as a surrogate: every draw equals `value`, `log_q = 0`.

  Unlike `delta` (a learned MAP point), the value is a constant: the params
  are an empty tuple and nothing is optimized. Use it for observed values
  inside a `joint` surrogate (TFP's `tfd.Deterministic` / `VectorDeterministic`
  in the GP-Poisson example of `tfp.vi.fit_surrogate_posterior`).

  Args:
    value: an array (any dtype, e.g. integer counts) or a pytree of arrays.

  Returns:
    A `Surrogate` with `init(key) = ()`; `sample_and_log_prob` gives `value`
    broadcast to a leading `[sample_size]` and `log_q = zeros([sample_size])`;
    `log_prob(params, z)` is 0 where z equals `value` and -inf elsewhere
    (distrax.Deterministic's convention); `distribution_fn` gives a
    `distrax.Deterministic` for an array value; `reparameterized=True` (the
    draw does not depend on params at all).
  """
  value = jax.tree_util.tree_map(jnp.asarray, value)
  leaves, treedef = jax.tree_util.tree_flatten(value)
  if not leaves:
    raise ValueError(f"value must be an array or a pytree of arrays; got {value!r}.")

  def init_fn(key):
    del key
    return ()

  def sample_and_log_prob(params, key, sample_size):
    del params, key
    sample_size = check_sample_size(sample_size)
    z = jax.tree_util.tree_map(
        lambda v: jnp.broadcast_to(v, (sample_size,) + v.shape), value)
    return z, jnp.zeros((sample_size,), _float_dtype(leaves))

  def log_prob(params, z):
    del params
    z_leaves = treedef.flatten_up_to(z)
    batch = jnp.shape(z_leaves[0])[:jnp.ndim(z_leaves[0]) - leaves[0].ndim]
    hit = jnp.ones(batch, bool)
    for zl, v in zip(z_leaves, leaves):
      eq = jnp.reshape(jnp.asarray(zl) == v, batch + (-1,))
      hit = hit & jnp.all(eq, axis=-1)
    return jnp.where(hit, 0., -jnp.inf).astype(_float_dtype(leaves))

  distribution_fn = None
  if len(leaves) == 1 and treedef.num_leaves == 1 and not treedef.children():
    v = leaves[0]
    distribution_fn = lambda params: distrax.Independent(
        distrax.Deterministic(v), v.ndim) if v.ndim else distrax.Deterministic(v)
  return Surrogate(init=init_fn, sample_and_log_prob=sample_and_log_prob,
                   log_prob=log_prob, reparameterized=True,
                   distribution_fn=distribution_fn)


def _float_dtype(leaves):
  floats = [l.dtype for l in leaves if jnp.issubdtype(l.dtype, jnp.floating)]
  return floats[0] if floats else jnp.zeros(()).dtype


def _is_surrogate(x: Any) -> bool:
  return isinstance(x, Surrogate)


def joint(surrogates, *, merge: bool = False) -> Surrogate:
  """Independent per-latent surrogates combined into one: q(z) = prod_i q_i(z_i).

  Args:
    surrogates: a pytree (dict, tuple, list; nested) whose leaves are
      `Surrogate`s, e.g. `{"global": full_rank_normal({"mu": (), "tau": ()},
      ...), "theta": mean_field_normal((8,)), "y": point_mass(y_obs)}`.
    merge: if True, `surrogates` must be a list/tuple of surrogates whose
      draws are dicts with disjoint keys, and z is the merged flat dict (so a
      full-rank block over `{"mu", "tau"}` and a mean-field block over
      `{"theta"}` give z = `{"mu", "tau", "theta"}` and the target is called
      as `f(mu=..., tau=..., theta=...)`).

  Returns:
    A `Surrogate` whose params are the pytree of the component params (same
    structure as `surrogates`); z is the pytree of the component draws (or the
    merged dict); `log_q` is the sum of the components' `log_q`. Each component
    gets its own key (split from the one given). `reparameterized` is True when
    every component is; `distribution_fn` is None (no single distrax
    distribution over a pytree).

  Raises:
    ValueError: `surrogates` holds no Surrogate, a leaf is not a Surrogate, or
      (merge=True) a component's draws are not dicts or keys collide.

  References:
    numpyro.infer.autoguide.AutoGuideList; tfp.distributions.
    JointDistributionNamed used as a surrogate (tfp.vi.fit_surrogate_posterior).
  """
  comps, treedef = jax.tree_util.tree_flatten(surrogates,
                                              is_leaf=_is_surrogate)
  bad = [type(c).__name__ for c in comps if not _is_surrogate(c)]
  if not comps or bad:
    raise ValueError(
        "surrogates must be a pytree whose leaves are vi_jax Surrogates; got "
        f"leaves of types {bad or '[] (empty)'}.")
  key_sets = None
  if merge:
    if not isinstance(surrogates, (list, tuple)):
      raise ValueError("joint(..., merge=True) needs surrogates as a list or "
                       f"tuple; got {type(surrogates).__name__}.")
    key_sets = []
    for i, c in enumerate(comps):
      z_shape = jax.eval_shape(
          lambda c=c: c.sample_and_log_prob(c.init(jax.random.key(0)),
                                            jax.random.key(0), 1)[0])
      if not isinstance(z_shape, dict):
        raise ValueError(
            f"joint(..., merge=True): surrogates[{i}] draws a "
            f"{type(z_shape).__name__}, not a dict.")
      key_sets.append(list(z_shape))
    flat = [k for ks in key_sets for k in ks]
    dup = sorted({k for k in flat if flat.count(k) > 1})
    if dup:
      raise ValueError(
          f"joint(..., merge=True): surrogates share latent names {dup}.")

  def init_fn(key):
    keys = jax.random.split(key, len(comps))
    return treedef.unflatten([c.init(k) for c, k in zip(comps, keys)])

  def sample_and_log_prob(params, key, sample_size):
    sample_size = check_sample_size(sample_size)
    p_leaves = treedef.flatten_up_to(params)
    keys = jax.random.split(key, len(comps))
    zs, log_q = [], jnp.zeros((), jnp.zeros(()).dtype)
    for c, p, k in zip(comps, p_leaves, keys):
      z, lq = c.sample_and_log_prob(p, k, sample_size)
      zs.append(z)
      log_q = log_q + lq
    if merge:
      return {k: v for z in zs for k, v in z.items()}, log_q
    return treedef.unflatten(zs), log_q

  def log_prob(params, z):
    p_leaves = treedef.flatten_up_to(params)
    if merge:
      z_leaves = [{k: z[k] for k in ks} for ks in key_sets]
    else:
      z_leaves = treedef.flatten_up_to(z)
    return sum(c.log_prob(p, zl)
               for c, p, zl in zip(comps, p_leaves, z_leaves))

  return Surrogate(
      init=init_fn, sample_and_log_prob=sample_and_log_prob,
      log_prob=log_prob,
      reparameterized=all(c.reparameterized for c in comps),
      distribution_fn=None)
