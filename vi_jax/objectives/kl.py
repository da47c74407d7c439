"""KL divergences between distributions: closed form, or Monte Carlo.

`kl_divergence(q, p)` looks the pair up in TFP's KL registry (which covers
distrax distributions too: distrax's own `kl_divergence` dispatches there);
`monte_carlo_kl(q, p, key, sample_size)` estimates KL[q || p] =
E_q[log q - log p] for any two distributions with the same event shape, from
q's fused `sample_and_log_prob` (reparameterized when q's sampler is, e.g.
Normal, MultivariateNormal*), so both can be minimized with `jax.grad`.
"""

import jax
import jax.numpy as jnp
import tensorflow_probability.substrates.jax as tfp

from vi_jax._src.types import Array, PRNGKey
from vi_jax._src.validation import positive_int

__all__ = ["has_closed_form_kl", "kl_divergence", "monte_carlo_kl"]


def _check_distribution(name, d):
  if not hasattr(d, "log_prob"):
    raise TypeError(f"{name} must be a distrax or TFP distribution; got "
                    f"{type(d).__name__}.")


def kl_divergence(q, p) -> Array:
  """KL[q || p] in closed form.

  Args:
    q: a distrax or TFP distribution.
    p: a distrax or TFP distribution with the same event shape.

  Returns:
    `[*batch]`, the KL for each batch member (a scalar for unbatched q, p).

  Raises:
    TypeError: q or p is not a distribution.
    NotImplementedError: no closed form is registered for the pair (then use
      `monte_carlo_kl`).

  References:
    tfp.distributions.kl_divergence; distrax.Distribution.kl_divergence.
  """
  _check_distribution("q", q)
  _check_distribution("p", p)
  try:
    return tfp.distributions.kl_divergence(q, p)
  except NotImplementedError as e:
    raise NotImplementedError(
        f"No closed-form KL[q || p] is registered for q of type "
        f"{type(q).__name__} and p of type {type(p).__name__}; use "
        "vi_jax.monte_carlo_kl(q, p, key, sample_size).") from e


def has_closed_form_kl(q, p) -> bool:
  """True when `kl_divergence(q, p)` has a registered closed form."""
  try:
    jax.eval_shape(lambda: tfp.distributions.kl_divergence(q, p))
  except NotImplementedError:
    return False
  return True


def _sample_and_log_prob(q, key, n):
  if hasattr(q, "sample_and_log_prob"):  # distrax
    return q.sample_and_log_prob(seed=key, sample_shape=(n,))
  return q.experimental_sample_and_log_prob((n,), seed=key)  # TFP


def monte_carlo_kl(q, p, key: PRNGKey, sample_size: int) -> Array:
  """Monte Carlo KL[q || p] = (1/n) sum_i [log q(z_i) - log p(z_i)], z_i ~ q.

  Unbiased for any pair with the same event shape (e.g. a Normal against a
  Gaussian mixture, which has no closed form). Differentiable with respect to
  q's parameters by reparameterization when q's sampler is reparameterized.

  Args:
    q: a distrax or TFP distribution (sampled).
    p: a distrax or TFP distribution (its `log_prob` is evaluated).
    key: a PRNG key.
    sample_size: Python int >= 1, the number of draws n.

  Returns:
    `[*batch]`, the estimate for each batch member.

  Raises:
    TypeError / ValueError: q, p not distributions; bad `sample_size`.

  References:
    Hershey & Olsen 2007, "Approximating the KL divergence between Gaussian
    mixture models"; tfp.vi.monte_carlo_variational_loss with kl_reverse.
  """
  _check_distribution("q", q)
  _check_distribution("p", p)
  sample_size = positive_int("sample_size", sample_size)
  z, log_q = _sample_and_log_prob(q, key, sample_size)
  return jnp.mean(log_q - p.log_prob(z), axis=0)
