"""The unrolled-Threefry per-step keys draw exactly JAX's Threefry bits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_jax._src import rng
from vi_jax._src.rng import unrolled_threefry_keys


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
@pytest.mark.parametrize("shape", [(), (7,), (16, 10), (3, 4, 5)])
def test_same_draws_as_jax_threefry(make_key, shape):
  key = make_key(11)
  fast = unrolled_threefry_keys(key)
  for draw in (jax.random.normal, jax.random.uniform,
               lambda k, s: jax.random.bits(k, s),
               lambda k, s: jax.random.randint(k, s, -5, 9)):
    np.testing.assert_array_equal(np.asarray(draw(key, shape)),
                                  np.asarray(jax.jit(draw, static_argnums=1)(
                                      fast, shape)))


def test_batched_keys_split_and_fold_in():
  keys = jax.random.split(jax.random.key(2), 6)
  fast = unrolled_threefry_keys(keys)
  draw = jax.vmap(lambda k: jax.random.normal(k, (4, 3)))
  np.testing.assert_array_equal(draw(keys), draw(fast))
  np.testing.assert_array_equal(
      jax.random.normal(jax.random.split(keys[1])[1], (5,)),
      jax.random.normal(jax.random.split(fast[1])[1], (5,)))
  np.testing.assert_array_equal(
      jax.random.normal(jax.random.fold_in(keys[2], 7), (5,)),
      jax.random.normal(jax.random.fold_in(fast[2], 7), (5,)))


def test_other_implementations_unchanged():
  key = jax.random.key(0, impl="rbg")
  assert unrolled_threefry_keys(key) is key
  assert jnp.issubdtype(unrolled_threefry_keys(jax.random.key(0)).dtype,
                        jax.dtypes.prng_key)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_split_on_the_host_gives_jax_random_splits_keys(make_key):
  key = make_key(7)
  ours, theirs = rng.split(key, 3), jax.random.split(key, 3)
  assert len(ours) == 3
  for a, b in zip(ours, theirs):
    # Same bits, and the same draws from them.
    np.testing.assert_array_equal(np.asarray(jax.random.normal(a, (4,))),
                                  np.asarray(jax.random.normal(b, (4,))))


def _bits(keys):
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    return np.asarray(jax.random.key_data(keys))
  return np.asarray(keys)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
@pytest.mark.parametrize("num", [1, 2, 5, 64])
def test_split_array_and_fold_in_on_the_host_are_jax_randoms(make_key, num):
  key = make_key(11)
  ours = rng.split_array(key, num)
  assert ours.dtype == jax.random.split(key, num).dtype
  np.testing.assert_array_equal(_bits(ours), _bits(jax.random.split(key, num)))
  for data in (0, 3, 2**31 + 5):
    np.testing.assert_array_equal(_bits(rng.fold_in(key, data)),
                                  _bits(jax.random.fold_in(key, data)))


def test_split_array_under_jit_and_of_other_implementations():
  key = jax.random.key(3, impl="rbg")  # not threefry: JAX's own split
  np.testing.assert_array_equal(_bits(rng.split_array(key, 3)),
                                _bits(jax.random.split(key, 3)))
  traced = jax.jit(lambda k: rng.split_array(k, 4))(jax.random.key(5))
  np.testing.assert_array_equal(
      _bits(traced), _bits(jax.random.split(jax.random.key(5), 4)))


def test_host_generator_is_seeded_by_the_key():
  a = rng.host_generator(jax.random.key(1)).uniform(size=5)
  b = rng.host_generator(jax.random.PRNGKey(1)).uniform(size=5)
  c = rng.host_generator(jax.random.key(2)).uniform(size=5)
  np.testing.assert_array_equal(a, b)  # typed and raw keys of one seed
  assert not np.allclose(a, c)
