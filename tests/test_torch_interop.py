"""Resume a torch run in optzoo from its state_dicts (torch 2.13 fixtures).

Fixtures: tests/fixtures/torch_interop.npz, written by
tests/gen_torch_interop_fixtures.py. torch ran 200 steps; here its
state_dicts after 100 steps (NumPy arrays, as CI has no torch) are converted
and optzoo runs the other 100: the params must equal torch's at 200.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo import schedules as S
from helpers import fixture_path

FIX = np.load(fixture_path("torch_interop.npz"))
ORDER = [("l1/kernel", "T"), "l1/bias", ("l2/kernel", "T"), "l2/bias"]
TORCH = ("0.weight", "0.bias", "2.weight", "2.bias")


def _params(prefix):
  g = lambda k: jnp.asarray(FIX[f"{prefix}/{k}"])
  return {"l1": {"kernel": g("0.weight").T, "bias": g("0.bias")},
          "l2": {"kernel": g("2.weight").T, "bias": g("2.bias")}}


def _state_dict(case):
  """The torch optimizer state_dict, rebuilt from NumPy arrays."""
  state = {}
  for k in FIX.files:
    if k.startswith(f"{case}/state/"):
      _, _, idx, key = k.split("/")
      state.setdefault(int(idx), {})[key] = FIX[k]
  groups = json.loads(str(FIX[f"{case}/param_groups"]))
  if case.startswith("sgd"):
    for i in range(4):
      state.setdefault(i, {}).setdefault("momentum_buffer", None)
  return {"state": state, "param_groups": groups}


def _loss(p, x, y):
  h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
  return jnp.mean((h @ p["l2"]["kernel"] + p["l2"]["bias"] - y) ** 2)


def _continue(tx, params, state, steps=100):
  x, y = jnp.asarray(FIX["data/x"]), jnp.asarray(FIX["data/y"])

  def body(carry, _):
    p, s = carry
    u, s = tx.update(jax.grad(_loss)(p, x, y), s, p)
    return (optax.apply_updates(p, u), s), None

  return jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None,
                                           length=steps)[0])(params, state)


CASES = {
    "adamw_onecycle": lambda: optax.inject_hyperparams(optzoo.adamw)(
        learning_rate=S.one_cycle(0.02, 200), b1=S.one_cycle_momentum(200),
        weight_decay=0.05),
    "sgd_nesterov_multistep": lambda: optax.inject_hyperparams(
        optzoo.sgd, static_args=("nesterov",))(
            learning_rate=S.multi_step_lr(0.05, [50, 150], 0.3),
            momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam_amsgrad_cosine": lambda: optax.inject_hyperparams(optzoo.adam)(
        learning_rate=S.cosine_annealing_lr(0.01, 200), amsgrad=True),
}
# The same torch runs resumed into other optzoo state layouts: a plain
# schedule (ScaleByScheduleState) and param groups (multi_transform).
VARIANTS = {
    "adam_amsgrad_cosine": lambda: optzoo.adam(
        S.cosine_annealing_lr(0.01, 200), amsgrad=True),
    "adamw_onecycle": lambda: optzoo.param_groups(
        optax.inject_hyperparams(optzoo.adamw),
        [{"params": "l1/**"}, {"params": "**"}],
        defaults=dict(learning_rate=S.one_cycle(0.02, 200),
                      b1=S.one_cycle_momentum(200), weight_decay=0.05)),
}


def _max_rel(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)) /
                          np.maximum(np.abs(np.asarray(y)), 1e-6)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_torch_run(case):
  tx = CASES[case]()
  p100, p200 = _params(f"{case}/p100"), _params(f"{case}/p200")
  step = optzoo.from_torch_scheduler_state(
      {"last_epoch": int(FIX[f"{case}/sched_last_epoch"])})
  assert step == 100
  state = optzoo.from_torch_optimizer_state(_state_dict(case), tx.init(p100),
                                            p100, ORDER, step=step)
  p, _ = _continue(tx, p100, state)
  assert _max_rel(p, p200) <= 1e-6, _max_rel(p, p200)
  # Negative control: a fresh optimizer state (what a naive port does).
  p_fresh, _ = _continue(tx, p100, tx.init(p100))
  assert _max_rel(p_fresh, p200) > 1e-4
  # Round trip back to a torch-style state_dict.
  back = optzoo.to_torch_optimizer_state(state, p100, ORDER,
                                         like=_state_dict(case),
                                         as_torch=False)
  ref = _state_dict(case)["state"]
  for i in range(4):
    for k, v in ref[i].items():
      if v is not None:
        np.testing.assert_allclose(np.asarray(back["state"][i][k]), v,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_resume_into_other_state_layouts(case):
  tx = VARIANTS[case]()
  p100, p200 = _params(f"{case}/p100"), _params(f"{case}/p200")
  state = optzoo.from_torch_optimizer_state(_state_dict(case), tx.init(p100),
                                            p100, ORDER, step=100)
  p, _ = _continue(tx, p100, state)
  assert _max_rel(p, p200) <= 1e-6, _max_rel(p, p200)


def test_without_inject_hyperparams_and_default_step():
  """A plain optzoo.adam state takes Adam's own step count."""
  case = "adam_amsgrad_cosine"
  p100 = _params(f"{case}/p100")
  tx = optzoo.adam(0.01, amsgrad=True)
  st = optzoo.from_torch_optimizer_state(_state_dict(case), tx.init(p100),
                                         p100, ORDER)
  adam_state = next(s for s in st if hasattr(s, "nu_max"))  # after the (empty) L2 link
  assert int(adam_state.count) == 100
  np.testing.assert_array_equal(np.asarray(adam_state.nu_max["l1"]["kernel"]),
                                FIX[f"{case}/state/0/max_exp_avg_sq"].T)


