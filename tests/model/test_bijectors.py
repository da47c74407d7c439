"""Flat-vector <-> pytree-of-latents plumbing."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_probability.substrates.jax as tfp
from hypothesis import given, settings

import vi_jax as vi

tfb = tfp.bijectors

shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.sampled_from("abcd"), shapes, min_size=1),
       st.integers(1, 3))
def test_flatten_unflatten_round_trip(event_shape, n):
  space = vi.bijectors.latent_space(event_shape)
  assert space.dim == sum(int(np.prod(s)) for s in event_shape.values())
  u = jnp.arange(n * space.dim, dtype=jnp.float32).reshape(n, space.dim)
  tree = space.unflatten(u)
  for k, s in event_shape.items():
    assert tree[k].shape == (n,) + s
  np.testing.assert_array_equal(np.asarray(space.flatten(tree)), np.asarray(u))


def test_forward_inverse_and_log_det_match_tfp():
  space = vi.bijectors.latent_space(
      (jnp.zeros(()).shape, (3,)), (tfb.Exp(), vi.bijectors.simplex()))
  assert space.dim == 1 + 2
  u = jax.random.normal(jax.random.key(0), (4, 3))
  z, ldj = space.forward_and_log_det(u)
  ref = (tfb.Exp().forward_log_det_jacobian(u[:, 0], 0) +
         tfb.IteratedSigmoidCentered().forward_log_det_jacobian(u[:, 1:], 1))
  np.testing.assert_allclose(np.asarray(ldj), np.asarray(ref), rtol=1e-5)
  u2, ildj = space.inverse_and_log_det(z)
  np.testing.assert_allclose(np.asarray(u2), np.asarray(u), atol=1e-5)
  np.testing.assert_allclose(np.asarray(ildj), -np.asarray(ref), rtol=1e-4)


def test_constraint_helpers_map_into_their_supports():
  x = jnp.linspace(-5., 5., 11)
  assert bool(jnp.all(vi.bijectors.positive().forward(x) > 0))
  y = vi.bijectors.interval(-2., 3.).forward(x)
  assert bool(jnp.all((y > -2.) & (y < 3.)))
  p = vi.bijectors.simplex().forward(jnp.ones((2, 3)))
  np.testing.assert_allclose(np.asarray(p.sum(-1)), 1., rtol=1e-6)
