"""The compile cache: a second identical top-level vi.fit compiles nothing."""

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import vi_jax as vi
from vi_jax._src import compile_cache

def log_prob(z):  # Normal-Normal: posterior N(2.5, 1/2) for x = 5
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(5.)


def test_second_identical_fit_compiles_nothing(count_compiles):
  s = vi.surrogates.mean_field_normal(())
  opt = optax.adam(0.05)
  kwargs = dict(key=jax.random.key(0), sample_size=8, progress_bar=False)
  first = vi.fit(log_prob, s, opt, 300, **kwargs)
  with count_compiles() as compiles:
    second = vi.fit(log_prob, s, opt, 300, **kwargs)
    jax.block_until_ready(second.params)
  assert len(compiles) == 0
  for r in (first, second):  # both are fits of the closed-form posterior
    np.testing.assert_allclose(float(r.params["loc"][0]), 2.5, atol=0.15)
  # A new key is data, not a new program: still nothing compiled.
  with count_compiles() as compiles:
    third = vi.fit(log_prob, s, opt, 300, key=jax.random.key(1),
                   sample_size=8, progress_bar=False)
    jax.block_until_ready(third.params)
  assert len(compiles) == 0


def test_what_invalidates_the_cache_compiles_again(count_compiles):
  s = vi.surrogates.mean_field_normal(())
  opt = optax.adam(0.05)
  vi.fit(log_prob, s, opt, 50, key=jax.random.key(0), progress_bar=False)
  # The counter can fail: a new optimizer object, or another num_steps, is
  # a new program.
  with count_compiles() as compiles:
    vi.fit(log_prob, s, optax.adam(0.05), 50, key=jax.random.key(0),
           progress_bar=False)
  assert len(compiles) > 0
  with count_compiles() as compiles:
    vi.fit(log_prob, s, opt, 60, key=jax.random.key(0), progress_bar=False)
  assert len(compiles) > 0


def test_cached_program_follows_new_data_shapes():
  # Same objects, data with another N: a recompile (JAX's own cache keys on
  # shapes), and the answer is that of the new data (conjugate mean).
  s = vi.surrogates.mean_field_normal(())
  opt = optax.adam(0.05)

  def target(batch, z):
    return (distrax.Normal(0., 10.).log_prob(z) +
            batch.scale * jnp.sum(distrax.Normal(z, 1.).log_prob(batch.data)))

  for n, mean in ((20, 1.), (40, -2.)):
    data = jnp.full((n,), mean)
    r = vi.fit(target, s, opt, 400, key=jax.random.key(0), sample_size=4,
               data=data, progress_bar=False)
    posterior_mean = n * mean / (n + 0.01)
    np.testing.assert_allclose(float(r.params["loc"][0]), posterior_mean,
                               atol=0.1)


def test_jit_once_top_level_nested_and_vmapped_agree_with_plain_jit():
  # Compiler options are allowed on top-level jits only: jit_once must also
  # run nested in a staged program (outer jit, scan) and under vmap / grad.
  f = lambda x: jnp.sum(jnp.sin(x) * x)
  once = compile_cache.jit_once(f)
  x = jnp.linspace(0., 1., 5)
  expected = jax.jit(f)(x)
  chex.assert_trees_all_close(once(x), expected, rtol=1e-6)
  chex.assert_trees_all_close(jax.jit(once)(x), expected, rtol=1e-6)
  chex.assert_trees_all_close(
      jax.lax.scan(lambda c, xi: (c + once(xi), None), 0., x[None])[0],
      expected, rtol=1e-6)
  chex.assert_trees_all_close(jax.vmap(once)(x[None])[0], expected, rtol=1e-6)
  chex.assert_trees_all_close(jax.grad(once)(x), jax.grad(f)(x), rtol=1e-6)


def test_jit_once_under_grad_of_an_array_it_closes_over():
  x = jnp.linspace(0., 1., 5)
  g = lambda a: compile_cache.jit_once(lambda y: jnp.sum(jnp.sin(a * y)))(x)
  chex.assert_trees_all_close(
      jax.grad(g)(2.), jnp.sum(x * jnp.cos(2. * x)), rtol=1e-5)


def test_jit_once_falls_back_to_the_plain_jit_for_an_option_xla_lacks(
    monkeypatch):
  # A JAX whose XLA does not know one of ONCE_OPTIONS must still run.
  monkeypatch.setitem(compile_cache.ONCE_OPTIONS, "xla_no_such_option", True)
  f = lambda x: jnp.sum(jnp.cos(x) ** 2)
  x = jnp.linspace(0., 1., 7)
  chex.assert_trees_all_close(compile_cache.jit_once(f)(x), jax.jit(f)(x),
                              rtol=1e-6)


_PERSISTENT_SCRIPT = """
import sys, jax, jax.numpy as jnp
import vi_jax as vi
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
vi.compile_cache.use_persistent_cache(sys.argv[1])
r = vi.laplace(lambda z: -0.5 * jnp.sum(z ** 2), (2,))
jax.block_until_ready(r.loc)
print(events.count("/jax/compilation_cache/cache_hits"),
      events.count("/jax/compilation_cache/cache_misses"))
"""


def test_persistent_cache_lets_a_second_process_compile_nothing(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  def run():
    out = subprocess.run([sys.executable, "-c", _PERSISTENT_SCRIPT,
                          str(tmp_path / "xla")], capture_output=True,
                         text=True, timeout=300, check=True)
    return [int(x) for x in out.stdout.split()[-2:]]

  hits, misses = run()
  assert hits == 0 and misses > 0
  hits2, misses2 = run()
  assert misses2 == 0 and hits2 == misses
