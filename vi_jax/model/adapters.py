"""Bring your own model: NumPyro, TFP JointDistribution, inference_gym, Blackjax.

Each adapter returns an `AdaptedModel` whose first three fields are what a
surrogate and `vi.fit` take:

    m = vi.adapters.from_numpyro(eight_schools, sigma=sigma, y=y)
    surrogate = vi.surrogates.mean_field_normal(m.event_shape, m.bijector)
    result = vi.fit(m.target_log_prob_fn, surrogate, optax.adam(1e-2), 2000,
                    key=jax.random.key(0), sample_size=16)
    z, _ = surrogate.sample_and_log_prob(result.params, key, 1000)
    draws = m.constrain(z)       # the model's own variables, leading [1000]

Spaces. inference_gym targets and NumPyro models (by default) are adapted in
the *constrained* space: latents are the model's own variables and the
bijector is one bijector per latent onto its support (inference_gym's
`default_event_space_bijector`; NumPyro's `biject_to(site.support)` wrapped as
a TFP-on-JAX bijector), so surrogate draws are already model values. TFP
JointDistributions are adapted in the *unconstrained* space of their
`experimental_default_event_space_bijector()` (that bijector is joint: a
part's support may depend on other parts' values, so it cannot in general be
split per latent): the target is `log p(b(u)) + log|det J_b(u)|`, the bijector
is None, and `constrain` maps draws to the model's variables. NumPyro's
`space="unconstrained"` does the same with NumPyro's own potential function.
The log normalizing constant is the same in either space.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_probability.substrates.jax as tfp

from vi_jax._src.types import PyTree

tfb = tfp.bijectors

__all__ = [
    "AdaptedModel",
    "ReferenceMoments",
    "from_numpyro",
    "from_tfp_joint_distribution",
    "from_inference_gym",
    "from_logdensity_fn",
]


class ReferenceMoments(NamedTuple):
  """Reference posterior moments shipped with a target (e.g. inference_gym's).

  Attributes:
    mean: pytree of arrays, the reference mean of `transform(z)`.
    standard_deviation: pytree like `mean`.
    transform: `z (leading [n]) -> pytree (leading [n])`, the quantity the
      moments describe (e.g. stochastic volatility's `log_volatility` rather
      than the latent `std_log_volatility`).
  """
  mean: PyTree
  standard_deviation: PyTree
  transform: Callable[[PyTree], PyTree]


class AdaptedModel(NamedTuple):
  """A user model in the form `vi.fit` and the surrogates take.

  Attributes:
    target_log_prob_fn: unnormalized log density of one draw (TFP's calling
      convention: `f(**z)` for dict latents, `f(*z)` for tuples, `f(z)`).
    event_shape: a shape or pytree of shapes, the latents of one draw.
    bijector: None, or a pytree of bijectors (one per latent) onto each
      latent's support.
    constrain: `z (leading [n]) -> pytree (leading [n])`, mapping surrogate
      draws to the model's variables (identity in the constrained space, plus
      NumPyro's deterministic sites).
    reference: `ReferenceMoments` or None.
  """
  target_log_prob_fn: Callable[..., Any]
  event_shape: PyTree
  bijector: Any
  constrain: Callable[[PyTree], PyTree]
  reference: Optional[ReferenceMoments] = None


def _identity(z):
  return z


def _shape_tuple(s) -> tuple:
  if hasattr(s, "as_list"):
    return tuple(int(d) for d in s.as_list())
  return tuple(int(d) for d in s)


def _is_tensor_shape(x) -> bool:
  return hasattr(x, "as_list") and hasattr(x, "rank")


def _normalize_shapes(event_shape):
  """TensorShapes (and StructTuples of them) -> Python tuples, same structure."""
  return jax.tree_util.tree_map(_shape_tuple, event_shape,
                                is_leaf=_is_tensor_shape)


# NumPyro ---------------------------------------------------------------------


class NumPyroTransformBijector(tfb.Bijector):
  """A NumPyro `Transform` as a TFP-on-JAX bijector (shape changes included).

  `forward` is the transform, `inverse` its `.inv`, the log-det-Jacobian its
  `log_abs_det_jacobian`, and event shapes its `forward_shape` /
  `inverse_shape`, so e.g. NumPyro's stick-breaking simplex transform maps
  `[K - 1]` onto the K-simplex.
  """

  def __init__(self, transform, name: str = "numpyro_transform"):
    parameters = dict(locals())
    self._transform = transform
    super().__init__(
        forward_min_event_ndims=transform.domain.event_dim,
        inverse_min_event_ndims=transform.codomain.event_dim,
        validate_args=False, parameters=parameters, name=name)

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    return dict()

  @property
  def transform(self):
    return self._transform

  def _forward(self, x):
    return self._transform(x)

  def _inverse(self, y):
    return self._transform.inv(y)

  def _forward_log_det_jacobian(self, x):
    return self._transform.log_abs_det_jacobian(x, self._transform(x))

  def _forward_event_shape(self, input_shape):
    return tuple(self._transform.forward_shape(_shape_tuple(input_shape)))

  def _inverse_event_shape(self, output_shape):
    return tuple(self._transform.inverse_shape(_shape_tuple(output_shape)))

  def _forward_event_shape_tensor(self, input_shape):
    return jnp.asarray(self._transform.forward_shape(tuple(input_shape)))

  def _inverse_event_shape_tensor(self, output_shape):
    return jnp.asarray(self._transform.inverse_shape(tuple(output_shape)))


def from_numpyro(model: Callable, *model_args, key=None,
                 space: str = "constrained", **model_kwargs) -> AdaptedModel:
  """Adapts a NumPyro model (observed sites fixed by its arguments).

  The model is traced once (seeded) to find its latent sites, their shapes
  and supports. In the unconstrained space the adapter uses
  `numpyro.infer.util.initialize_model`, which gives the potential energy in
  the unconstrained space and the constraining `postprocess_fn`.

  Args:
    model: a NumPyro model function.
    *model_args: its positional arguments (data).
    key: PRNG key for NumPyro's initialization trace (default key 0; it only
      draws initial values, which are not used).
    space: "constrained" (default): latents are the sample sites' values;
      `target_log_prob_fn(**z)` is `numpyro.infer.util.log_density` (the joint
      log density in the constrained space) and the bijector of each site is
      `biject_to(site.support)` wrapped by `NumPyroTransformBijector` (None
      for real-valued sites). "unconstrained": latents are NumPyro's
      unconstrained values, `target_log_prob_fn(**u) = -potential_fn(u)`
      (Jacobians included), bijector None, and `constrain` is NumPyro's
      `postprocess_fn`.
    **model_kwargs: its keyword arguments.

  Returns:
    An `AdaptedModel` over a dict of latents `{site_name: value}`. `constrain`
    returns the sample sites and the model's deterministic sites, constrained.

  Raises:
    ValueError: unknown `space`, a model without latent sample sites, or a
      discrete latent site (enumerate or marginalize it out first).
  """
  if space not in ("constrained", "unconstrained"):
    raise ValueError(
        f"space must be 'constrained' or 'unconstrained'; got {space!r}.")
  key = jax.random.PRNGKey(0) if key is None else key
  latent, deterministic = _numpyro_sites(model, key, model_args, model_kwargs)
  if space == "unconstrained":
    return _numpyro_unconstrained(model, key, model_args, model_kwargs)
  supports = _numpyro_supports(model, key, latent, model_args, model_kwargs)
  return _numpyro_constrained(model, latent, deterministic, supports,
                              model_args, model_kwargs)


def _numpyro_sites(model, key, model_args, model_kwargs):
  """The latent sample sites `{name: (fn, ShapeDtypeStruct)}` and deterministic names.

  Traced abstractly (`jax.eval_shape`: no compilation, no draws).
  """
  from numpyro import handlers  # pylint: disable=g-import-not-at-top
  sites = {}

  def probe():
    tr = handlers.trace(handlers.seed(model, key)).get_trace(
        *model_args, **model_kwargs)
    sites.update({n: (s["type"], s.get("is_observed", False), s.get("fn"),
                      jax.ShapeDtypeStruct(jnp.shape(s["value"]),
                                           jnp.result_type(s["value"])))
                  for n, s in tr.items()})
    return jnp.zeros(())

  jax.eval_shape(probe)
  latent = {n: (v[2], v[3]) for n, v in sites.items()
            if v[0] == "sample" and not v[1]}
  for name, (fn, _) in latent.items():
    if fn.support.is_discrete:
      raise ValueError(
          f"model's site {name!r} is discrete ({type(fn).__name__}); "
          "vi_jax's adapters need continuous latents (marginalize it out).")
  if not latent:
    raise ValueError("model has no latent sample sites to fit.")
  deterministic = [n for n, v in sites.items() if v[0] == "deterministic"]
  return latent, deterministic


def _numpyro_supports(model, key, latent, model_args, model_kwargs):
  """Each latent site's support, with the latents as tracers.

  All else is evaluated at compile time, so a support that still holds a
  tracer depends on other latents (e.g. Uniform(0, x)) and cannot get a fixed
  bijector: a ValueError.
  """
  from numpyro import handlers  # pylint: disable=g-import-not-at-top
  supports = {}

  def probe_supports(values):
    with jax.ensure_compile_time_eval():
      tr = handlers.trace(handlers.substitute(
          handlers.seed(model, key), data=values)).get_trace(
              *model_args, **model_kwargs)
    supports.update({n: tr[n]["fn"].support for n in latent})
    return jnp.zeros(())

  jax.eval_shape(probe_supports, {n: v[1] for n, v in latent.items()})
  dependent = [n for n, sup in supports.items() if any(
      isinstance(l, jax.core.Tracer) for l in jax.tree_util.tree_leaves(sup))]
  if dependent:
    raise ValueError(
        f"the supports of sites {dependent} depend on other latents, so "
        "they have no fixed bijector; use space='unconstrained'.")
  return supports


def _numpyro_unconstrained(model, key, model_args, model_kwargs):
  """NumPyro's own unconstrained potential and `postprocess_fn`."""
  from numpyro.infer import util as npu  # pylint: disable=g-import-not-at-top
  info = npu.initialize_model(key, model, model_args=model_args,
                              model_kwargs=model_kwargs)
  potential_fn = info.potential_fn

  def target_log_prob_fn(**u):
    return -potential_fn(u)

  event_shape = {n: tuple(jnp.shape(v)) for n, v in info.param_info.z.items()}
  return AdaptedModel(target_log_prob_fn=target_log_prob_fn,
                      event_shape=event_shape, bijector=None,
                      constrain=jax.vmap(info.postprocess_fn))