def test_plateau_scheduler_state():
  st = optzoo.from_torch_scheduler_state(
      {"best": 0.5, "num_bad_epochs": 3, "cooldown_counter": 1,
       "_last_lr": [0.01], "mode": "min", "last_epoch": 7})
  assert float(st.lr) == 0.01 and bool(st.has_best) and int(
      st.num_bad_epochs) == 3
  fresh = optzoo.from_torch_scheduler_state(
      {"best": float("inf"), "num_bad_epochs": 0, "cooldown_counter": 0,
       "_last_lr": [0.1]})
  assert not bool(fresh.has_best)
  tx = optzoo.reduce_lr_on_plateau(0.1)
  assert jax.tree.structure(tx.init({})) == jax.tree.structure(st)


def _adam_template():
  p = _params("adam_amsgrad_cosine/p100")
  return p, optzoo.adam(0.01, amsgrad=True).init(p)


@pytest.mark.parametrize("mutate,exc,word", [
    (lambda sd, p, st, o: (_state_dict("sgd_nesterov_multistep"), p, st, o),
     ValueError, "from SGD"),
    (lambda sd, p, st, o: (sd, p, optzoo.adam(0.01).init(p), o), ValueError,
     "amsgrad=True"),
    (lambda sd, p, st, o: (sd, p, optzoo.sgd(0.1, momentum=0.9).init(p), o),
     ValueError, "Adam/AdamW"),
    (lambda sd, p, st, o: (sd, p, st, o[:3]), ValueError, "misses"),
    (lambda sd, p, st, o: (sd, p, st, ["l1/kernel", "l1/bias", ("l2/kernel",
                                                                "T"),
                                       "l2/bias"]), ValueError, "shape"),
    (lambda sd, p, st, o: (sd, p, st, o + ["l3/bias"]), ValueError, "l3/bias"),
    (lambda sd, p, st, o: ({"state": {0: {"square_avg": np.ones(3)}},
                            "param_groups": [{"alpha": 0.99, "params": [0]}]},
                           p, st, o), ValueError, "unsupported"),
    (lambda sd, p, st, o: ({"weights": 1}, p, st, o), TypeError,
     "state_dict"),
])
def test_bad_input_is_a_clear_error(mutate, exc, word):
  p, st = _adam_template()
  sd, p, st, order = mutate(_state_dict("adam_amsgrad_cosine"), p, st,
                            list(ORDER))
  with pytest.raises(exc) as err:
    optzoo.from_torch_optimizer_state(sd, st, p, order)
  assert word in str(err.value), str(err.value)


def test_sgd_count_mismatch_and_missing_step():
  p = _params("sgd_nesterov_multistep/p100")
  sd = _state_dict("sgd_nesterov_multistep")
  tx = CASES["sgd_nesterov_multistep"]()
  with pytest.raises(ValueError, match="step="):
    optzoo.from_torch_optimizer_state(sd, tx.init(p), p, ORDER)
  sd["param_groups"][0]["params"] = [0, 1, 2]
  with pytest.raises(ValueError, match="3 parameters"):
    optzoo.from_torch_optimizer_state(sd, tx.init(p), p, ORDER, step=100)
