"""Multi-device data parallelism: 4 forced host devices vs 1 device.

XLA_FLAGS must be set before jax is imported, so the check runs in a
subprocess and the rest of the suite keeps its single device.
"""

import json
import os
import subprocess
import sys

SCRIPT = r'''
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
import distrax, jax, jax.numpy as jnp, numpy as np, optax
import vi_jax as vi

assert jax.device_count() == 4, jax.devices()
rng = np.random.default_rng(0)
n, d = 4096, 4
x = rng.standard_normal((n, d)).astype(np.float32)
y = (rng.uniform(size=n) < 1 / (1 + np.exp(-x @ np.ones(d)))).astype(np.float32)
target = vi.minibatch.scaled_log_prob(
    lambda w: distrax.Normal(0., 1.).log_prob(w).sum(),
    lambda rows, w: jnp.sum(rows[1] * (rows[0] @ w) -
                            jax.nn.softplus(rows[0] @ w)))
s = vi.surrogates.mean_field_normal((d,))
opt = optax.adam(optax.exponential_decay(0.05, 200, 0.1))
sharded = vi.sharding.shard_data((jnp.asarray(x), jnp.asarray(y)))
single = jax.device_put((jnp.asarray(x), jnp.asarray(y)), jax.devices()[0])
out = {"devices_sharded": vi.sharding.num_devices(sharded),
       "devices_single": vi.sharding.num_devices(single)}
for name, bs in (("full", None), ("minibatch", 512)):
  fit = jax.jit(lambda data: vi.fit(target, s, opt, 200, key=jax.random.key(0),
                                    sample_size=4, data=data, batch_size=bs,
                                    num_shards=4))
  compiled = fit.lower(sharded).compile()
  r4, r1 = compiled(sharded), fit(single)
  t4, t1 = np.asarray(r4.trace), np.asarray(r1.trace)
  hlo = compiled.as_text()
  out[name] = {
      "max_rel_trace": float(np.max(np.abs(t4 - t1) / np.abs(t1))),
      "max_abs_loc": float(np.max(np.abs(np.asarray(r4.params["loc"]) -
                                         np.asarray(r1.params["loc"])))),
      "finite": bool(np.all(np.isfinite(t4))),
      "all_reduce": "all-reduce" in hlo,
      "all_gather_of_data": any("all-gather" in line and "[4096" in line
                                for line in hlo.splitlines()),
  }
print("RESULT" + json.dumps(out))
'''


def test_four_host_devices_match_one_device():
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  out = json.loads(line[len("RESULT"):])
  assert out["devices_sharded"] == 4 and out["devices_single"] == 1
  for name in ("full", "minibatch"):
    r = out[name]
    assert r["finite"]
    assert r["max_rel_trace"] < 1e-5, out
    assert r["max_abs_loc"] < 1e-4, out
    # The per-device likelihoods are summed across devices, and the data is
    # never gathered onto one device.
    assert r["all_reduce"] and not r["all_gather_of_data"], out


def test_one_process_is_main_and_mesh_keeps_device_order():
  import jax
  import vi_jax as vi
  assert jax.process_count() == 1 and vi.sharding.is_main_process()
  mesh = vi.sharding.data_mesh()
  assert list(mesh.devices) == jax.devices()
  assert mesh.axis_names == ("data",)
