"""Fused CPU optimizer steps: C++ XLA FFI kernels, built on first use.

``adam.py`` (Adam, AdamW, AMSGrad), ``sgd.py`` (SGD with momentum) and
``adam8.py`` (8-bit Adam: ``adam_8bit``, ``quantize_state``) use them; ``step.py`` holds what they share and :func:`optzoo.update_and_apply`.
The kernels (``kernels.cc`` beside this file) is compiled lazily with ``g++``
into ``$XDG_CACHE_HOME/optzoo/cpu_kernels-<hash>/`` (default ``~/.cache``),
where the hash covers the source, the compile command, the jax/jaxlib version
and the compiler's version, so an edit or an upgrade builds a new library and
a stale one is never loaded.

Flags: ``-O3 -ffp-contract=off -fno-math-errno``, no ``-march=native``. A
cache directory may be shared by machines with different CPUs (a network
home), so the library must load on any CPU of the build's architecture; the
inner loops that need more (AVX2 + FMA) carry a ``target`` attribute and are
only called after a run-time CPU check. ``-ffp-contract=off`` stops GCC from
fusing multiply-adds on its own: the kernel fuses exactly those XLA's LLVM
fuses (XLA:CPU compiles with fp-contract=fast), and :func:`load` probes XLA
once to see whether it does. ``-fno-math-errno`` only lets ``sqrt``
vectorise (results unchanged).

``OPTZOO_CPU_KERNELS`` selects: ``0`` never use the kernel; ``1`` use it
whenever the arrays allow, even with several devices (arrays sharded over
an explicit-axis mesh, and concrete multi-device arrays, still take the plain
path; but under ``jit`` the shardings of an auto-axis mesh are not visible
while tracing, and XLA would replicate such an array around the custom call,
so the state would come back replicated); unset or anything else: use it on
the CPU backend with exactly one device. The variable is read when a step is
traced (a cached trace keeps its choice). A failed build warns once and
every step takes the plain jnp path.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import warnings

__all__ = ["Kernels", "enabled_mode", "load"]

_SOURCE = pathlib.Path(__file__).with_name("kernels.cc")
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off",
          "-fno-math-errno", "-w")
_TARGETS = {"adam": "OptzooAdam", "sgd": "OptzooSgd", "adam8": "OptzooAdam8"}
_ENV = "OPTZOO_CPU_KERNELS"


def enabled_mode() -> str:
  """``'off'``, ``'force'`` or ``'auto'``, from ``OPTZOO_CPU_KERNELS``."""
  value = os.environ.get(_ENV, "").strip().lower()
  if value in ("0", "false", "off", "no"):
    return "off"
  if value in ("1", "true", "on", "yes", "force"):
    return "force"
  return "auto"


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return pathlib.Path(root) / "optzoo"


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("g++")


def _library_path(cxx: str, include: str) -> tuple[pathlib.Path, list[str]]:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                           check=True, timeout=60).stdout
  key = hashlib.sha256()
  for part in (_SOURCE.read_bytes(), " ".join(_FLAGS).encode(),
               jax.__version__.encode(), jaxlib.__version__.encode(),
               version.encode(), sys.platform.encode(), os.uname().machine.encode()):
    key.update(part)
    key.update(b"\0")
  out = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}" / "optzoo_cpu_kernels.so"
  cmd = [cxx, *_FLAGS, f"-I{include}", str(_SOURCE), "-o"]
  return out, cmd


def _build() -> pathlib.Path:
  import jax  # pylint: disable=g-import-not-at-top
  cxx = _compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler (g++ not on PATH, CXX unset)")
  out, cmd = _library_path(cxx, jax.ffi.include_dir())
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target, then rename: concurrent builders never load a
  # half-written library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  try:
    proc = subprocess.run([*cmd, tmp], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


def _xla_contracts_fma() -> bool:
  """Does XLA:CPU fuse ``c + a * b`` into one rounding (an FMA)?"""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: rounded to float32 the 2^-24 is lost
  # (a tie, to even), so a separate multiply and add give 0 and an FMA 2^-24.
  a = np.full(16, 1 + 2.0**-12, np.float32)
  c = np.full(16, -(1 + 2.0**-11), np.float32)
  with jax.ensure_compile_time_eval():  # load() runs while tracing a step
    out = np.asarray(jax.jit(lambda a, b, c: c + a * b)(a, a, c))
  if np.all(out == 0):
    return False
  if np.all(out == np.float32(2.0**-24)):
    return True
  raise RuntimeError(f"XLA's multiply-add probe gave {out[:2]}")


@dataclasses.dataclass(frozen=True)
class Kernels:
  """A loaded kernel library: ``fma`` tells the kernel to contract as XLA does."""
  fma: bool


@functools.cache
def load() -> Kernels | None:
  """Build (once per cache key) and register the FFI targets; None on failure.

  A failure (no compiler, a compile error, an unloadable library, XLA
  contracting multiply-adds on a CPU the FMA loops cannot run on) warns once
  and returns None; callers then take the plain jnp path.
  """
  try:
    import jax  # pylint: disable=g-import-not-at-top
    fma = _xla_contracts_fma()
    lib = ctypes.CDLL(str(_build()))
    if fma and not lib.OptzooFmaSupported():
      raise RuntimeError("XLA fuses multiply-adds but this CPU lacks AVX2+FMA")
    for name, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(f"optzoo_{name}",
                                  jax.ffi.pycapsule(getattr(lib, symbol)),
                                  platform="cpu")
    return Kernels(fma=fma)
  except Exception as e:  # pylint: disable=broad-except
    warnings.warn(f"optzoo: the fused CPU kernels are unavailable ({e}); "
                  f"using the plain jnp path (set {_ENV}=0 to silence this).",
                  RuntimeWarning, stacklevel=3)
    return None
