"""Csiszar f-functions in log-space: `f(u)` evaluated from `logu = log u`.

A Csiszar function is a convex `f: R_+ -> R` with `f(1) = 0`; its
f-divergence is `D_f[p, q] = E_q[f(p(z) / q(z))]`. Every function here takes
`logu` (an array of any shape; `u = p/q`, the density ratio) and returns
`f(exp(logu))` elementwise with the same shape and floating dtype. They are
pure jnp functions: they compose with `jax.jit`, `jax.vmap` and `jax.grad`,
and plug into `vi_jax.objectives.losses.monte_carlo_variational_loss(discrepancy_fn=...)`
(hyperparameters bound with `functools.partial` or a lambda).

The formulas and names follow `tfp.vi` (tensorflow_probability
`vi/csiszar_divergence.py`). Unlike TFP's, these are written so that no
intermediate overflows or cancels where the result itself is representable:
for `|logu| <= 100` in float32 and float64 the result is finite and accurate
wherever `f(u)` fits in the dtype and `+inf` / `-inf` where it overflows (e.g.
`kl_forward(100.)` is `100 e^100`, which overflows float32); the
self-normalized forms (`f'(1) = 0`, differences of large, nearly equal terms
near `u = 1`) use Taylor series near `logu = 0` so they keep full relative
precision as `logu -> 0`. The combinators (`dual_csiszar_function`,
`symmetrized_csiszar_function`) multiply by `u = exp(logu)` and inherit the
usual float range limits (TFP's warning applies to them).

`self_normalized=True` adds the linear term that makes `f'(1) = 0`, so the
divergence stays non-negative when p and q are unnormalized measures.

References:
  Csiszar 1963; Ali & Silvey 1966, "A general class of coefficients of
  divergence of one distribution from another", JRSS B 28(1).
  tfp.vi (TensorFlow Probability), csiszar_divergence.py.
"""

import math

import jax.numpy as jnp
import numpy as np

from vi_jax._src.types import Array, ArrayLike

__all__ = [
    "amari_alpha",
    "arithmetic_geometric",
    "chi_square",
    "dual_csiszar_function",
    "jeffreys",
    "jensen_shannon",
    "kl_forward",
    "kl_reverse",
    "log1p_abs",
    "modified_gan",
    "pearson",
    "squared_hellinger",
    "symmetrized_csiszar_function",
    "t_power",
    "total_variation",
    "triangular",
]

_LOG2 = math.log(2.)
_NUM_TERMS = 24  # Taylor terms: |x| <= 0.5 gives a remainder < 1e-30.
_SERIES_RADIUS = 0.5


def _as_float(logu: ArrayLike) -> Array:
  logu = jnp.asarray(logu)
  if not jnp.issubdtype(logu.dtype, jnp.floating):
    logu = logu.astype(jnp.zeros(()).dtype)
  return logu


