"""Test configuration: float64 everywhere (oracles are float64), 8 CPU devices.

Tests that check low-precision behaviour build their arrays with explicit
dtypes (bf16/f32), so enabling x64 does not hide dtype bugs: it makes them
louder, because a Python-float hyperparameter becomes float64 and would
promote an f32 update if a transformation forgot to cast.
"""
import os

# Must happen before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
