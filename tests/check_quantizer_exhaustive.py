"""Every float32 in [-1, 1]: the arithmetic 8-bit encoder vs the definition.

    PYTHONPATH=. python tests/check_quantizer_exhaustive.py [--against REV]

The block-wise quantizer of optzoo.quantize_blockwise (Dettmers et al.,
8-bit Optimizers via Block-wise Quantization, ICLR 2022) codes a normalized
value y = x / absmax as the index of the first float32 midpoint between
consecutive dynamic-map values that is >= y (nearest value, ties to the
lower code; max(y, 0) for the unsigned map). This script runs the jitted
encoder on all 2 x (0x3F800000 + 2) float32 bit patterns from -nextafter(1)
to +nextafter(1) (both signs, +-0 included), for both maps, and compares
with np.searchsorted over the midpoints. With ``--against REV`` it also runs
the ``quantize_blockwise`` of that git revision (e.g. ``main``, to show the
codes are bit-identical to an earlier implementation). Not collected by
pytest (minutes of CPU); tests/test_quantized.py checks a dense grid.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from optzoo._src import quantized as Q

CHUNK = 1 << 24


def _load_revision(rev: str):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  src = subprocess.run(["git", "show", f"{rev}:optzoo/_src/quantized.py"],
                       cwd=root, check=True, capture_output=True, text=True).stdout
  path = os.path.join(tempfile.mkdtemp(), "quantized_rev.py")
  with open(path, "w") as f:
    f.write(src)
  spec = importlib.util.spec_from_file_location("quantized_rev", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--against", default=None, help="also compare with this git revision")
  args = ap.parse_args(argv)
  old = _load_revision(args.against) if args.against else None
  t0 = time.time()
  failures = 0
  for signed in (True, False):
    mids = Q._boundaries(signed)
    enc = jax.jit(lambda y, s=signed: Q._encode_unit(y, s))
    # x = [1, y...]: absmax 1, so the revision's quantize_blockwise sees y.
    ref = None if old is None else jax.jit(
        lambda y, s=signed: old.quantize_blockwise(
            jnp.concatenate([jnp.ones((1,), jnp.float32), y]), CHUNK + 1, s).codes)
    checked = bad = bad_old = 0
    top = 0x3F800000 + 2
    for sign in (0, 1):
      for lo in range(0, top, CHUNK):
        hi = min(top, lo + CHUNK)
        y = (np.arange(lo, hi, dtype=np.uint32) | np.uint32(sign << 31)).view(np.float32)
        got = np.asarray(enc(jnp.asarray(y)))
        want = np.minimum(np.searchsorted(mids, y if signed else np.maximum(y, 0),
                                          side="left"), 255)
        bad += int(np.sum(got != want))
        if ref is not None:
          yc = np.clip(y, -1, 1)
          r = np.asarray(ref(jnp.asarray(yc))).reshape(-1)[1:yc.size + 1]
          bad_old += int(np.sum(r != np.asarray(enc(jnp.asarray(yc)))))
        checked += y.size
    name = "signed" if signed else "unsigned"
    line = f"{name}: {checked} float32 values, {bad} differ from searchsorted"
    if ref is not None:
      line += f", {bad_old} differ from {args.against}'s quantize_blockwise"
    print(f"{line} ({time.time() - t0:.0f} s)", flush=True)
    failures += bad + bad_old
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
