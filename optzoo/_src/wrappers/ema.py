"""Parameter EMA / BYOL target network / uniform (SWA) averaging."""
from __future__ import annotations

from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from optzoo._src import registry
from optzoo._src import tree
from optzoo._src import validation

__all__ = ["param_ema", "ema_params", "ParamEmaState"]


class ParamEmaState(NamedTuple):
  """State of :func:`param_ema`.

  Attributes:
    count: number of parameter snapshots averaged so far (int32; torch's
      ``n_averaged``).
    ema: the averaged parameters (same tree and dtypes as params).
  """

  count: jax.Array
  ema: optax.Params


@registry.register(
    family="wrapper",
    summary="EMA (or uniform SWA average) of the parameters, e.g. a BYOL"
    " target network; passes updates through unchanged.",
    paper="Grill et al., Bootstrap Your Own Latent, NeurIPS 2020,"
    " https://arxiv.org/abs/2006.07733; Izmailov et al., Averaging Weights"
    " Leads to Wider Optima, UAI 2018",
    reference="torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn"
    " / get_swa_multi_avg_fn",
    verified="torch.optim.swa_utils.AveragedModel 2.13, float64 (tests/wrappers/test_ema.py)",
    needs_params=True,
)
def param_ema(
    decay: Union[float, optax.Schedule] = 0.999,
    copy_first: bool = True,
    mode: str = "ema",
) -> optax.GradientTransformation:
  r"""Keeps an average of the parameters in the state (updates unchanged).

  Put it **last** in an ``optax.chain`` (after the learning rate): it sees
  the final updates and averages the new parameters
  :math:`x_{t+1} = x_t + u_t`, exactly what
  ``torch.optim.swa_utils.AveragedModel.update_parameters`` averages when
  called after ``opt.step()``:

  .. math::

    \text{ema:}\quad \xi \leftarrow \xi + (1 - \tau_k)(x_{t+1} - \xi),
    \qquad \text{uniform:}\quad \xi \leftarrow \xi + \frac{x_{t+1} - \xi}{n+1}

  where :math:`k` (= :math:`n`) is the number of snapshots averaged before
  this one; ``decay`` :math:`\tau` may be a schedule of :math:`k` (e.g.
  :func:`optzoo.schedules.byol_tau_schedule` for BYOL's
  :math:`\tau_k = 1 - (1 - \tau_{\text{base}})(\cos(\pi k/K) + 1)/2`).

  With ``copy_first=True`` (torch's ``AveragedModel``) the first update
  copies :math:`x_1` into :math:`\xi`; with ``copy_first=False`` the average
  starts from the initial parameters given to ``init`` (the BYOL target
  initialisation :math:`\xi_0 = \theta_0`). There is no bias correction
  (``optax.ema`` is an EMA of *updates* with debiasing, a different thing).

  Read the average with :func:`ema_params` (it searches nested
  ``chain`` / ``inject_hyperparams`` / ``MultiSteps`` states).

  Args:
    decay: :math:`\tau` in [0, 1] (float or schedule of the snapshot count).
      Ignored for ``mode="uniform"``.
    copy_first: the first update copies the parameters (torch) instead of
      averaging them into the initial parameters (BYOL).
    mode: ``"ema"`` or ``"uniform"`` (SWA's running mean).

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax, optzoo
    >>> tx = optax.chain(optzoo.adam(1e-2), optzoo.param_ema(0.99))
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    >>> avg = optzoo.ema_params(state)
  """
  if not callable(decay):
    validation.check_unit_interval("decay", decay)
  validation.check_bool("copy_first", copy_first)
  validation.check_choice("mode", mode, ("ema", "uniform"))

  def init_fn(params):
    return ParamEmaState(count=jnp.zeros([], jnp.int32),
                         ema=jax.tree.map(jnp.asarray, params))

  def update_fn(updates, state, params=None):
    validation.require_params(params, "param_ema")
    new_params = optax.apply_updates(params, updates)
    n = state.count
    if mode == "ema":
      tau = decay(n) if callable(decay) else decay
      weight = 1.0 - jnp.asarray(tau, tree.float_dtype())
    else:
      weight = 1.0 / (n.astype(tree.float_dtype()) + 1.0)

    def avg(e, x):
      new = e + (weight * (x - e)).astype(e.dtype)
      if copy_first:
        new = jnp.where(n == 0, x.astype(e.dtype), new)
      return new.astype(e.dtype)

    ema = jax.tree.map(avg, state.ema, new_params)
    return updates, ParamEmaState(count=optax.safe_increment(n), ema=ema)

  return optax.GradientTransformation(init_fn, update_fn)


def ema_params(state: Any) -> Any:
  """The averaged parameters held by the (first) :func:`param_ema` state in
  ``state`` (searches ``optax.chain`` / ``inject_hyperparams`` / ``MultiSteps``
  states)."""
  found = tree.find_state(state, ParamEmaState)
  if found is None:
    raise ValueError("no param_ema state found in `state`: add"
                     " optzoo.param_ema(...) as the last link of your"
                     " optax.chain.")
  return found.ema
