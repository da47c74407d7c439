"""The fused value-and-gradient target wrapper against plain autodiff."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from vi_jax.model import target

target_module = target  # the tests below name their densities `target`


def test_fused_gradient_equals_closed_form_and_is_twice_differentiable():
  a = jnp.array([1., 2., 3.])
  f = lambda z, extra: -0.5 * jnp.sum(a * z**2) + jnp.sum(extra * z)
  batched = target.batched_log_prob(f)
  z = jax.random.normal(jax.random.key(0), (4, 3))
  extra = jnp.array([0.5, -1., 2.])
  # d/dz sum_s f(z_s) = -a z + extra; d/dextra = sum_s z_s.
  gz, ge = jax.grad(lambda z, e: batched(z, e).sum(), argnums=(0, 1))(z, extra)
  np.testing.assert_allclose(np.asarray(gz), np.asarray(-a * z + extra),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ge), np.asarray(z.sum(0)), rtol=1e-6)
  # Second derivative: Hessian of f(z_0) is diag(-a).
  h = jax.hessian(lambda z0: batched(z0[None], extra)[0])(z[0])
  np.testing.assert_allclose(np.asarray(h), -np.diag(np.asarray(a)), rtol=1e-6)


def test_one_draw_closed_form_value_gradient_and_closed_over_array():
  # sample_size 1 takes the unbatched path (no vmap over a batch of one):
  # value, gradient in z, in `extra` and in a closed-over array (hoisted by
  # closure_convert) against the closed form, also under an outer vmap.
  def loss(z, extra, a):
    f = lambda zz, e: -0.5 * jnp.sum(a * zz["x"]**2) + jnp.sum(e * zz["x"])
    return target.batched_log_prob(f)(z, extra).sum()

  a, extra = jnp.array([1., 2., 3.]), jnp.array([0.5, -1., 2.])
  z = {"x": jax.random.normal(jax.random.key(1), (1, 3))}
  value, (gz, ge, ga) = jax.value_and_grad(loss, argnums=(0, 1, 2))(z, extra, a)
  x = z["x"][0]
  np.testing.assert_allclose(value, -0.5 * jnp.sum(a * x**2) + extra @ x,
                             rtol=1e-6)
  np.testing.assert_allclose(gz["x"], (-a * x + extra)[None], rtol=1e-6)
  np.testing.assert_allclose(ge, x, rtol=1e-6)
  np.testing.assert_allclose(ga, -0.5 * x**2, rtol=1e-6)
  zs = {"x": jax.random.normal(jax.random.key(2), (5, 1, 3))}
  gzs = jax.vmap(jax.grad(loss), in_axes=(0, None, None))(zs, extra, a)
  np.testing.assert_allclose(gzs["x"], -a * zs["x"] + extra, rtol=1e-6)


def test_integer_latents_fall_back_to_plain_vmap():
  f = lambda z, extra: jnp.sum(z).astype(jnp.float32) * 0.5
  out = target.batched_log_prob(f)(jnp.arange(6).reshape(3, 2), ())
  np.testing.assert_allclose(np.asarray(out), [0.5, 2.5, 4.5])


def test_call_target_uses_tfp_convention():
  assert target.call_target(lambda a, b: a - b, (3., 1.)) == 2.
  assert target.call_target(lambda a, b: a - b, {"b": 3., "a": 1.}) == -2.
  assert target.call_target(lambda z: z * 2, 4.) == 8.


def test_bound_target_calling_rule_and_model_params_gradient():
  # f(model_params, batch, *z): model params first, then the batch, then z.
  f = lambda mp, batch, a, b: mp["w"] * a + batch * b
  bound = target.BoundTarget(f, {"w": 2.}, 10.)
  assert bound(1., 3.) == 32.
  assert target.call_target(f, {"a": 1., "b": 3.}, ({"w": 2.}, 10.)) == 32.
  # d/dw sum_n (w a_n + 10 b_n) = sum_n a_n, through the fused `extra` path.
  z = (jnp.arange(4.), jnp.ones(4))
  grad = jax.grad(lambda w: jnp.sum(target.batched_target(
      target.BoundTarget(f, {"w": w}, 10.))(z)))(2.)
  np.testing.assert_allclose(float(grad), 6.)


def test_traced_once_traces_the_target_once_per_shape_and_keeps_its_values():
  calls = []

  def target(x):
    calls.append(x.shape)
    return -0.5 * jnp.sum(x ** 2) + jnp.sum(jnp.sin(x))

  once = target_module.traced_once(target)

  def program(x):  # three call sites, as in L-BFGS + Hessian + evaluation
    value, grad = jax.value_and_grad(once)(x)
    hess = jax.hessian(once)(x)
    batch = jax.vmap(once)(jnp.stack([x, 2. * x]))
    return value, grad, hess, batch

  x = jnp.linspace(-1., 1., 4)
  got = jax.jit(program)(x)
  assert calls == [(4,)]  # the plain target would be traced three times
  expected = (target(x), jax.grad(target)(x), jax.hessian(target)(x),
              jnp.stack([target(x), target(2. * x)]))
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
