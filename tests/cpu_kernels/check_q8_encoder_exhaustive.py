"""Every float32: the fused 8-bit kernel's encoders vs the definition.

    PYTHONPATH=. python tests/cpu_kernels/check_q8_encoder_exhaustive.py

The fused 8-bit Adam step (optzoo/_src/cpu_kernels/kernels.cc) codes a
normalized moment y as the number of float32 midpoints between consecutive
dynamic-map values below y (Dettmers et al., 8-bit Optimizers via Block-wise
Quantization, ICLR 2022; quantized._encode_unit: a negative y counts the
positive midpoints <= |y| and mirrors, the unsigned map takes max(y, 0)).
This script compiles a small C++ program around kernels.cc and runs, for all
2^32 float32 bit patterns and both maps, the AVX-512 loop's decade
arithmetic (q8_codes16, plus its bucket-table redo of the lanes it leaves) and
the AVX2/scalar loops' bucket table (q8_encode_*), and compares both with a
binary search over the midpoints. It also checks the margin the AVX-512
loop's reciprocal normalization relies on (q8_reciprocal: its y is within 7
bit patterns of the exact quotient's): no lane the arithmetic decides has a
midpoint within kQ8Margin patterns of |y|. About a minute. Exit status 0: equal
everywhere; 77: this CPU has no AVX-512 VBMI (only the table is checked).
tests/cpu_kernels/test_cpu_kernels.py runs it (slow) and checks a dense grid.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np

from optzoo._src import quantized as Q

KERNELS = (pathlib.Path(__file__).resolve().parents[2]
           / "optzoo" / "_src" / "cpu_kernels" / "kernels.cc")

_MAIN = r"""
#include <algorithm>
#include <cstdio>
#include <vector>

// The definition, for bit patterns visited in increasing order: #midpoints
// < y (signed: a negative y counts those <= |y|, mirrored; unsigned: max(y,
// 0)), by pointers that only move forward (|y| grows with the pattern within
// each sign); -inf as the plain path.
struct Definition {
  const std::vector<float>& mids;
  bool is_signed;
  size_t k = 0;
  bool negative = false;
  int operator()(float y) {
    if (std::signbit(y) != negative) { negative = std::signbit(y); k = 0; }
    // NaN, and -inf as quantized._encode_unit reads it (the float after
    // |y| = inf is a NaN pattern): the signed map's 127, the unsigned 0.
    if (y != y || (negative && std::isinf(y))) return is_signed ? 127 : 0;
    const float a = std::fabs(y);
    if (!negative) {
      while (k < mids.size() && mids[k] < a) ++k;
    } else {
      while (k < mids.size() && mids[k] <= a) ++k;
    }
    const int c = static_cast<int>(k);
    if (!is_signed) return negative ? 0 : std::min(255, c);
    return negative ? std::max(0, 127 - c) : std::min(255, 127 + c);
  }
};

// Is a midpoint within kQ8Margin bit patterns of |y|, for |y| visited in
// increasing order within each sign (a pointer that only moves forward)?
struct NearMidpoint {
  std::vector<uint32_t> bits;
  size_t k = 0;
  bool negative = false;
  bool operator()(float y) {
    if (std::signbit(y) != negative) { negative = std::signbit(y); k = 0; }
    uint32_t a;
    std::memcpy(&a, &y, 4);
    a &= 0x7FFFFFFFu;
    while (k < bits.size() && bits[k] + kQ8Margin < a) ++k;
    return k < bits.size() && bits[k] <= a + kQ8Margin;
  }
};

#if defined(__x86_64__)
OPTZOO_AVX512_TARGET static void codes16(const Q8EncodeRegs& t, const float* p,
                                         int32_t* cm, int32_t* cv,
                                         __mmask16& rm, __mmask16& rv) {
  const __m512 y = _mm512_loadu_ps(p);
  __m512i code_m, code_v;
  q8_codes16(t, y, y, code_m, code_v, rm, rv);
  _mm512_storeu_si512(cm, code_m);
  _mm512_storeu_si512(cv, code_v);
}
#endif

