"""NSGD / INSGD: input-normalized SGD (Atici, Pan, Cetin), plus a Flax helper.

The step of every Dense/Conv kernel is divided by the energy ("power") of
that layer's *input*, as in NLMS adaptive filtering. The power is measured
during the forward pass by :func:`collect_input_power` and passed to
``update`` as the extra arg ``input_power`` (a pytree aligned with the
params; ``None`` leaves mean "no normalization", divisor 1).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import optax

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation
from optzoo._src import transform

__all__ = [
    "nsgd",
    "scale_by_input_power",
    "collect_input_power",
    "ScaleByInputPowerState",
]

_PAPER = (
    "Atici, Pan, Cetin. Normalized Stochastic Gradient Descent Training of"
    " Deep Neural Networks (arXiv 2212.09921; later versions: Input Normalized"
    " SGD, INSGD). https://arxiv.org/abs/2212.09921"
)
_HOW = (
    "collect each layer's input power during the forward pass and pass it,"
    " e.g. `out, power = optzoo.collect_input_power(model, {'params': params},"
    " x)` then `tx.update(grads, state, params, input_power=power)` (a pytree"
    " aligned with params; None leaves are not normalized)."
)


class ScaleByInputPowerState(NamedTuple):
  """State of :func:`scale_by_input_power`.

  Attributes:
    power: per-leaf accumulated input power (broadcast to the leaf's shape),
      or ``()`` when nothing is accumulated (``power_accum="none"``).
  """

  power: Any



@registry.register(
    family="research",
    summary="Divide each leaf's update by its layer's input power (NSGD's normalization).",
    paper=_PAPER,
    reference="NumPy re-derivation (tests/research/test_nsgd.py); official code"
    " SalihFurkan/Normalized-SGD nisgd.py for mode='log_power'",
    verified="NumPy re-derivation (tests/research/test_nsgd.py)",
    extra_args=("input_power",),
)
def scale_by_input_power(
    mode: str = "nlms",
    eps: float = 1e-8,
    power_decay: float = 0.9,
    power_accum: Optional[str] = None,
    floor: float = 0.01,
    dampening: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Divides every leaf's update by a function of its layer's input power.

  With :math:`x_k` the current input power of the leaf's layer (extra arg
  ``input_power``) and :math:`P_k` its accumulation:

  .. math::

    P_k = \begin{cases} x_k & \text{power\_accum = "none"} \\
                        \beta P_{k-1} + (1 - d)\, x_k & \text{"leaky\_sum"
                        (official code)} \\
                        \beta P_{k-1} + (1 - \beta)\, x_k & \text{"ema"
                        (README formula)} \end{cases}
    \qquad
    u \leftarrow \begin{cases} u / (\epsilon + P_k) & \text{mode = "nlms"} \\
                               u / \max(\log P_k, f) & \text{mode =
                               "log\_power"} \end{cases}

  (:math:`P_0 = 0`.) Leaves whose ``input_power`` entry is ``None`` are
  passed through unchanged (divisor 1).

  Args:
    mode: ``"nlms"`` (paper v1) or ``"log_power"`` (official code).
    eps: :math:`\epsilon` of the NLMS divisor.
    power_decay: :math:`\beta` of the power accumulation.
    power_accum: ``"none"``, ``"leaky_sum"`` or ``"ema"``; ``None`` means
      ``"none"`` for ``mode="nlms"`` and ``"leaky_sum"`` for
      ``mode="log_power"``.
    floor: :math:`f`, the lower clamp of :math:`\log P_k` (0.01 in the code).
    dampening: :math:`d` of the leaky sum (the code reuses SGD's dampening).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that needs the extra arg
    ``input_power``.
  """
  validation.check_choice("mode", mode, ("nlms", "log_power"))
  validation.check_nonneg("eps", eps)
  validation.check_beta("power_decay", power_decay)
  if power_accum is None:
    power_accum = "none" if mode == "nlms" else "leaky_sum"
  validation.check_choice("power_accum", power_accum, ("none", "leaky_sum", "ema"))
  validation.check_positive("floor", floor)
  validation.check_unit_interval("dampening", dampening)
  accumulate = power_accum != "none"

  def init_fn(params):
    if not accumulate:
      return ScaleByInputPowerState(power=())
    return ScaleByInputPowerState(power=jax.tree.map(
        lambda p: jnp.zeros_like(p, dtype=tree.compute_dtype(p)), params))

  def update_fn(updates, state, params=None, *, input_power=None,
                **extra_args):
    del params, extra_args
    validation.require_extra_arg(input_power, "input_power", "nsgd", _HOW)
    acc = state.power if accumulate else jax.tree.map(lambda _: None, updates)

    def leaf(u, x, p_old):
      if x is None:
        return u, p_old
      dt = tree.compute_dtype(u)
      x = jnp.broadcast_to(jnp.asarray(x, dt), jnp.shape(u))
      if power_accum == "leaky_sum":
        p_new = power_decay * p_old + (1.0 - dampening) * x
      elif power_accum == "ema":
        p_new = power_decay * p_old + (1.0 - power_decay) * x
      else:
        p_new = x
      if mode == "nlms":
        div = eps + p_new
      else:
        div = jnp.maximum(jnp.log(p_new), floor)
      out = (jnp.asarray(u, dt) / div).astype(jnp.asarray(u).dtype)
      return out, (p_new.astype(p_old.dtype) if accumulate else None)

    is_none = lambda z: z is None
    new_updates, new_power = tree.tree_unzip(
        jax.tree.map(leaf, updates, input_power, acc, is_leaf=is_none),
        updates, 2, is_leaf=is_none)
    if accumulate:
      return new_updates, ScaleByInputPowerState(power=new_power)
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@registry.register(
    family="research",
    summary="NSGD: SGD with each layer's step divided by its input power (NLMS-style).",
    paper=_PAPER,
    reference="NumPy re-derivation of the paper's rule and of the official"
    " code SalihFurkan/Normalized-SGD nisgd.py (tests/research/test_nsgd.py)",
    verified="NumPy re-derivation of the paper's rule and of SalihFurkan/Normalized-SGD nisgd.py (tests/research/test_nsgd.py)",
    extra_args=("input_power",),
    needs_params=True,
)
def nsgd(
    learning_rate: optax.ScalarOrSchedule = 0.1,
    momentum: float = 0.9,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 5e-4,
    mode: str = "nlms",
    eps: float = 1e-8,
    power_decay: Optional[float] = None,
    power_accum: Optional[str] = None,
    floor: float = 0.01,
) -> optax.GradientTransformationExtraArgs:
  r"""Input-normalized SGD: NLMS-style normalization of every layer's step.

  Each Dense/Conv kernel's step is divided by the energy of the layer's
  input :math:`x`, measured on the current minibatch. The paper (v1) rule,
  ``mode="nlms"`` (default):

  .. math::

    b_t = \mu b_{t-1} + (1-d)(g_t + \lambda w_t), \qquad
    w_{t+1} = w_t - \eta\, \frac{b_t}{\epsilon + \|x\|^2}

  with :math:`\|x\|^2` the ℓ2 energy (``norm="l2"`` in
  :func:`collect_input_power`: batch mean of :math:`\|x_n\|_2^2`) or the ℓ1
  variant (``norm="l1"``: batch mean of :math:`\|x_n\|_1`); biases and other
  leaves without an input power are not normalized (plain SGD). Momentum
  and weight decay follow ``torch.optim.SGD`` (first buffer = gradient,
  coupled L2, optional Nesterov).

  The official code (``SalihFurkan/Normalized-SGD``, ``nisgd.py``),
  ``mode="log_power"``, instead standardizes each sample's input (use
  ``collect_input_power(..., standardize=True)``), accumulates the power
  with a leaky sum :math:`P_t = \beta P_{t-1} + x_t` (:math:`\beta` =
  momentum) and divides by :math:`\max(\log P_t, 0.01)`:

  .. math::

    w_{t+1} = w_t - \eta\, \frac{b_t}{\max(\log P_t, f)}

  ``power_accum="ema"`` gives the README's :math:`P_t = \beta P_{t-1} +
  (1-\beta) x_t`. The later ``INSGD/insgd.py`` variant (RMS accumulator of
  the normalized step) is not implemented.

  Invariance (the NLMS property, ℓ2, ``mode="nlms"``, ``eps=0``, no weight
  decay): scaling a layer's input by :math:`c` while dividing its kernel by
  :math:`c` leaves the network function *and its whole training trajectory*
  (losses, outputs) unchanged, because the kernel gradient scales by
  :math:`c` and the power by :math:`c^2`. Plain SGD and the ℓ1 variant are
  not invariant.

  Defaults follow the official ``main.py`` (lr 0.1, momentum 0.9, weight
  decay 5e-4); with ``mode="nlms"`` the effective per-layer step is
  ``lr / power``, so the lr usually needs retuning.

  Args:
    learning_rate: :math:`\eta`, a float or a schedule.
    momentum: :math:`\mu`.
    dampening: :math:`d` (torch SGD dampening).
    nesterov: Nesterov momentum (torch form).
    weight_decay: coupled L2 :math:`\lambda`.
    mode: ``"nlms"`` (paper) or ``"log_power"`` (official code).
    eps: :math:`\epsilon` of the NLMS divisor.
    power_decay: :math:`\beta` of the power accumulation; ``None`` = the
      momentum coefficient, as in the code.
    power_accum: ``"none"``, ``"leaky_sum"`` or ``"ema"`` (``None``: "none"
      for ``nlms``, "leaky_sum" for ``log_power``).
    floor: lower clamp of :math:`\log P` in ``log_power`` mode.

  Returns:
    An ``optax.GradientTransformationExtraArgs``: ``update`` needs
    ``params`` (for weight decay) and the extra arg ``input_power``.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax, optzoo
    >>> model = nn.Dense(3)
    >>> x = jnp.ones((4, 5))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> tx = optzoo.nsgd(0.1)
    >>> state = tx.init(params)
    >>> def loss_fn(p):
    ...   out, power = optzoo.collect_input_power(model, {"params": p}, x)
    ...   return jnp.mean(out ** 2), power
    >>> (loss, power), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    >>> updates, state = tx.update(g, state, params, input_power=power)

  References:
    Atici, Pan, Cetin, `Normalized Stochastic Gradient Descent Training of
    Deep Neural Networks <https://arxiv.org/abs/2212.09921>`_; official code
    `SalihFurkan/Normalized-SGD
    <https://github.com/SalihFurkan/Normalized-SGD>`_.
  """
  validation.check_lr(learning_rate)
  validation.check_beta("momentum", momentum)
  validation.check_nonneg("weight_decay", weight_decay)
  if power_decay is None:
    power_decay = momentum
  # add_l2 is always present (a literal 0 is a stateless no-op): the same
  # state structure as with an injected weight decay.
  links = [transform.add_l2(weight_decay)]
  links.append(transform.trace(momentum, nesterov, dampening=dampening))
  links.append(scale_by_input_power(mode=mode, eps=eps, power_decay=power_decay,
                                    power_accum=power_accum, floor=floor,
                                    dampening=dampening))
  links.append(transform.scale_by_learning_rate(learning_rate))
  return optax.chain(*links)


# ---------------------------------------------------------------------------
# Flax helper
# ---------------------------------------------------------------------------


def _standardize(x: chex.Array, axes: Sequence[int]) -> chex.Array:
  """Per-sample standardization as in the official code (unbiased std)."""
  n = 1
  for a in axes:
    n *= x.shape[a]
  mean = jnp.mean(x, axis=tuple(axes), keepdims=True)
  if n > 1:
    std = jnp.sqrt(jnp.sum((x - mean) ** 2, axis=tuple(axes), keepdims=True)
                   / (n - 1))
  else:  # torch.std of one element is nan, which the code maps to 0.99
    std = jnp.full_like(mean, 0.99)
  return (x - mean) / jnp.maximum(std, 0.01)


def _energy(x: chex.Array, axes: Sequence[int], norm: str) -> chex.Array:
  if norm == "l1":
    return jnp.sum(jnp.abs(x), axis=tuple(axes))
  return jnp.sum(x * x, axis=tuple(axes))


def _dense_power(x, norm, standardize):
  x = jnp.asarray(x)
  x = x.reshape((-1, x.shape[-1])) if x.ndim != 1 else x[None]
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if standardize:
    x = _standardize(x, (1,))
  return jnp.mean(_energy(x, (1,), norm))


def _conv_power(x, norm, standardize):
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  spatial = tuple(range(1, x.ndim - 1))
  if standardize:
    x = _standardize(x, spatial)
  return jnp.mean(_energy(x, spatial, norm), axis=0)  # (C_in,)


@registry.register(
    family="research",
    summary="Flax helper: run a model and collect each Dense/Conv input power for nsgd.",
    paper=_PAPER,
    reference="definition (batch mean of ||x||^2 / ||x||_1 per layer;"
    " per input channel for convs, as nisgd.py)",
    verified="definition (tests/research/test_nsgd.py)",
    kind="utility",
)
def collect_input_power(
    module: Any,
    variables: Any,
    *args: Any,
    norm: str = "l2",
    standardize: bool = False,
    layer_types: Optional[tuple] = None,
    method: Optional[Callable[..., Any]] = None,
    **apply_kwargs: Any,
) -> tuple:
  r"""Runs ``module.apply`` and measures the input power of every Dense/Conv.

  The forward pass is intercepted (``flax.linen.intercept_methods``): for
  every call of a ``nn.Dense`` / ``nn.Conv`` (or ``layer_types``) the input
  :math:`x` is reduced to a power statistic, and the results are mapped
  onto a pytree aligned with ``variables["params"]``: the layer's
  ``kernel`` leaf gets the power (shaped to broadcast against the kernel),
  every other leaf ``None``. This is the ``input_power`` extra arg of
  :func:`nsgd`.

  * Dense, input ``(..., d)``: batch mean of :math:`\|x_n\|_2^2`
    (``norm="l2"``) or :math:`\|x_n\|_1` (``norm="l1"``), a scalar.
  * Conv, input ``(N, *spatial, C_in)``: per input channel, the sum over
    spatial positions, batch mean, shape ``(1, ..., 1, C_in, 1)``
    (depthwise convs: aligned with the output axis; other grouped convs: the
    channel mean, a scalar).
  * ``standardize=True`` first standardizes each sample (per channel for
    convs) over its features (unbiased std clamped below at 0.01), as the
    official code does; use it with ``nsgd(mode="log_power")``.

  A layer called several times gets the mean of its powers. The power is
  wrapped in ``stop_gradient``.

  Args:
    module: a ``flax.linen`` module.
    variables: its variables (``{"params": ...}``, plus e.g. batch stats).
    *args: positional args of ``module.apply`` (the inputs).
    norm: ``"l2"`` or ``"l1"``.
    standardize: standardize each sample first (official code).
    layer_types: module classes to measure (default ``(nn.Dense, nn.Conv)``).
    method: forwarded to ``module.apply``.
    **apply_kwargs: forwarded to ``module.apply`` (``mutable=``, rngs, ...).

  Returns:
    ``(outputs, input_power)`` where ``outputs`` is whatever ``apply``
    returned.
  """
  import flax.linen as nn  # local: flax is only needed for this helper

  validation.check_choice("norm", norm, ("l2", "l1"))
  validation.check_bool("standardize", standardize)
  if layer_types is None:
    layer_types = (nn.Dense, nn.Conv)
  records: dict = {}

  def interceptor(next_fun, call_args, call_kwargs, context):
    mod = context.module
    if context.method_name == "__call__" and isinstance(mod, layer_types):
      x = call_args[0] if call_args else next(iter(call_kwargs.values()))
      x = jax.lax.stop_gradient(x)
      if isinstance(mod, nn.Conv):
        stat = ("conv", _conv_power(x, norm, standardize),
                getattr(mod, "feature_group_count", 1))
      else:
        stat = ("dense", _dense_power(x, norm, standardize), 1)
      records.setdefault(tuple(mod.scope.path), []).append(stat)
    return next_fun(*call_args, **call_kwargs)

  kwargs = dict(apply_kwargs)
  if method is not None:
    kwargs["method"] = method
  with nn.intercept_methods(interceptor):
    outputs = module.apply(variables, *args, **kwargs)

  params = variables["params"]

  def to_leaf(path, leaf):
    names = tuple(getattr(k, "key", getattr(k, "name", k)) for k in path)
    if not names or names[-1] != "kernel" or names[:-1] not in records:
      return None
    stats = records[names[:-1]]
    kind = stats[0][0]
    val = sum(s[1] for s in stats) / len(stats)
    if kind == "dense":
      return val
    groups = stats[0][2]
    shape = jnp.shape(leaf)
    if groups == 1 and val.shape[0] == shape[-2]:
      return val.reshape((1,) * (len(shape) - 2) + (shape[-2], 1))
    if val.shape[0] == shape[-1] and shape[-2] == 1:  # depthwise
      return val.reshape((1,) * (len(shape) - 1) + (shape[-1],))
    return jnp.mean(val)

  power = jax.tree_util.tree_map_with_path(to_leaf, params)
  return outputs, power