def _numpyro_constrained(model, latent, deterministic, supports, model_args,
                         model_kwargs):
  """`log_density` over the sites' values, `biject_to(support)` per site."""
  import numpyro  # pylint: disable=g-import-not-at-top
  from numpyro import handlers  # pylint: disable=g-import-not-at-top
  from numpyro.distributions.transforms import biject_to  # pylint: disable=g-import-not-at-top
  from numpyro.infer import util as npu  # pylint: disable=g-import-not-at-top

  def with_deterministic(z_one):
    if not deterministic:
      return z_one
    tr = handlers.trace(handlers.substitute(
        handlers.seed(model, 0), data=z_one)).get_trace(*model_args,
                                                        **model_kwargs)
    return {**z_one, **{n: tr[n]["value"] for n in deterministic}}

  def target_log_prob_fn(**z):
    log_joint, _ = npu.log_density(model, model_args, model_kwargs, z)
    return log_joint

  event_shape = {n: tuple(v[1].shape) for n, v in latent.items()}
  bijector = {}
  for n in latent:
    t = biject_to(supports[n])
    is_id = isinstance(t, numpyro.distributions.transforms.IdentityTransform)
    bijector[n] = None if is_id else NumPyroTransformBijector(t, name=n)
  return AdaptedModel(target_log_prob_fn=target_log_prob_fn,
                      event_shape=event_shape, bijector=bijector,
                      constrain=jax.vmap(with_deterministic))