def _check_float(name: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
    raise TypeError(
        f"{name} must be a Python float (a static hyperparameter, as in "
        f"tfp.vi); got {value!r} of type {type(value).__name__}.")
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite; got {value}.")
  return value


def _check_bool(name: str, value) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a Python bool; got {value!r}.")
  return bool(value)


def _series(x: Array, coeffs) -> Array:
  """sum_n coeffs[n] x^n by Horner's rule (coeffs[0] is the constant)."""
  out = jnp.zeros_like(x)
  for c in reversed(coeffs):
    out = out * x + jnp.asarray(c, x.dtype)
  return out


def _with_series(x: Array, radius: float, coeffs, far: Array) -> Array:
  """`far`, except the Taylor series `coeffs` where |x| < radius.

  The series is evaluated at a safe input (0 outside its radius) so neither
  branch leaks NaN into the other's gradient (the double-`where` trick).
  """
  near = jnp.abs(x) < radius
  series = _series(jnp.where(near, x, jnp.zeros_like(x)), coeffs)
  return jnp.where(near, series, far)


def _expm1_minus_x(x: Array) -> Array:
  """e^x - 1 - x, accurate near 0 (series) and without NaN for large |x|."""
  coeffs = [0., 0.] + [1. / math.factorial(n) for n in range(2, _NUM_TERMS)]
  return _with_series(x, _SERIES_RADIUS, coeffs, jnp.expm1(x) - x)


def _x_exp_minus_expm1(x: Array) -> Array:
  """x e^x - (e^x - 1) = e^x (x - 1) + 1, accurate near 0 (series)."""
  coeffs = [0., 0.] + [(n - 1.) / math.factorial(n)
                       for n in range(2, _NUM_TERMS)]
  return _with_series(x, _SERIES_RADIUS, coeffs, jnp.exp(x) * (x - 1.) + 1.)


def _scaled_expm1(y: Array, scale: float) -> Array:
  """scale (e^y - 1) without overflowing e^y when the product still fits."""
  if scale == 0.:
    return jnp.zeros_like(y)
  big = y > 1.
  y_big = jnp.where(big, y, jnp.zeros_like(y))
  large = math.copysign(1., scale) * jnp.exp(y_big + math.log(abs(scale))) - scale
  return jnp.where(big, large, scale * jnp.expm1(y))


def _power_minus_linear(x: Array, a: float, scale: float = 1.) -> Array:
  """scale [u^a - 1 - a (u - 1)] for u = e^x and a Python float a (not 0, 1).

  `scale` has the sign of a (a - 1), so the result is >= 0 (convex, with a
  double zero at u = 1). Taylor series scale sum_{n>=2} (a^n - a) x^n / n!
  where max(|a|, 1) |x| < 0.5; elsewhere scale expm1(a x) - scale a expm1(x)
  (each term scaled in log-space so it overflows only when it must). Where
  both terms overflow (x large, a > 0) the dominant term is +inf (a > 1: the
  u^a term; 0 < a < 1: the -a u term), which is the result's sign.
  """
  coeffs = [0., 0.] + [scale * (a**n - a) / math.factorial(n)
                       for n in range(2, _NUM_TERMS)]
  radius = _SERIES_RADIUS / max(abs(a), 1.)
  far = _scaled_expm1(a * x, scale) - _scaled_expm1(x, scale * a)
  overflow = jnp.isnan(far) & ~jnp.isnan(x)
  far = jnp.where(overflow, jnp.asarray(jnp.inf, x.dtype), far)
  return _with_series(x, radius, coeffs, far)


def _softplus(x: Array) -> Array:
  """log(1 + e^x), stable for all x."""
  return jnp.logaddexp(x, jnp.zeros_like(x))


def _log1p_ratio(w: Array) -> Array:
  """log1p(w) / w for w in [0, 1], -> 1 as w -> 0 (no 0/0)."""
  small = w < 1e-4
  safe_w = jnp.where(small, jnp.ones_like(w), w)
  return jnp.where(small, 1. - w / 2. + w * w / 3., jnp.log1p(safe_w) / safe_w)


def _x_exp(x: Array) -> Array:
  """x e^x, computed as sign(x) e^(x + log|x|) for |x| > 1 (no underflow of e^x)."""
  far = jnp.abs(x) > 1.
  x_far = jnp.where(far, x, jnp.ones_like(x))
  return jnp.where(far, jnp.sign(x_far) * jnp.exp(x_far + jnp.log(jnp.abs(x_far))),
                   x * jnp.exp(x))


def _u_softplus_neg(x: Array) -> Array:
  """u log(1 + 1/u) = e^x softplus(-x), finite for all x (-> 1 as x -> inf)."""
  pos = x > 0
  w = jnp.exp(-jnp.where(pos, x, jnp.ones_like(x)))  # in (0, 1) where pos
  x_neg = jnp.where(pos, -jnp.ones_like(x), x)
  return jnp.where(pos, _log1p_ratio(w),
                   jnp.exp(x_neg + jnp.log(_softplus(-x_neg))))


def _log_cosh(h: Array) -> Array:
  """log(cosh(h)), accurate near 0 and without overflow for large |h|."""
  a = jnp.abs(h)
  near = a < 1.
  h_near = jnp.where(near, h, jnp.zeros_like(h))
  a_far = jnp.where(near, jnp.ones_like(a), a)
  small = jnp.log1p(2. * jnp.square(jnp.sinh(h_near / 2.)))
  large = a_far + jnp.log1p(jnp.exp(-2. * a_far)) - _LOG2
  return jnp.where(near, small, large)


def amari_alpha(logu: ArrayLike, alpha: float = 1.,
                self_normalized: bool = False) -> Array:
  """The Amari-alpha Csiszar function.

  With `self_normalized=True`:

      f(u) = -log(u) + (u - 1)                                   alpha = 0
      f(u) = u log(u) - (u - 1)                                  alpha = 1
      f(u) = [(u^alpha - 1) - alpha (u - 1)] / (alpha (alpha - 1))  otherwise

  With `self_normalized=False` the `(u - 1)` terms are omitted. alpha = 0 is
  `kl_reverse` (D_f = KL[q || p]), alpha = 1 is `kl_forward` (KL[p || q]).

  Args:
    logu: `[...]` float array, log(u).
    alpha: Python float.
    self_normalized: Python bool; if True, f'(1) = 0.

  Returns:
    `[...]`, f(u), the dtype of `logu`.

  Raises:
    TypeError: `alpha` not a Python number, `self_normalized` not a bool.

  References:
    Cichocki & Amari 2010, "Families of Alpha- Beta- and Gamma- Divergences",
    Entropy 12(6); tfp.vi.amari_alpha.
  """
  alpha = _check_float("alpha", alpha)
  self_normalized = _check_bool("self_normalized", self_normalized)
  x = _as_float(logu)
  if alpha == 0.:
    return _expm1_minus_x(x) if self_normalized else -x
  if alpha == 1.:
    return _x_exp_minus_expm1(x) if self_normalized else _x_exp(x)
  scale = 1. / (alpha * (alpha - 1.))
  if self_normalized:
    return _power_minus_linear(x, alpha, scale)
  return _scaled_expm1(alpha * x, scale)


def kl_reverse(logu: ArrayLike, self_normalized: bool = False) -> Array:
  """The reverse-KL Csiszar function: D_f[p, q] = KL[q || p].

      f(u) = -log(u) [+ (u - 1) if self_normalized]

  The ELBO's f: E_q[f(p/q)] = E_q[log q - log p] = -ELBO.

  Args:
    logu: `[...]` float array, log(u).
    self_normalized: Python bool.

  Returns:
    `[...]`, f(u).

  References:
    tfp.vi.kl_reverse; `amari_alpha` with alpha = 0.
  """
  return amari_alpha(logu, alpha=0., self_normalized=self_normalized)


def kl_forward(logu: ArrayLike, self_normalized: bool = False) -> Array:
  """The forward-KL Csiszar function: D_f[p, q] = KL[p || q].

      f(u) = u log(u) [- (u - 1) if self_normalized]

  Args:
    logu: `[...]` float array, log(u).
    self_normalized: Python bool.

  Returns:
    `[...]`, f(u).

  References:
    tfp.vi.kl_forward; `amari_alpha` with alpha = 1.
  """
  return amari_alpha(logu, alpha=1., self_normalized=self_normalized)


def jensen_shannon(logu: ArrayLike, self_normalized: bool = False) -> Array:
  """The Jensen-Shannon Csiszar function.

      f(u) = u log(u) - (1 + u) log(1 + u) [+ (u + 1) log(2) if self_normalized]

  With self-normalization, D_f[p, q] = KL[p || m] + KL[q || m], m = (p + q)/2
  (symmetric in p, q). Near u = 1 (|logu| < 1) the self-normalized form is
  evaluated through t = tanh(logu / 2) as
  `f(u) = (1 + u)/2 [2 t artanh(t) + log1p(-t^2)]`, which is non-negative and
  free of cancellation (TFP's formulation, Kurt 2023 eq. 14).

  Args:
    logu: `[...]` float array, log(u).
    self_normalized: Python bool.

  Returns:
    `[...]`, f(u).

  References:
    Lin 1991, "Divergence measures based on the Shannon entropy", IEEE Trans.
    Inf. Theory 37(1); tfp.vi.jensen_shannon.
  """
  self_normalized = _check_bool("self_normalized", self_normalized)
  x = _as_float(logu)
  # u log u - (1 + u) log(1 + u) = -u softplus(-x) - softplus(x).
  if not self_normalized:
    # x < 0: -u [softplus(-x) + log1p(u) / u], in log-space (u may underflow).
    neg = x < 0
    x_neg = jnp.where(neg, x, -jnp.ones_like(x))
    left = -jnp.exp(x_neg + jnp.log(_softplus(-x_neg) +
                                    _log1p_ratio(jnp.exp(x_neg))))
    x_pos = jnp.where(neg, jnp.ones_like(x), x)
    right = -_u_softplus_neg(x_pos) - _softplus(x_pos)
    return jnp.where(neg, left, right)
  near = jnp.abs(x) < 1.
  x_near = jnp.where(near, x, jnp.zeros_like(x))
  t = jnp.tanh(0.5 * x_near)
  h = 2. * t * jnp.arctanh(t) + jnp.log1p(-jnp.square(t))
  small = 0.5 * (1. + jnp.exp(x_near)) * h
  x_far = jnp.where(near, jnp.ones_like(x), x)
  large = (jnp.exp(x_far) * _LOG2 - _u_softplus_neg(x_far) +
           (_LOG2 - _softplus(x_far)))
  return jnp.where(near, small, large)


def arithmetic_geometric(logu: ArrayLike,
                         self_normalized: bool = False) -> Array:
  """The Arithmetic-Geometric Csiszar function.

      f(u) = (1 + u) log((1 + u) / sqrt(u)) [- (1 + u) log(2) if self_normalized]

  Evaluated as `(1 + u) log(2 cosh(logu / 2))` (`log cosh` without the log 2
  when self-normalized). With self-normalization D_f[p, q] = KL[m || p] +
  KL[m || q], m = (p + q)/2.

  Args:
    logu: `[...]` float array, log(u).
    self_normalized: Python bool.

  Returns:
    `[...]`, f(u).

  References:
    Taneja 1995, "New developments in generalized information measures";
    tfp.vi.arithmetic_geometric.
  """
  self_normalized = _check_bool("self_normalized", self_normalized)
  x = _as_float(logu)
  y = _log_cosh(0.5 * x)
  if not self_normalized:
    y = y + _LOG2
  return (1. + jnp.exp(x)) * y


def total_variation(logu: ArrayLike) -> Array:
  """The total-variation Csiszar function, f(u) = |u - 1| / 2.

  Args:
    logu: `[...]` float array, log(u).

  Returns:
    `[...]`, f(u).

  References:
    tfp.vi.total_variation.
  """
  return 0.5 * jnp.abs(jnp.expm1(_as_float(logu)))


def pearson(logu: ArrayLike) -> Array:
  """The Pearson chi-square Csiszar function, f(u) = (u - 1)^2.

  Args:
    logu: `[...]` float array, log(u).

  Returns:
    `[...]`, f(u).

  References:
    Pearson 1900; tfp.vi.pearson.
  """
  return jnp.square(jnp.expm1(_as_float(logu)))


def squared_hellinger(logu: ArrayLike) -> Array:
  """The squared-Hellinger Csiszar function, f(u) = (sqrt(u) - 1)^2.

  Symmetric: D_f[p, q] = D_f[q, p].

  Args:
    logu: `[...]` float array, log(u).

  Returns:
    `[...]`, f(u).

  References:
    Hellinger 1909; tfp.vi.squared_hellinger.
  """
  return pearson(0.5 * _as_float(logu))


def triangular(logu: ArrayLike) -> Array:
  """The triangular-discrimination Csiszar function, f(u) = (u - 1)^2 / (1 + u).

  Evaluated as `expm1(logu) tanh(logu / 2)` (since (u - 1)/(u + 1) =
  tanh(logu/2)), which neither overflows to inf/inf nor cancels. Symmetric.

  Args:
    logu: `[...]` float array, log(u).

  Returns:
    `[...]`, f(u).

  References:
    Le Cam 1986 (triangular discrimination); tfp.vi.triangular.
  """
  x = _as_float(logu)
  return jnp.expm1(x) * jnp.tanh(0.5 * x)


def t_power(logu: ArrayLike, t: float, self_normalized: bool = False) -> Array:
  """The T-power Csiszar function.

      f(u) = s [u^t - 1 - t (u - 1)],   s = -1 if 0 < t < 1 else +1

  With `self_normalized=False` the `- t (u - 1)` term is omitted. The same
  divergence as `amari_alpha` up to a t-dependent factor.

  Args:
    logu: `[...]` float array, log(u).
    t: Python float.
    self_normalized: Python bool.

  Returns:
    `[...]`, f(u).

  Raises:
    TypeError: `t` not a Python number (unlike tfp.vi.t_power, t is static).

  References:
    tfp.vi.t_power.
  """
  t = _check_float("t", t)
  self_normalized = _check_bool("self_normalized", self_normalized)
  x = _as_float(logu)
  if t == 0.:
    return jnp.zeros_like(x)
  if t == 1. and self_normalized:
    return jnp.zeros_like(x)
  sign = -1. if 0. < t < 1. else 1.
  if self_normalized:
    return _power_minus_linear(x, t, sign)
  return _scaled_expm1(t * x, sign)


def log1p_abs(logu: ArrayLike) -> Array:
  """The log1p-abs Csiszar function, f(u) = u^sign(u - 1) - 1 = expm1(|logu|).

  The f whose graph is |.| in (log u, log1p f) coordinates.

  Args:
    logu: `[...]` float array, log(u).

  Returns:
    `[...]`, f(u).

  References:
    tfp.vi.log1p_abs.
  """
  return jnp.expm1(jnp.abs(_as_float(logu)))


def jeffreys(logu: ArrayLike) -> Array:
  """The Jeffreys Csiszar function, f(u) = (u log(u) - log(u)) / 2.

  Equals `symmetrized_csiszar_function(kl_reverse)`, the symmetric
  (KL[p||q] + KL[q||p]) / 2.

  Args:
    logu: `[...]` float array, log(u).

  Returns:
    `[...]`, f(u).

  References:
    Jeffreys 1946; tfp.vi.jeffreys.
  """
  x = _as_float(logu)
  return 0.5 * jnp.expm1(x) * x


def chi_square(logu: ArrayLike) -> Array:
  """The chi-square Csiszar function, f(u) = u^2 - 1.

  E_q[u^2 - 1] = E_q[(u - 1)^2] for normalized p and q (the Pearson
  divergence); this form is tfp.vi.chi_square's.

  Args:
    logu: `[...]` float array, log(u).

  Returns:
    `[...]`, f(u).

  References:
    tfp.vi.chi_square; Dieng et al. 2017, "Variational inference via chi upper
    bound minimization".
  """
  return jnp.expm1(2. * _as_float(logu))


def modified_gan(logu: ArrayLike, self_normalized: bool = False) -> Array:
  """The modified-GAN Csiszar function.

      f(u) = log(1 + u) - log(u) [+ (u - 1) / 2 if self_normalized]

  Evaluated as `softplus(-logu)`.

  Args:
    logu: `[...]` float array, log(u).
    self_normalized: Python bool.

  Returns:
    `[...]`, f(u).

  References:
    Goodfellow et al. 2014 (GAN); Nowozin et al. 2016, "f-GAN";
    tfp.vi.modified_gan.
  """
  self_normalized = _check_bool("self_normalized", self_normalized)
  x = _as_float(logu)
  y = _softplus(-x)
  if self_normalized:
    y = y + 0.5 * jnp.expm1(x)
  return y


def dual_csiszar_function(logu: ArrayLike, csiszar_function) -> Array:
  """The Csiszar dual, f*(u) = u f(1/u).

  D_{f*}[p, q] = D_f[q, p]; e.g. the dual of `kl_forward` is `kl_reverse`, and
  the dual of the dual is f.

  Args:
    logu: `[...]` float array, log(u).
    csiszar_function: a Csiszar function in log-space, `logu -> f(u)`.

  Returns:
    `[...]`, f*(u) = exp(logu) f(exp(-logu)).

  Raises:
    TypeError: `csiszar_function` is not callable.

  References:
    tfp.vi.dual_csiszar_function.
  """
  if not callable(csiszar_function):
    raise TypeError(f"csiszar_function must be callable; got {csiszar_function!r}.")
  x = _as_float(logu)
  return jnp.exp(x) * csiszar_function(-x)


def symmetrized_csiszar_function(logu: ArrayLike, csiszar_function) -> Array:
  """The symmetrization g(u) = (f(u) + u f(1/u)) / 2 of a Csiszar function.

  D_g[p, q] = (D_f[p, q] + D_f[q, p]) / 2 is symmetric; symmetrizing
  `kl_reverse` (or `kl_forward`) gives `jeffreys`.

  Args:
    logu: `[...]` float array, log(u).
    csiszar_function: a Csiszar function in log-space, `logu -> f(u)`.

  Returns:
    `[...]`, g(u).

  Raises:
    TypeError: `csiszar_function` is not callable.

  References:
    tfp.vi.symmetrized_csiszar_function.
  """
  x = _as_float(logu)
  return 0.5 * (csiszar_function(x) + dual_csiszar_function(x, csiszar_function))
