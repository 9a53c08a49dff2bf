"""GradMax: grow neurons so that the new weights' gradient norm is maximal (Evci et al., ICLR 2022).

Evci et al., "GradMax: Growing Neural Networks using Gradient Information",
ICLR 2022; official code ``google-research/growneuron``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation

__all__ = ["GradMaxResult", "gradmax_fanout", "gradmax_grow", "gradmax_matrix",
           "grow_optimizer_state"]

Path = Union[str, Sequence[str]]


def _as_path(p: Path) -> tuple:
  if isinstance(p, str):
    return tuple(s for s in p.split("/") if s)
  return tuple(p)


def _find_layer(params, path, name):
  node = tree.tree_get_path(params, path, None)
  if node is None and hasattr(params, "keys") and "params" in params:
    node = tree.tree_get_path(params["params"], path, None)
    path = ("params",) + path
  if node is None or "kernel" not in node:
    raise ValueError(f"gradmax_grow: `{name}` {'/'.join(path)!r} is not a Dense layer"
                     " (a dict with a 'kernel') in params.")
  if jnp.ndim(node["kernel"]) != 2:
    raise ValueError(f"gradmax_grow: `{name}` must be a Dense layer with a 2-D kernel,"
                     f" got shape {jnp.shape(node['kernel'])}.")
  return path, node


class GradMaxResult(NamedTuple):
  """What :func:`gradmax_grow` returns.

  Attributes:
    params: the widened parameters (use them with the widened model).
    opt_state: the optimizer state padded with zeros (``None`` if none given).
    m_matrix: :math:`M = \\mathbb E[g_{l+1} h_{l-1}^\\top]`, shape
      ``(m_{l+1}, m_{l-1})`` (``None`` for random growth).
  """

  params: Any
  opt_state: Any
  m_matrix: Any


def gradmax_matrix(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any,
                   layer: Path, next_layer: Path) -> jax.Array:
  r""":math:`M = \sum_i g_{l+1,i}\, h_{l-1,i}^\top` (over the batch, as the loss reduces it).

  ``h_{l-1}`` is the input of the Flax module at path ``layer`` and
  :math:`g_{l+1} = \partial L/\partial z_{l+1}` the cotangent of the output of
  the module at ``next_layer``. Computed as in the official code: the
  gradient of the loss with respect to a zero auxiliary linear map from
  :math:`h_{l-1}` into :math:`z_{l+1}`, added through
  ``flax.linen.intercept_methods`` while ``loss_fn(params, batch)`` runs.
  Shape ``(m_{l+1}, m_{l-1})``.
  """
  lp, np_ = _as_path(layer), _as_path(next_layer)
  _, lnode = _find_layer(params, lp, "layer")
  _, nnode = _find_layer(params, np_, "next_layer")
  d_in = lnode["kernel"].shape[0]
  d_out = nnode["kernel"].shape[1]
  dt = jnp.result_type(nnode["kernel"])

  def aux_loss(aux, params, batch):
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
      mod = context.module
      if context.method_name != "__call__" or mod.path is None:
        return next_fun(*args, **kwargs)
      path = tuple(mod.path)
      out = next_fun(*args, **kwargs)
      if path == lp and "h" not in seen:
        seen["h"] = args[0] if args else next(iter(kwargs.values()))
      if path == np_ and "h" in seen and "used" not in seen:
        seen["used"] = True
        out = out + (seen["h"] @ aux).astype(out.dtype)
      return out

    with nn.intercept_methods(interceptor):
      val = loss_fn(params, batch)
    if "used" not in seen:
      raise ValueError(
          f"gradmax_matrix: modules {'/'.join(lp)!r} and {'/'.join(np_)!r} were not both"
          " called (in this order) by loss_fn(params, batch); pass their Flax module"
          " paths, e.g. layer='Dense_1', next_layer='Dense_2'.")
    return val

  g = jax.jit(jax.grad(aux_loss))(jnp.zeros((d_in, d_out), dt), params, batch)
  return g.T


@registry.register(
    family="research",
    summary="GradMax fan-out: top-k left singular vectors of M, rescaled to scale * ref_norm.",
    paper="Evci et al., GradMax: Growing Neural Networks using Gradient Information, ICLR 2022",
    reference="definition (SVD); tests check optimality against random directions",
    verified="definition via the SVD (tests/research/test_gradmax.py)",
    kind="utility",
)
def gradmax_fanout(m_matrix: Any, k: int, ref_norm: float, scale: float = 0.5) -> jax.Array:
  r"""The ``k`` GradMax fan-out vectors as rows, shape ``(k, m_{l+1})``.

  Maximizes :math:`\lVert W_{new}^\top M\rVert_F` over fan-outs with bounded
  norm: the top-``k`` left singular vectors :math:`u_1..u_k` of ``M``, each
  of unit norm times ``scale * ref_norm`` (the official ``mean_norm``
  scaling: ``ref_norm`` = mean norm of the existing fan-out vectors).
  """
  validation.check_int("k", k, minimum=1)
  validation.check_nonneg("scale", scale)
  validation.check_nonneg("ref_norm", ref_norm)
  m = jnp.asarray(m_matrix)
  if k > min(m.shape):
    raise ValueError(f"`k`={k} exceeds the rank bound min{m.shape} of M; grow fewer"
                     " neurons at once.")
  u, _, _ = jnp.linalg.svd(m, full_matrices=False)
  return (u[:, :k].T * (scale * ref_norm)).astype(m.dtype)


@registry.register(
    family="research",
    summary="Grow k neurons in a Dense layer: zero fan-in, GradMax (SVD) fan-out; output unchanged, optimizer state padded.",
    paper="Evci et al., GradMax: Growing Neural Networks using Gradient Information, ICLR 2022",
    reference="google-research/growneuron (growers.py); tests: output unchanged, gradient norm vs random growth",
    kind="utility",
)
def gradmax_grow(
    loss_fn: Optional[Callable[[Any, Any], jax.Array]] = None,
    params: Any = None,
    batch: Any = None,
    *,
    layer: Path = "Dense_0",
    next_layer: Path = "Dense_1",
    k: int = 1,
    scale: float = 0.5,
    method: str = "gradmax",
    key: Optional[jax.Array] = None,
    opt_state: Any = None,
    m_matrix: Any = None,
) -> GradMaxResult:
  r"""Adds ``k`` neurons to Dense layer ``l`` without changing the network's function.

  With :math:`z_{l+1} = W_{l+1} h_l`, :math:`h_l = \sigma(W_l h_{l-1})`:

  * new fan-in :math:`W_l^{new} = 0` (and bias 0), so with :math:`\sigma(0)=0`
    the output is unchanged;
  * new fan-out (rows appended to the next kernel): GradMax picks the
    top-``k`` left singular vectors of :math:`M = \mathbb E[g_{l+1}h_{l-1}^\top]`,
    maximizing the new fan-in's gradient norm
    :math:`\lVert \sigma'(0)\, W_{l+1}^{new\top} M\rVert_F`; ``method="random"``
    uses Gaussian directions instead (the paper's baseline). Each vector is
    scaled to ``scale`` × the mean norm of the existing fan-out vectors
    (official ``scale_method='mean_norm'``, ``scale=0.5``).
  * ``opt_state`` (any optax state whose subtrees mirror ``params``) is padded
    with zeros for the new entries (official ``carry_optimizer=True``).

  Build the widened model yourself (e.g. ``features + k``) and use the
  returned params with it.

  .. warning:: The new fan-in's gradient is scaled by :math:`\sigma'(0)`:
     ``jax.nn.relu`` has derivative 0 at exactly 0, so zero fan-in neurons
     behind a JAX ReLU receive no gradient through the fan-in (use e.g.
     ``tanh``, GELU-like units, or a tiny random fan-in). The fan-out still
     gets gradients once the fan-in moves.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` running the Flax model
      (used to compute M; not needed with ``m_matrix`` or random growth).
    params: the model's parameters (the ``params`` collection, or the whole
      variables dict).
    batch: the growth batch (official: 128 examples).
    layer: Flax module path of the layer to widen (e.g. ``"Dense_1"`` or
      ``("Block_0", "Dense_1")``).
    next_layer: module path of the Dense layer that consumes its output.
    k: number of neurons to add.
    scale: fan-out scale relative to the mean existing fan-out norm.
    method: ``"gradmax"`` or ``"random"``.
    key: PRNG key for ``method="random"``.
    opt_state: optional optimizer state to pad.
    m_matrix: precomputed M (skips ``loss_fn``).

  Returns:
    :class:`GradMaxResult` ``(params, opt_state, m_matrix)``.

  References:
    Evci et al., `GradMax: Growing Neural Networks using Gradient Information
    <https://arxiv.org/abs/2201.05125>`_, ICLR 2022; code
    `google-research/growneuron <https://github.com/google-research/growneuron>`_.
  """
  validation.check_int("k", k, minimum=1)
  validation.check_nonneg("scale", scale)
  validation.check_choice("method", method, ("gradmax", "random"))
  if params is None:
    raise ValueError("gradmax_grow needs the model's `params`.")
  lpath, lnode = _find_layer(params, _as_path(layer), "layer")
  npath, nnode = _find_layer(params, _as_path(next_layer), "next_layer")
  w_l, w_n = lnode["kernel"], nnode["kernel"]
  if w_l.shape[1] != w_n.shape[0]:
    raise ValueError(f"gradmax_grow: `layer` has {w_l.shape[1]} outputs but `next_layer`"
                     f" takes {w_n.shape[0]} inputs; they must be consecutive.")
  ref = jnp.mean(jnp.linalg.norm(w_n, axis=1))
  if method == "gradmax":
    if m_matrix is None:
      if loss_fn is None or batch is None:
        raise ValueError("gradmax_grow(method='gradmax') needs `loss_fn(params, batch)`"
                         " and `batch` (or a precomputed `m_matrix`).")
      m_matrix = gradmax_matrix(loss_fn, params, batch, layer, next_layer)
    fan_out = gradmax_fanout(m_matrix, k, ref, scale)
  else:
    if key is None:
      raise ValueError("gradmax_grow(method='random') needs a PRNG `key`.")
    d = jax.random.normal(key, (k, w_n.shape[1]), w_n.dtype)
    fan_out = d / jnp.linalg.norm(d, axis=1, keepdims=True) * (scale * ref)
  new_l = dict(lnode)
  new_l["kernel"] = jnp.concatenate([w_l, jnp.zeros((w_l.shape[0], k), w_l.dtype)], 1)
  if "bias" in lnode and lnode["bias"] is not None:
    new_l["bias"] = jnp.concatenate([lnode["bias"], jnp.zeros((k,), lnode["bias"].dtype)])
  new_n = dict(nnode)
  new_n["kernel"] = jnp.concatenate([w_n, fan_out.astype(w_n.dtype)], 0)
  new_params = tree.tree_set_path(tree.tree_set_path(params, lpath, new_l), npath,
                                  new_n)
  new_state = None
  if opt_state is not None:
    new_state = grow_optimizer_state(opt_state, params, new_params)
  return GradMaxResult(new_params, new_state, m_matrix)


def grow_optimizer_state(opt_state: Any, old_params: Any, new_params: Any) -> Any:
  """Pads every params-shaped subtree of ``opt_state`` with zeros to ``new_params``' shapes.

  Leaves whose shape grew keep their old values in the leading block; the
  new entries (the new neurons' moments, momentum buffers...) start at 0.
  Counters and other leaves are unchanged.
  """
  old_def = jax.tree.structure(old_params)
  old_leaves = jax.tree.leaves(old_params)
  new_leaves = jax.tree.leaves(new_params)

  def is_params_like(x):
    try:
      return jax.tree.structure(x) == old_def and all(
          jnp.shape(a) == jnp.shape(b) for a, b in zip(jax.tree.leaves(x), old_leaves))
    except Exception:  # pylint: disable=broad-except
      return False

  def pad_tree(x):
    if not is_params_like(x):
      return x
    leaves = jax.tree.leaves(x)
    out = []
    for a, new in zip(leaves, new_leaves):
      if jnp.shape(a) == jnp.shape(new):
        out.append(a)
        continue
      pad = [(0, n - o) for o, n in zip(jnp.shape(a), jnp.shape(new))]
      out.append(jnp.pad(a, pad))
    return jax.tree.unflatten(old_def, out)

  return jax.tree.map(pad_tree, opt_state, is_leaf=is_params_like)