# TFP JointDistribution --------------------------------------------------------


def _call_structure(example, fn):
  """Wraps `fn(structure)` in TFP's calling convention for `example`'s type."""
  if isinstance(example, dict):
    return lambda **z: fn(type(example)(z) if type(example) is not dict else z)
  if isinstance(example, (tuple, list)):
    if hasattr(example, "_fields"):
      return lambda *z: fn(type(example)(*z))
    return lambda *z: fn(type(example)(z))
  return fn


def from_tfp_joint_distribution(jd) -> AdaptedModel:
  """Adapts a TFP-on-JAX JointDistribution (pinned to data, or over latents).

  Pin the observed parts first (`jd.experimental_pin(y=y_obs)`) or pass a
  joint distribution over the latents only. The adapter works in the
  unconstrained space of `jd.experimental_default_event_space_bijector()` (see
  the module docstring): `target(u) = jd.unnormalized_log_prob(b(u)) +
  b.forward_log_det_jacobian(u)` (`log_prob` for an unpinned JD).

  Args:
    jd: a `tfp.substrates.jax.distributions.JointDistribution*` or the
      `JointDistributionPinned` from its `experimental_pin`.

  Returns:
    An `AdaptedModel` with the unconstrained structure of `jd.event_shape`
    (same containers), bijector None, and `constrain` = the bijector's forward
    map (draws in the model's own variables and containers).

  Raises:
    TypeError: if `jd` has no default event-space bijector.
  """
  pinned = tfp.experimental.distributions.JointDistributionPinned
  if not isinstance(jd, (tfp.distributions.JointDistribution, pinned)):
    raise TypeError("jd must be a TFP JointDistribution (or a pinned one); got "
                    f"{type(jd).__name__}.")
  log_prob = getattr(jd, "unnormalized_log_prob", None) or jd.log_prob
  # Building the joint bijector runs the model (TFP draws a sample to find
  # each part's support). Eagerly that is hundreds of tiny compiled ops, so it
  # is built only under tracing: once abstractly here for the shapes, and at
  # trace time inside the jitted target and `constrain`.
  shapes = {}

  def probe():
    shapes["u"] = jd.experimental_default_event_space_bijector(
    ).inverse_event_shape(jd.event_shape)
    return jnp.zeros(())

  jax.eval_shape(probe)
  u_shape = _normalize_shapes(shapes["u"])
  example = jax.tree_util.tree_map(lambda s: np.zeros(s, np.float32), u_shape,
                                   is_leaf=_is_shape_tuple)

  @jax.jit
  def log_prob_u(u):
    bij = jd.experimental_default_event_space_bijector()
    z, fldj = bij.forward(u), bij.forward_log_det_jacobian(u)
    return log_prob(z) + fldj

  @jax.jit
  def constrain(u):
    return jax.vmap(jd.experimental_default_event_space_bijector().forward)(u)

  return AdaptedModel(target_log_prob_fn=_call_structure(example, log_prob_u),
                      event_shape=u_shape, bijector=None, constrain=constrain)