int main(int argc, char** argv) {
  std::vector<uint32_t> tab(kQ8TableWords);
  std::vector<float> mids_s(128), mids_u(255);
  FILE* f = std::fopen(argv[1], "rb");
  if (!f || std::fread(tab.data(), 4, tab.size(), f) != tab.size() ||
      std::fread(mids_s.data(), 4, 128, f) != 128 ||
      std::fread(mids_u.data(), 4, 255, f) != 255) return 2;
  std::fclose(f);
  const Q8Tables t(tab.data());
  bool avx512 = false;
#if defined(__x86_64__)
  avx512 = Avx512VbmiSupported();
#endif
  long bad_table = 0, bad_arith = 0, bad_margin = 0, redone = 0;
  Definition def_s{mids_s, true}, def_u{mids_u, false};
  auto as_bits = [](const std::vector<float>& m) {
    std::vector<uint32_t> b(m.size());
    std::memcpy(b.data(), m.data(), 4 * m.size());
    return b;
  };
  NearMidpoint near_s{as_bits(mids_s)}, near_u{as_bits(mids_u)};
#if defined(__x86_64__)
  const Q8EncodeRegs regs = avx512 ? q8_encode_regs(t) : Q8EncodeRegs{};
#endif
  for (uint64_t base = 0; base < (1ull << 32); base += 16) {
    float y[16];
    for (int l = 0; l < 16; ++l) {
      const uint32_t u = static_cast<uint32_t>(base + l);
      std::memcpy(&y[l], &u, 4);
    }
    int32_t cm[16], cv[16];
    __mmask16 rm = 0, rv = 0;
#if defined(__x86_64__)
    if (avx512) codes16(regs, y, cm, cv, rm, rv);
#endif
    for (int l = 0; l < 16; ++l) {
      const int ws = def_s(y[l]), wu = def_u(y[l]);
      const int ts = q8_encode_signed(t.enc_s, y[l]), tu = q8_encode_unsigned(t.enc_u, y[l]);
      if (ts != ws || tu != wu) {
        if (bad_table++ < 5) std::printf("table %08x: %d %d vs %d %d\n", (unsigned)(base + l), ts, tu, ws, wu);
      }
      if (!avx512) continue;
      const int as = ((rm >> l) & 1) ? ts : cm[l], au = ((rv >> l) & 1) ? tu : cv[l];
      // the unsigned map codes every negative y (and -0) 0: no margin there
      const bool ns = near_s(y[l]), nu = near_u(y[l]) && !std::signbit(y[l]);
      if ((!((rm >> l) & 1) && ns) || (!((rv >> l) & 1) && nu)) {
        if (bad_margin++ < 5) std::printf("margin %08x: decided next to a midpoint\n", (unsigned)(base + l));
      }
      redone += ((rm >> l) & 1) + ((rv >> l) & 1);
      if (as != ws || au != wu) {
        if (bad_arith++ < 5) std::printf("arithmetic %08x: %d %d vs %d %d\n", (unsigned)(base + l), as, au, ws, wu);
      }
    }
  }
  std::printf("2^32 patterns x 2 maps: table mismatches %ld, arithmetic mismatches %ld"
              ", decided within %d patterns of a midpoint %ld (%s), lanes redone"
              " with the table %ld\n", bad_table, bad_arith, kQ8Margin, bad_margin,
              avx512 ? "AVX-512 VBMI" : "not run: no AVX-512 VBMI", redone);
  if (bad_table || bad_arith || bad_margin) return 1;
  return avx512 ? 0 : 77;
}
"""


def main() -> int:
  from optzoo._src.cpu_kernels import adam8  # pylint: disable=g-import-not-at-top
  tmp = pathlib.Path(tempfile.mkdtemp())
  mids_s, mids_u = Q._boundaries(True)[127:], Q._boundaries(False)
  tables = adam8.kernel_tables(Q.dynamic_quantization_map(True),
                               Q.dynamic_quantization_map(False), mids_s, mids_u)
  with open(tmp / "tables.bin", "wb") as f:
    f.write(np.asarray(tables, np.uint32).tobytes())
    f.write(np.asarray(mids_s, np.float32).tobytes())
    f.write(np.asarray(mids_u, np.float32).tobytes())
  src = tmp / "check.cc"
  src.write_text(f'#include "{KERNELS}"\n' + _MAIN)
  exe = tmp / "check"
  cxx = os.environ.get("CXX", "g++")
  subprocess.run([cxx, "-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno",
                  "-w", f"-I{jax.ffi.include_dir()}", str(src), "-o", str(exe)],
                 check=True)
  return subprocess.run([str(exe), str(tmp / "tables.bin")], check=False).returncode


if __name__ == "__main__":
  sys.exit(main())
