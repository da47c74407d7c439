"""Per-step PRNG keys whose random bits compile to one fused kernel on CPU.

JAX lowers the Threefry-2x32 hash on CPU as a rolled 5-iteration while loop
(to keep compile times short). Inside a fit loop that is a nested loop per
step: about a hundred small XLA:CPU thunks (copies of the loop state, three
fusions per iteration) and, on a multi-core CPU, the thunk executor's
concurrency overhead around them. On the small posteriors VI is often run on
(eight schools, Neal's funnel, banana) that loop costs as much as the target's
gradient.

`unrolled_threefry_keys` rewraps threefry keys in an implementation
(`jax.extend.random.define_prng_impl`) whose `random_bits` is JAX's own
partitionable Threefry-2x32 written out round by round (the lowering JAX uses
on GPU), so the bits are computed by one elementwise fusion. The bits are
identical to `jax.random.bits` with the original key (tested), so fits draw
exactly the same numbers; split and fold-in are threefry's own.

Reference: Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"
(Threefry); jax/_src/random/threefry2x32.py (round constants and schedule).
"""

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np

__all__ = ["fold_in", "host_generator", "split", "split_array",
           "unrolled_threefry_keys", "unstack"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY = jex_random.threefry_prng_impl


def _rotate_left(x, d):
  return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def _threefry2x32(k1, k2, x1, x2):
  """The Threefry-2x32 hash (20 rounds), unrolled; same as JAX's primitive."""
  ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = x1 ^ _rotate_left(x2, r)
    x1 = x1 + ks[(i + 1) % 3]
    x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def _random_bits(key_data, bit_width, shape):
  """`jax.random.bits` of a threefry key (partitionable counters), unrolled."""
  size = int(np.prod(shape, dtype=np.int64))
  if size >= 2**32 or not jax.config.jax_threefry_partitionable:
    return _THREEFRY.random_bits(key_data, bit_width, shape)
  # Counters are the row-major flat index as (hi, lo) 32-bit words; hi = 0.
  lo = jax.lax.iota(jnp.uint32, size).reshape(shape)
  bits1, bits2 = _threefry2x32(key_data[0], key_data[1],
                               jnp.zeros(shape, jnp.uint32), lo)
  if bit_width == 64:
    return _computed_once((bits1.astype(jnp.uint64) << np.uint64(32))
                          | bits2.astype(jnp.uint64))
  if bit_width == 32:
    return _computed_once(bits1 ^ bits2)
  return _computed_once(
      (bits1 ^ bits2).astype({8: jnp.uint8, 16: jnp.uint16}[bit_width]))


def _computed_once(bits):
  """`bits` unchanged, computed once (see `vi_jax.model.target.materialize`).

  XLA:CPU fuses the hash into every fusion that reads its output (the normal
  sampler's two erf-inverse branches, the check of the draws): each would
  recompute the 20 rounds. A conditional's operands are materialized; the two
  branches return the same words (reversed twice or not at all), so the
  predicate only has to be opaque to XLA.
  """
  flat = bits.ravel()
  return jax.lax.cond(flat[0] > flat[-1], lambda b: b,
                      lambda b: jnp.flip(jnp.flip(b)), bits)


_UNROLLED = jex_random.define_prng_impl(
    key_shape=_THREEFRY.key_shape, seed=_THREEFRY.seed,
    split=_THREEFRY.split, random_bits=_random_bits,
    fold_in=_THREEFRY.fold_in, name="vi_jax_threefry2x32_unrolled",
    tag="vfu")


def _is_threefry(keys) -> bool:
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    return jax.random.key_impl(keys) == "threefry2x32"
  return keys.dtype == jnp.uint32 and keys.shape[-1:] == (2,)


def unrolled_threefry_keys(keys):
  """`keys` (typed or raw uint32 threefry keys, any batch shape) rewrapped so
  that sampling with them compiles to unrolled Threefry on CPU.

  Keys of other implementations (rbg, ...) and keys on other backends (where
  JAX already unrolls Threefry) are returned unchanged.
  """
  if jax.default_backend() != "cpu" or not _is_threefry(keys):
    return keys
  return jax.random.wrap_key_data(_key_data(keys), impl=_UNROLLED)


def _key_data(keys):
  """The uint32 bits of typed or raw keys (`[..., 2]` for threefry)."""
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(keys)
  return keys


def unstack(keys) -> tuple:
  """The keys of a key array, taken apart on the host.

  The same keys as `tuple(keys)`, without the XLA slice program that
  indexing a device array compiles for each new shape (0.03 s each;
  `vi.auto_fit` splits keys of a dozen shapes).

  Args:
    keys: `[num]` typed keys (`jax.random.key`) or `[num, 2]` raw uint32
      keys (`jax.random.PRNGKey`).

  Returns:
    A tuple of `num` keys of the same kind (typed: shape `()`; raw: `[2]`
    uint32).

  Raises:
    Nothing of its own; JAX raises for an array that is not keys.
  """
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    impl = jax.random.key_impl(keys)
    return tuple(jax.random.wrap_key_data(row, impl=impl)
                 for row in np.asarray(_key_data(keys)))
  return tuple(jax.device_put(row) for row in np.asarray(keys))


def split(key, num: int = 2) -> tuple:
  """`jax.random.split(key, num)` as a tuple of `num` keys, made on the host.

  Args:
    key: one typed or raw key.
    num: Python int >= 1.

  Returns:
    A tuple of `num` keys, equal to `jax.random.split(key, num)`'s rows.

  Raises:
    What `jax.random.split` raises for a bad key or num.
  """
  return unstack(split_array(key, num))


def split_array(key, num: int = 2):
  """`jax.random.split(key, num)`, computed by numpy on the host.

  With JAX's partitionable Threefry (the default), row i of a split is the
  Threefry-2x32 hash of the counter (0, i) under the key: numpy hashes `num`
  counters in microseconds, where `jax.random.split` compiles a program for
  each `num` (0.08 s each; `vi.auto_fit` split keys of six sizes). Other
  implementations, or the non-partitionable mode, call `jax.random.split`.

  Args:
    key: one typed or raw key.
    num: Python int >= 1.

  Returns:
    `[num]` typed keys or `[num, 2]` raw uint32 keys, like `key`; equal to
    `jax.random.split(key, num)`.

  Raises:
    What `jax.random.split` raises for a bad key or num.

  References:
    `jax.random.split` (partitionable Threefry, `jax_threefry_partitionable`);
    Salmon et al. (2011), Parallel random numbers: as easy as 1, 2, 3.
  """
  if not (_hashable_on_host(key) and isinstance(num, int) and num >= 1):
    return jax.random.split(key, num)
  return _host_threefry(key, np.arange(num, dtype=np.uint32))


def fold_in(key, data: int):
  """`jax.random.fold_in(key, data)`, computed by numpy on the host.

  Partitionable Threefry folds `data` in as the counter (0, data): the key is
  `split_array(key, n)[data]` for any n > data (see `split_array`).

  Args:
    key: one typed or raw key.
    data: a Python int in [0, 2**32).

  Returns:
    One key like `key`, equal to `jax.random.fold_in(key, data)`.

  Raises:
    What `jax.random.fold_in` raises for a bad key or data.

  References:
    `jax.random.fold_in`; Salmon et al. (2011) (Threefry).
  """
  if not (_hashable_on_host(key) and isinstance(data, int) and
          0 <= data < 2**32):
    return jax.random.fold_in(key, data)
  return unstack(_host_threefry(key, np.array([data], np.uint32)))[0]


def _hashable_on_host(key) -> bool:
  """One concrete threefry key, partitionable mode: `_host_threefry` gives
  JAX's own split and fold-in."""
  return (jax.config.jax_threefry_partitionable and
          not isinstance(key, jax.core.Tracer) and _is_threefry(key) and
          np.shape(_key_data(key)) == (2,))


def _host_threefry(key, counters):
  """Keys like `key` whose words hash the counters `(0, counters [n])`."""
  k1, k2 = np.asarray(_key_data(key), np.uint32)
  with np.errstate(over="ignore"):
    words = np.stack(_threefry2x32(k1, k2, np.zeros_like(counters), counters),
                     axis=-1)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(words, impl=jax.random.key_impl(key))
  return words


def host_generator(key) -> np.random.Generator:
  """A numpy `Generator` seeded by the key's bits.

  For draws the host makes once (a start point), where an XLA program per
  shape would cost more to compile (0.25 s for one `jax.random.uniform`)
  than the draws. The same key gives the same generator (numpy's PCG64
  seeded by the key's uint32 words through `SeedSequence`).

  Args:
    key: one typed or raw key.

  Returns:
    A `numpy.random.Generator`.
  """
  return np.random.default_rng(np.asarray(_key_data(key), np.uint32).ravel())
