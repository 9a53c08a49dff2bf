"""Test data for every registered method: an example instance and bad inputs.

``EXAMPLES[name]`` are keyword arguments that build a sensible instance of the
method (used by the registry-wide tests). For wrappers, a string value of
``inner`` / ``base_optimizer`` names another registered method, built from its
own example. ``INVALID[name]`` are ``(overrides, exception_type)`` pairs that
must raise at construction (tests/test_registry_validation.py).

>>> import optzoo, registry_cases
>>> tx = registry_cases.build(optzoo.get_info("adam"))
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optzoo

_INNER_KEYS = ("inner", "base_optimizer")
_NEG_LR = ({"learning_rate": -1e-3}, ValueError)

EXAMPLES: dict[str, dict] = {
# --- examples: start
    'adabound': {"learning_rate": 0.01},
    'adagrad': {"learning_rate": 0.05},
    'adam': {"learning_rate": 0.01},
    'adamw': {"learning_rate": 0.01},
    'add_count_penalty': {"count_penalty": 1e-3},
    'add_decayed_weights': {"weight_decay": 1e-2},
    'add_gradient_noise': dict(eta=0.01, gamma=0.55, seed=0),
    'add_l2': {"weight_decay": 1e-2},
    'amsgrad': {"learning_rate": 0.01},
    'byol_tau_schedule': dict(total_steps=1000),
    'cast_state': dict(inner="adam", dtype="bfloat16"),
    'cyclical': dict(base_lr=1e-3, max_lr=1e-2, step_size_up=100),
    'entropy_sgd': {"learning_rate": 0.1, "inner_steps": 3, "noise": 1e-3},
    'exponential_warmup': dict(learning_rate=1e-3, time_constant=1000.0),
    'generic_adam': dict(learning_rate=1e-2),
    'generic_adam_condition': dict(learning_rate=1e-2, num_steps=1000),
    'gradient_noise': dict(inner="adam", eta=0.01),
    'gradinit': {"loss_fn": lambda p, b: jnp.mean((b @ p["w"]) ** 2),
             "params": {"w": np.ones((2, 2))}, "batches": [np.ones((2, 2))] * 3,
             "iters": 1},
    'gradinit_objective': {"loss_fn": lambda p, b: jnp.sum((p - b) ** 2), "params": np.ones(2),
             "batch": np.zeros((1, 2)), "next_batch": np.zeros((1, 2))},
    'gradmax_fanout': {"m_matrix": np.eye(3), "k": 1, "ref_norm": 1.0},
    'gradmax_grow': {"params": {"Dense_0": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)},
                        "Dense_1": {"kernel": np.ones((3, 2)), "bias": np.zeros(2)}},
             "m_matrix": np.eye(2), "k": 1},
    'group_leaves': dict(inner="adam"),
    'koala': {"learning_rate": 0.1},
    'linear_warmup': dict(learning_rate=0.1, warmup_steps=100),
    'local_energy': {"loss_fn": lambda p, b: jnp.sum(p ** 2), "params": np.ones(3)},
    'lookahead': dict(inner="adam", sync_period=5, slow_step_size=0.5),
    'lr_range_test': dict(
        loss_fn=lambda p, b: jnp.sum((p - b) ** 2),
        params=jnp.zeros(3),
        batches=[jnp.ones(3)],
        min_lr=1e-4, max_lr=10.0, num_steps=20),
    'mini_block_fisher': {"learning_rate": 1e-2},
    'monitor_norms': {"history": 8},
    'nadam': {"learning_rate": 0.01},
    'nag': {"learning_rate": 0.05},
    'normalize_mask_gradients': {"norm": "rms"},
    'nsgd': {"learning_rate": 0.1},
    'one_cycle': dict(max_lr=0.1, total_steps=1000),
    'one_cycle_momentum': dict(total_steps=1000),
    'param_ema': dict(decay=0.99),
    'radam': {"learning_rate": 0.01},
    'radam_warmup': dict(learning_rate=1e-3),
    'rectify': {},
    'replica_coupling': {"gamma": 0.1},
    'replicate_params': {"params": {"w": np.zeros(3)}, "num_replicas": 2},
    'replicated_sgd': {"learning_rate": 0.1, "gamma": 0.1},
    'rmsprop': {"learning_rate": 0.01},
    'scale_by_adagrad': {},
    'scale_by_adam': {},
    'scale_by_bounds': {},
    'scale_by_input_power': {},
    'scale_by_learning_rate': {"learning_rate": 0.1},
    'scale_by_mini_block_fisher': {},
    'scale_by_nadam': {},
    'scale_by_rms': {"decay": 0.99},
    'scale_for_batch_size': dict(learning_rate=0.1, base_batch_size=128, batch_size=512),
    'sgd': {"learning_rate": 0.05, "momentum": 0.9},
    'sgdr': dict(learning_rate=0.1, t_0=10, t_mult=2),
    'sgdw': {"learning_rate": 0.05},
    'skip_nonfinite': {"inner": "adam", "max_consecutive": 5},
    'sparse_connectivity': {"learning_rate": 0.1},
    'sphere_sgd': {"elr": 1e-2},
    'svi_gradients': {"apply_fn": lambda p, x, svi=True: jax.nn.softmax(x @ p["w"]),
             "params": {"w": np.zeros((2, 3))},
             "batch": (np.ones((2, 2)), np.array([0, 1]))},
    'swats': dict(learning_rate=1e-3),
    'trace': {"decay": 0.9},
    'weight_rescaling': {},
    'weightnorm_data_init': {"apply_fn": lambda v, x: x @ v["params"]["w"],
             "variables": {"params": {"w": np.ones((2, 2))}}, "x": np.ones((3, 2))},
    # The rest of torch.optim (optzoo/_src/classic.py, muon.py, lbfgs.py).
    'adadelta': {"learning_rate": 1.0},
    'adamax': {"learning_rate": 0.01},
    'asgd': {"learning_rate": 0.01},
    'lbfgs': {"learning_rate": 0.5, "max_iter": 5, "history_size": 4},
    'muon': {"learning_rate": 0.02, "ns_dtype": None},
    'negate': {},
    'rprop': {"learning_rate": 0.01},
    'scale_by_adadelta': {},
    'scale_by_adamax': {},
    'scale_by_asgd': {"learning_rate": 0.01},
    'scale_by_rprop': {"initial_step_size": 0.01},
# --- examples: end
}

INVALID: dict[str, tuple] = {
# --- invalid: start
    'adabound': ((_NEG_LR, ({"b1": 1.0}, ValueError), ({"b2": -0.5}, ValueError),
             ({"eps": -1e-8}, ValueError), ({"weight_decay": -1.0}, ValueError))) + (({"final_lr": -0.1}, ValueError), ({"gamma": -1.0}, ValueError)),
    'adagrad': ((({"learning_rate": -1e-3}, ValueError)), ({"eps": -1.0}, ValueError), ({"lr_decay": -0.1}, ValueError),
             ({"weight_decay": -1.0}, ValueError),
             ({"initial_accumulator_value": -1.0}, ValueError)),
    'adam': ((_NEG_LR, ({"b1": 1.0}, ValueError), ({"b2": -0.5}, ValueError),
             ({"eps": -1e-8}, ValueError), ({"weight_decay": -1.0}, ValueError))),
    'adamw': ((_NEG_LR, ({"b1": 1.0}, ValueError), ({"b2": -0.5}, ValueError),
             ({"eps": -1e-8}, ValueError), ({"weight_decay": -1.0}, ValueError))),
    'add_count_penalty': (({"count_penalty": -1.0}, ValueError),),
    'add_decayed_weights': (({"weight_decay": -1.0}, ValueError),),
    'add_gradient_noise': (
        (dict(eta=-1.0), ValueError),
        (dict(gamma=-0.5), ValueError),
        (dict(seed=1.5), TypeError),
    ),
    'add_l2': (({"weight_decay": -1.0}, ValueError),),
    'amsgrad': ((_NEG_LR, ({"b1": 1.0}, ValueError), ({"b2": -0.5}, ValueError),
             ({"eps": -1e-8}, ValueError), ({"weight_decay": -1.0}, ValueError))),
    'byol_tau_schedule': (
        (dict(total_steps=0), ValueError),
        (dict(tau_base=1.5), ValueError),
    ),
    'cast_state': ((dict(inner=3), TypeError), (dict(dtype="int32"), ValueError),
             (dict(dtype="nonsense"), TypeError)),
    'cyclical': (
        (dict(step_size_up=0), ValueError),
        (dict(step_size_down=0), ValueError),
        (dict(step_size_up=2.5), TypeError),
        (dict(mode="sawtooth"), ValueError),
        (dict(base_lr=-1.0), ValueError),
        (dict(gamma=0.0), ValueError),
    ),
    'entropy_sgd': (
        ({"learning_rate": -0.1}, ValueError),
        ({"inner_steps": -1}, ValueError),
        ({"inner_steps": 2.5}, TypeError),
        ({"inner_lr": 0.0}, ValueError),
        ({"noise": -1.0}, ValueError),
        ({"mu_decay": 1.5}, ValueError),
        ({"gamma": -1.0}, ValueError),
        ({"momentum": 1.0}, ValueError),
        ({"mu_weighting": "lua"}, ValueError),
        ({"noise_form": "x"}, ValueError),
    ),
    'exponential_warmup': (
        (dict(time_constant=0.0), ValueError),
        (dict(learning_rate=-1.0), ValueError),
    ),
    'generic_adam': (
        (dict(learning_rate=-1.0), ValueError),
        (dict(b1=1.0), ValueError),
        (dict(theta=1.5), ValueError),
        (dict(theta=0.0), ValueError),
        (dict(eps=-1.0), ValueError),
        (dict(s=-0.5), ValueError),
        (dict(r=-1.0), ValueError),
    ),
    'generic_adam_condition': (
        (dict(num_steps=5), ValueError),
        (dict(c0=0.5), ValueError),
    ),
    'gradient_noise': (
        (dict(eta=-1.0), ValueError),
        (dict(inner=None), TypeError),
    ),
    'gradinit': (({"target": "rmsprop"}, ValueError), ({"eta": 0.0}, ValueError),
             ({"gamma": -1.0}, ValueError), ({"iters": 0}, ValueError),
             ({"lr": -1.0}, ValueError), ({"m_min": -0.1}, ValueError),
             ({"b1": 1.0}, ValueError)),
    'gradinit_objective': (({"target": "rmsprop"}, ValueError), ({"eta": -1.0}, ValueError)),
    'gradmax_fanout': (({"k": 0}, ValueError), ({"scale": -1.0}, ValueError),
             ({"k": 5}, ValueError)),
    'gradmax_grow': (({"k": 0}, ValueError), ({"method": "zeros"}, ValueError),
             ({"scale": -1.0}, ValueError)),
    'group_leaves': ((dict(inner=3), TypeError), (dict(max_leaf_size=0), ValueError),
             (dict(max_leaf_size=2.5), TypeError)),
    'koala': (
        ({"learning_rate": -1.0}, ValueError),
        ({"variant": "adam"}, ValueError),
        ({"sigma": 0.0}, ValueError),
        ({"q": -1.0}, ValueError),
        ({"r": 0.0}, ValueError),
        ({"r_decay": 1.0}, ValueError),
        ({"weight_decay": -1e-4}, ValueError),
        ({"momentum": 1.0}, ValueError),
        ({"direction": "other"}, ValueError),
        ({"sigma": "big"}, TypeError),
    ),
    'linear_warmup': (
        (dict(warmup_steps=0), ValueError),
        (dict(warmup_steps=2.5), TypeError),
        (dict(start_factor=-0.1), ValueError),
        (dict(end_factor=-1.0), ValueError),
        (dict(learning_rate=-1.0), ValueError),
    ),
    'local_energy': (({"n_samples": 0}, ValueError),),
    'lookahead': (
        (dict(sync_period=0), ValueError),
        (dict(sync_period=2.0), TypeError),
        (dict(slow_step_size=1.5), ValueError),
        (dict(slow_step_size=-0.1), ValueError),
        (dict(inner=3), TypeError),
        (dict(reset_state="yes"), TypeError),
    ),
    'lr_range_test': (
        (dict(min_lr=0.0), ValueError),
        (dict(max_lr=1e-5), ValueError),
        (dict(num_steps=1), ValueError),
        (dict(smoothing=1.0), ValueError),
        (dict(method="magic"), ValueError),
        (dict(diverge_threshold=0.5), ValueError),
    ),
    'mini_block_fisher': (
        ({"learning_rate": -1.0}, ValueError),
        ({"momentum": 1.5}, ValueError),
        ({"damping": -1.0}, ValueError),
        ({"inverse_every": 0}, ValueError),
        ({"weight_decay": -1.0}, ValueError),
        ({"dense_block": "rows"}, ValueError),
        ({"inverse_every": 2.5}, TypeError),
    ),
    'monitor_norms': (({"history": -1}, ValueError), ({"history": 2.5}, TypeError)),
    'nadam': ((_NEG_LR, ({"b1": 1.0}, ValueError), ({"b2": -0.5}, ValueError),
             ({"eps": -1e-8}, ValueError), ({"weight_decay": -1.0}, ValueError))) + (({"momentum_decay": -1.0}, ValueError),),
    'nag': ((({"learning_rate": -1e-3}, ValueError)), ({"momentum": 0.0}, ValueError), ({"momentum": 1.2}, ValueError)),
    'normalize_mask_gradients': (({"norm": "l1"}, ValueError), ({"eps": -1.0}, ValueError)),
    'nsgd': (
        ({"learning_rate": -0.1}, ValueError),
        ({"momentum": 1.0}, ValueError),
        ({"weight_decay": -1.0}, ValueError),
        ({"mode": "l3"}, ValueError),
        ({"power_accum": "sum"}, ValueError),
        ({"floor": -1.0}, ValueError),
        ({"nesterov": True, "dampening": 0.5}, ValueError),
        ({"momentum": "high"}, TypeError),
    ),
    'one_cycle': (
        (dict(pct_start=0.0), ValueError),
        (dict(pct_start=1.0), ValueError),
        (dict(pct_start=1.5), ValueError),
        (dict(total_steps=0), ValueError),
        (dict(total_steps=10.5), TypeError),
        (dict(anneal_strategy="exp"), ValueError),
        (dict(div_factor=0.0), ValueError),
        (dict(final_div_factor=-1.0), ValueError),
        (dict(max_lr=-1.0), ValueError),
    ),
    'one_cycle_momentum': (
        (dict(pct_start=0.0), ValueError),
        (dict(total_steps=1), ValueError),
        (dict(base_momentum=1.0), ValueError),
        (dict(max_momentum=-0.1), ValueError),
    ),
    'param_ema': (
        (dict(decay=1.5), ValueError),
        (dict(decay=-0.1), ValueError),
        (dict(mode="median"), ValueError),
        (dict(copy_first="no"), TypeError),
    ),
    'radam': ((_NEG_LR, ({"b1": 1.0}, ValueError), ({"b2": -0.5}, ValueError),
             ({"eps": -1e-8}, ValueError), ({"weight_decay": -1.0}, ValueError))) + (({"threshold": -1.0}, ValueError),),
    'radam_warmup': (
        (dict(b2=1.0), ValueError),
        (dict(b2=-0.5), ValueError),
        (dict(kind="cosine"), ValueError),
    ),
    'rectify': (({"b2": 1.0}, ValueError), ({"threshold": -1.0}, ValueError),
             ({"fallback": "nope"}, ValueError)),
    'replica_coupling': (({"gamma": -1.0}, ValueError), ({"center": "median"}, ValueError),
             ({"coupling_period": 0}, ValueError)),
    'replicate_params': (({"num_replicas": 0}, ValueError),),
    'replicated_sgd': (({"learning_rate": -0.1}, ValueError), ({"gamma": -1.0}, ValueError),
             ({"center": "median"}, ValueError), ({"coupling_period": 0}, ValueError),
             ({"momentum": 1.0}, ValueError)),
    'rmsprop': ((({"learning_rate": -1e-3}, ValueError)), ({"decay": 1.0}, ValueError), ({"eps": -1.0}, ValueError),
             ({"momentum": -0.5}, ValueError), ({"weight_decay": -1.0}, ValueError)),
    'scale_by_adagrad': (({"eps": -1.0}, ValueError), ({"lr_decay": -1.0}, ValueError),
             ({"initial_accumulator_value": -1.0}, ValueError)),
    'scale_by_adam': (({"b1": 1.0}, ValueError), ({"b2": -0.1}, ValueError),
             ({"eps": -1e-8}, ValueError)),
    'scale_by_bounds': (({"final_lr": -0.1}, ValueError), ({"gamma": -1.0}, ValueError),
             ({"base_lr": 0.0}, ValueError)),
    'scale_by_input_power': (
        ({"mode": "other"}, ValueError),
        ({"eps": -1.0}, ValueError),
        ({"power_decay": 1.0}, ValueError),
        ({"power_accum": "sum"}, ValueError),
        ({"floor": 0.0}, ValueError),
    ),
    'scale_by_learning_rate': (({"learning_rate": -0.1}, ValueError),),
    'scale_by_mini_block_fisher': (
        ({"momentum": 1.0}, ValueError),
        ({"ema_decay": -0.1}, ValueError),
        ({"damping": 0.0}, ValueError),
        ({"inverse_every": 0}, ValueError),
        ({"dense_block": "row"}, ValueError),
    ),
    'scale_by_nadam': (({"b1": 1.5}, ValueError), ({"momentum_decay": -1.0}, ValueError)),
    'scale_by_rms': (({"decay": 1.0}, ValueError), ({"eps": -1.0}, ValueError)),
    'scale_for_batch_size': (
        (dict(base_batch_size=0), ValueError),
        (dict(batch_size=-4), ValueError),
        (dict(rule="cubic"), ValueError),
    ),
    'sgd': ((({"learning_rate": -1e-3}, ValueError)), ({"momentum": -0.1}, ValueError), ({"momentum": 1.0}, ValueError),
             ({"weight_decay": -1.0}, ValueError),
             ({"nesterov": True, "momentum": 0.0}, ValueError)),
    'sgdr': (
        (dict(t_0=0), ValueError),
        (dict(t_mult=0), ValueError),
        (dict(t_mult=1.5), TypeError),
        (dict(eta_min=-1.0), ValueError),
        (dict(learning_rate=-0.1), ValueError),
    ),
    'sgdw': ((({"learning_rate": -1e-3}, ValueError)), ({"weight_decay": -1.0}, ValueError), ({"momentum": 1.0}, ValueError)),
    'skip_nonfinite': (
        ({"max_consecutive": -1}, ValueError),
        ({"max_consecutive": 2.5}, TypeError),
        ({"inner": 3}, TypeError),
        ({"check_extra_args": "value"}, TypeError),
    ),
    'sparse_connectivity': (({"learning_rate": -1.0}, ValueError), ({"count_penalty": -1.0}, ValueError),
             ({"norm": "l1"}, ValueError), ({"mask_momentum": 1.0}, ValueError)),
    'sphere_sgd': (
        ({"elr": -1.0}, ValueError),
        ({"radius": 0.0}, ValueError),
        ({"per_filter": 1}, TypeError),
        ({"noninv_learning_rate": -1.0}, ValueError),
    ),
    'svi_gradients': (({"apply_fn": None}, TypeError),),
    'swats': (
        (dict(learning_rate=-1.0), ValueError),
        (dict(b1=1.0), ValueError),
        (dict(b2=-0.1), ValueError),
        (dict(eps=-1e-8), ValueError),
        (dict(weight_decay=-1.0), ValueError),
        (dict(switch_atol=-1.0), ValueError),
        (dict(switch_rtol=-1.0), ValueError),
        (dict(granularity="tensor"), ValueError),
        (dict(nesterov=1), TypeError),
    ),
    'trace': (({"decay": -0.1}, ValueError), ({"dampening": 1.5}, ValueError)),
    'weight_rescaling': (
        ({"granularity": "layer"}, ValueError),
        ({"target_norm": 0.0}, ValueError),
        ({"every": 0}, ValueError),
        ({"every": 1.5}, TypeError),
    ),
    'weightnorm_data_init': (({"eps": -1.0}, ValueError), ({"init_scale": 0.0}, ValueError)),
    # The rest of torch.optim.
    'adadelta': (_NEG_LR, ({"rho": 1.5}, ValueError), ({"eps": -1.0}, ValueError),
             ({"weight_decay": -1.0}, ValueError), ({"maximize": 1}, TypeError)),
    'adamax': (_NEG_LR, ({"b1": 1.0}, ValueError), ({"b2": -0.5}, ValueError),
             ({"eps": -1e-8}, ValueError), ({"weight_decay": -1.0}, ValueError),
             ({"maximize": "yes"}, TypeError)),
    'asgd': (_NEG_LR, ({"weight_decay": -1.0}, ValueError), ({"alpha": "x"}, TypeError),
             ({"maximize": "no"}, TypeError)),
    'lbfgs': (({"learning_rate": -1.0}, ValueError), ({"max_iter": 0}, ValueError),
             ({"max_iter": 2.5}, TypeError), ({"max_eval": 0}, ValueError),
             ({"history_size": 0}, ValueError), ({"tolerance_grad": -1.0}, ValueError),
             ({"tolerance_change": -1.0}, ValueError),
             ({"line_search_fn": "armijo"}, ValueError)),
    'muon': (({"learning_rate": -1.0}, ValueError), ({"momentum": -0.1}, ValueError),
             ({"weight_decay": -1.0}, ValueError), ({"ns_steps": 100}, ValueError),
             ({"ns_steps": 2.5}, TypeError), ({"adjust_lr_fn": "rms"}, ValueError),
             ({"ns_coefficients": (1.0, 2.0)}, ValueError),
             ({"fallback": "adamw"}, TypeError)),
    'rprop': (_NEG_LR, ({"eta_minus": 1.5}, ValueError), ({"eta_plus": 1.0}, ValueError),
             ({"min_step_size": -1.0}, ValueError), ({"maximize": None}, TypeError)),
    'scale_by_adadelta': (({"rho": 1.5}, ValueError), ({"eps": -1.0}, ValueError)),
    'scale_by_adamax': (({"b1": 1.0}, ValueError), ({"b2": -0.1}, ValueError),
             ({"eps": -1.0}, ValueError)),
    'scale_by_asgd': (({"learning_rate": -1.0}, ValueError), ({"lambd": "a"}, TypeError)),
    'scale_by_rprop': (({"initial_step_size": -1.0}, ValueError), ({"eta_minus": 1.0}, ValueError),
             ({"eta_plus": 0.9}, ValueError), ({"min_step_size": -1.0}, ValueError)),
# --- invalid: end
}


def example(name: str) -> dict:
  """The example keyword arguments of ``name`` (a copy; {} when none)."""
  return dict(EXAMPLES.get(name, {}))


def invalid(name: str) -> tuple:
  """The bad-input cases of ``name`` (() when none)."""
  return tuple(INVALID.get(name, ()))


def build(info: Any, **overrides: Any) -> Any:
  """Builds ``info``'s method from its example, updated with ``overrides``."""
  if isinstance(info, str):
    info = optzoo.get_info(info)
  kwargs = example(info.name)
  kwargs.update(overrides)
  for key in _INNER_KEYS:
    if isinstance(kwargs.get(key), str):
      kwargs[key] = build(kwargs[key])
  return info.factory(**kwargs)