def _is_shape_tuple(x) -> bool:
  return isinstance(x, tuple) and not hasattr(x, "_fields") and all(
      isinstance(d, (int, np.integer)) for d in x)


# inference_gym -----------------------------------------------------------------


def from_inference_gym(target, *,
                       transformation: str = "identity") -> AdaptedModel:
  """Adapts an inference_gym target (`inference_gym.using_jax`).

  Args:
    target: an inference_gym `Model` (e.g. `gym.targets.EightSchools()`).
    transformation: the key of `target.sample_transformations` whose ground
      truth becomes `reference` ("identity" by default).

  Returns:
    An `AdaptedModel` in the constrained space: `target_log_prob_fn` calls
    `target.unnormalized_log_prob`, `event_shape` and `bijector` are
    `target.event_shape` and `target.default_event_space_bijector` (same
    structure), `constrain` is the identity, and `reference` holds the ground
    truth mean and standard deviation of
    `target.sample_transformations[transformation]` (None when the target has
    no ground truth), which may describe a transformed quantity (stochastic
    volatility reports `log_volatility`, not the latent
    `std_log_volatility`).

  Raises:
    KeyError: unknown `transformation`.
  """
  event_shape = target.event_shape
  if isinstance(event_shape, dict):
    fn = lambda **z: target.unnormalized_log_prob(z)
  elif isinstance(event_shape, (tuple, list)):
    struct = type(event_shape)
    if hasattr(event_shape, "_fields"):
      fn = lambda *z: target.unnormalized_log_prob(struct(*z))
    else:
      fn = lambda *z: target.unnormalized_log_prob(struct(z))
  else:
    fn = target.unnormalized_log_prob
  reference = None
  if transformation not in target.sample_transformations:
    raise KeyError(f"transformation {transformation!r} not in the target's "
                   f"{list(target.sample_transformations)}.")
  tr = target.sample_transformations[transformation]
  mean = getattr(tr, "ground_truth_mean", None)
  std = getattr(tr, "ground_truth_standard_deviation", None)
  if mean is not None and std is not None:
    reference = ReferenceMoments(mean=mean, standard_deviation=std,
                                 transform=jax.vmap(tr))
  return AdaptedModel(target_log_prob_fn=fn,
                      event_shape=_normalize_shapes(event_shape),
                      bijector=target.default_event_space_bijector,
                      constrain=_identity, reference=reference)


# Blackjax-style logdensity_fn ---------------------------------------------------


def from_logdensity_fn(logdensity_fn: Callable, position: Any,
                       bijector: Any = None) -> AdaptedModel:
  """Adapts a Blackjax-style `logdensity_fn(position) -> scalar`.

  Args:
    logdensity_fn: log density of one position, called with the position as
      its single argument (Blackjax's convention).
    position: an example position (its values are not used): an array `[dim]`
      (a flat vector), an int `dim`, or a pytree of arrays (dict, tuple,
      namedtuple).
    bijector: optional bijector (or pytree of them, matching the position)
      onto the support, for a density defined on a constrained space.

  Returns:
    An `AdaptedModel` whose `event_shape` is `(dim,)` or the position's
    pytree of shapes, and whose target re-assembles the position and calls
    `logdensity_fn` on it.

  Raises:
    ValueError: if `position` is not an int >= 1, an array or a pytree of
      arrays.
  """
  if isinstance(position, (int, np.integer)) and not isinstance(position, bool):
    if position < 1:
      raise ValueError(f"position (a dimension) must be >= 1; got {position}.")
    return AdaptedModel(target_log_prob_fn=logdensity_fn,
                        event_shape=(int(position),), bijector=bijector,
                        constrain=_identity)
  leaves = jax.tree_util.tree_leaves(position)
  if not leaves or not all(hasattr(l, "shape") or isinstance(l, (float, int))
                           for l in leaves):
    raise ValueError(
        "position must be a dimension (int), an array [dim] or a pytree of "
        f"arrays; got {type(position).__name__}.")
  event_shape = jax.tree_util.tree_map(lambda x: tuple(jnp.shape(x)), position)
  if not isinstance(position, (dict, tuple, list)):
    return AdaptedModel(target_log_prob_fn=logdensity_fn,
                        event_shape=event_shape, bijector=bijector,
                        constrain=_identity)
  return AdaptedModel(target_log_prob_fn=_call_structure(position,
                                                         logdensity_fn),
                      event_shape=event_shape, bijector=bijector,
                      constrain=_identity)
