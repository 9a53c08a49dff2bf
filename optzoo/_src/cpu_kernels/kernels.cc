// Fused CPU optimizer steps, as XLA FFI custom calls: the Adam family
// (optzoo_adam: the moments, or the whole step), SGD with momentum
// (optzoo_sgd: the whole step) and 8-bit Adam (optzoo_adam8: see its
// section below; its own operand layout).
//
// One call updates up to 16 leaves of one dtype (a variadic call: one custom
// call per dtype and chunk per step instead of several XLA fusions per leaf),
// reading and writing each array it touches exactly once.
//
// Exactness: every element is computed with the operations, operand order and
// rounding of optzoo's plain jnp path as XLA:CPU compiles it (transform.py):
// one IEEE operation per jnp operation, except that a multiply feeding an
// add is one fused multiply-add exactly where XLA's LLVM contracts it (see
// madd). The library is built with -ffp-contract=off and without
// -ffast-math, so GCC adds no contraction or reassociation of its own. The
// scalars (1 - b1, 1/(1 - b1^t), -lr, ...) are computed by JAX outside and
// arrive as one small operand, so new hyperparameter values never recompile.
//
// Operands (one dtype T, float or double; `n` leaves): scalars T[S, K]
// (S = 1, or the batch size under vmap), then per leaf its read-only inputs
// and its in-place arrays (struct Leaf); results: per leaf the in-place
// arrays' new values, each aliasing its operand. XLA writes them in place
// when the buffers are donated or are loop carries, and copies them first
// otherwise.
//
// Adam has three modes (Out). kOutParams (`apply`): the whole step,
// p' = p + u with u the chain's update (moments, bias correction, decoupled
// decay, -lr); what optzoo.update_and_apply runs. kOutMoments: only the
// moments (m, v, AMSGrad's max, after coupled L2), what tx.update runs for
// large leaves, leaving the direction to XLA, which fuses it into its
// consumer (optax.apply_updates) -- a direction written by the call would be
// a fresh params-sized temporary on every step (page faults: slower than the
// plain path). kOutDirection (`direction`): the moments and scale_by_adam's
// direction (with the decoupled decay), a fresh result, what tx.update runs
// for small leaves: XLA's fusion per leaf is then -lr and the apply, which
// compile several times faster than the direction's sqrt and division.
//
// Under vmap (vmap_method="broadcast_all") every operand gains the same
// leading batch dimensions: element j of leaf i then uses the scalars of
// batch row j / (size_i / S).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Scalar slots (K = kNumScalars), filled by optzoo/_src/cpu_kernels/adam.py.
enum Slot : int {
  kWeightDecay = 0,  // coupled L2 or decoupled decay coefficient
  kOneMinusB1,       // 1 - b1
  kB2,               // b2
  kOneMinusB2,       // 1 - b2
  kInvBc1,           // 1 / (1 - b1^t)
  kEpsRoot,          // eps_root
  kInvSqrtBc2,       // 1 / sqrt(1 - b2^t)
  kEps,              // eps
  kNegLr,            // -learning_rate
  kNumScalars,
};

enum Decay : int64_t { kNoDecay = 0, kCoupled = 1, kDecoupled = 2 };

// What an Adam call writes besides the moments (see the file comment).
enum Out : int { kOutMoments = 0, kOutDirection, kOutParams };

// Does the call read p as an input (coupled L2 before the moments, or the
// decoupled decay in the direction)? In apply mode p is in place instead.
constexpr bool adam_reads_p(int64_t decay, int out) {
  return out == kOutDirection ? decay != kNoDecay
                              : decay == kCoupled && out == kOutMoments;
}

struct Flags {
  int64_t decay;  // Decay
  bool amsgrad;
  int out;        // Out
  bool fma;       // contract multiply-adds as XLA does
};

// jnp.maximum: NaN if either operand is NaN.
template <typename T>
inline T nan_max(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}

// a * b + c rounded as XLA:CPU rounds it. XLA compiles with LLVM's
// fp-contract=fast ("always allow FMA fusion"), so on a CPU with FMA every
// multiply feeding an add in one fusion becomes a fused multiply-add; the
// Python side probes XLA once (cpu_kernels.load) and picks kFma to match.
// With kFma false this is two roundings: the library is built with
// -ffp-contract=off, so GCC never contracts on its own.
template <bool kFma>
inline __attribute__((always_inline)) float madd(float a, float b, float c) {
  if constexpr (kFma) return __builtin_fmaf(a, b, c);
  return a * b + c;
}
template <bool kFma>
inline __attribute__((always_inline)) double madd(double a, double b,
                                                  double c) {
  if constexpr (kFma) return __builtin_fma(a, b, c);
  return a * b + c;
}

// The elementwise step over [begin, end) of one leaf, one loop per flag
// combination (template arguments) so that GCC vectorises each. Each line
// is the jnp expression of the plain path in transform.py, with the
// multiply-adds LLVM contracts in XLA's fusion of it.
template <typename T, int64_t kDecay, bool kAms, int kOut, bool kFma>
inline __attribute__((always_inline)) void adam_loop(
    const T* __restrict s, const T* __restrict g, const T* __restrict p,
    T* __restrict m, T* __restrict v, T* __restrict vmax, T* __restrict out,
    int64_t begin, int64_t end) {
  const T wd = s[kWeightDecay], c1 = s[kOneMinusB1], b2 = s[kB2],
          c2 = s[kOneMinusB2], inv_bc1 = s[kInvBc1], eps_root = s[kEpsRoot],
          inv_sqrt_bc2 = s[kInvSqrtBc2], eps = s[kEps], neg_lr = s[kNegLr];
  for (int64_t i = begin; i < end; ++i) {
    T gi = g[i];
    // In apply mode the parameters are read from `out` (they alias).
    constexpr bool kApply = kOut == kOutParams;
    const T pi = kApply ? out[i] : (adam_reads_p(kDecay, kOut) ? p[i] : T(0));
    if (kDecay == kCoupled) gi = madd<kFma>(wd, pi, gi);  // g + wd p
    const T mi = madd<kFma>(c1, gi - m[i], m[i]);         // m + (1-b1)(g-m)
    const T vi = madd<kFma>(b2, v[i], (c2 * gi) * gi);    // b2 v + ((1-b2) g) g
    m[i] = mi;
    v[i] = vi;
    T second = vi;
    if (kAms) {
      second = nan_max(vmax[i], vi);
      vmax[i] = second;
    }
    if (kOut != kOutMoments) {
      // (m inv_bc1) / (sqrt(v + eps_root) inv_sqrt_bc2 + eps)
      T u = (mi * inv_bc1) /
            madd<kFma>(std::sqrt(second + eps_root), inv_sqrt_bc2, eps);
      if (kDecay == kDecoupled) u = madd<kFma>(wd, pi, u);  // u + wd p
      // a direction: -lr and the apply are XLA's
      out[i] = kApply ? madd<kFma>(neg_lr, u, pi) : u;     // p + (-lr) u
    }
  }
}

// One leaf's arrays: read-only inputs, then the arrays updated in place
// (each result aliases its operand), then the fresh results (written
// whole, no operand). kernels' layouts:
//   adam, moments only: in = g, [p (coupled)];  io = m, v, [vmax]
//   adam, direction:    in = g, [p (decay)];    io = m, v, [vmax], u
//   adam, apply:        in = g;                 io = p, m, v, [vmax]
//   sgd (apply):        in = g;                 io = p, b
constexpr int kMaxIn = 2, kMaxIo = 4;
template <typename T>
struct Leaf {
  const T* in[kMaxIn];
  T* io[kMaxIo];
};

template <typename T>
using RangeFn = void (*)(const T*, const Leaf<T>&, int64_t, int64_t);

template <typename T, int64_t kDecay, bool kAms, int kOut, bool kFma>
inline __attribute__((always_inline)) void adam_range(
    const T* s, const Leaf<T>& a, int64_t begin, int64_t end) {
  constexpr bool read_p = adam_reads_p(kDecay, kOut);
  int k = 0;
  T* out = kOut == kOutParams ? a.io[k++] : nullptr;
  T* m = a.io[k++];
  T* v = a.io[k++];
  T* vmax = kAms ? a.io[k++] : nullptr;
  if (kOut == kOutDirection) out = a.io[k];
  adam_loop<T, kDecay, kAms, kOut, kFma>(s, a.in[0], read_p ? a.in[1] : nullptr,
                                         m, v, vmax, out, begin, end);
}

// SGD scalar slots (K = kSgdScalars).
enum SgdSlot : int { kSgdWeightDecay = 0, kSgdMomentum, kSgdNegLr, kSgdScalars };

// The whole SGD-momentum step (torch's SGD with dampening 0), as optzoo.sgd's
// plain path: g += wd p (coupled); b = mu b + g; u = nesterov ? g + mu b : b;
// p += (-lr) u. XLA computes b and p in two loops (6 array passes); this is
// one (5: read g, p, b; write p, b).
template <typename T, bool kDecay, bool kNesterov, bool kFma>
inline __attribute__((always_inline)) void sgd_range(
    const T* s, const Leaf<T>& a, int64_t begin, int64_t end) {
  const T* __restrict g = a.in[0];
  T* __restrict p = a.io[0];
  T* __restrict b = a.io[1];
  const T wd = s[kSgdWeightDecay], mu = s[kSgdMomentum], neg_lr = s[kSgdNegLr];
  for (int64_t i = begin; i < end; ++i) {
    const T pi = p[i];
    T gi = g[i];
    if (kDecay) gi = madd<kFma>(wd, pi, gi);     // g + wd p
    const T bi = madd<kFma>(mu, b[i], gi);       // mu b + g
    b[i] = bi;
    const T u = kNesterov ? madd<kFma>(mu, bi, gi) : bi;  // g + mu b
    p[i] = madd<kFma>(neg_lr, u, pi);            // p + (-lr) u
  }
}

// Each range function in two builds: with FMA contraction (AVX2 + FMA,
// x86-64-v3, called only after the run-time check FmaSupported) and
// without (baseline ISA), the latter when XLA does not contract.
#if defined(__x86_64__)
#define OPTZOO_FMA_TARGET __attribute__((target("arch=x86-64-v3")))
bool FmaSupported() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
#define OPTZOO_FMA_TARGET
bool FmaSupported() {
#if defined(__aarch64__) || defined(__FP_FAST_FMA)
  return true;
#else
  return false;
#endif
}
#endif

template <typename T, int64_t kDecay, bool kAms, int kOut>
OPTZOO_FMA_TARGET void adam_fma(const T* s, const Leaf<T>& a, int64_t b,
                                int64_t e) {
  adam_range<T, kDecay, kAms, kOut, true>(s, a, b, e);
}
template <typename T, int64_t kDecay, bool kAms, int kOut>
void adam_plain(const T* s, const Leaf<T>& a, int64_t b, int64_t e) {
  adam_range<T, kDecay, kAms, kOut, false>(s, a, b, e);
}
template <typename T, bool kDecay, bool kNesterov>
OPTZOO_FMA_TARGET void sgd_fma(const T* s, const Leaf<T>& a, int64_t b,
                               int64_t e) {
  sgd_range<T, kDecay, kNesterov, true>(s, a, b, e);
}
template <typename T, bool kDecay, bool kNesterov>
void sgd_plain(const T* s, const Leaf<T>& a, int64_t b, int64_t e) {
  sgd_range<T, kDecay, kNesterov, false>(s, a, b, e);
}

template <typename T, int64_t kDecay, bool kAms, int kOut>
RangeFn<T> pick_adam4(bool fma) {
  return fma ? &adam_fma<T, kDecay, kAms, kOut>
             : &adam_plain<T, kDecay, kAms, kOut>;
}

template <typename T, int64_t kDecay, bool kAms>
RangeFn<T> pick_adam3(int out, bool fma) {
  switch (out) {
    case kOutParams: return pick_adam4<T, kDecay, kAms, kOutParams>(fma);
    case kOutDirection: return pick_adam4<T, kDecay, kAms, kOutDirection>(fma);
    default: return pick_adam4<T, kDecay, kAms, kOutMoments>(fma);
  }
}

template <typename T, int64_t kDecay>
RangeFn<T> pick_adam2(bool ams, int out, bool fma) {
  return ams ? pick_adam3<T, kDecay, true>(out, fma)
             : pick_adam3<T, kDecay, false>(out, fma);
}

template <typename T>
RangeFn<T> pick_adam(const Flags& f) {
  switch (f.decay) {
    case kCoupled: return pick_adam2<T, kCoupled>(f.amsgrad, f.out, f.fma);
    case kDecoupled: return pick_adam2<T, kDecoupled>(f.amsgrad, f.out, f.fma);
    default: return pick_adam2<T, kNoDecay>(f.amsgrad, f.out, f.fma);
  }
}

template <typename T, bool kDecay, bool kNesterov>
RangeFn<T> pick_sgd3(bool fma) {
  return fma ? &sgd_fma<T, kDecay, kNesterov> : &sgd_plain<T, kDecay, kNesterov>;
}

template <typename T>
RangeFn<T> pick_sgd(bool decay, bool nesterov, bool fma) {
  if (decay) {
    return nesterov ? pick_sgd3<T, true, true>(fma) : pick_sgd3<T, true, false>(fma);
  }
  return nesterov ? pick_sgd3<T, false, true>(fma) : pick_sgd3<T, false, false>(fma);
}

struct Block {
  int64_t leaf, row, begin, end;  // elements [begin, end) of leaf, batch row
};

// Work shared between the calling thread and pool tasks. Blocks are claimed
// with an atomic counter; the caller works too and then waits only for blocks
// already claimed by running tasks, so it never waits on a task that has not
// started (no deadlock when the pool is busy or absent).
template <typename T>
struct Job {
  RangeFn<T> fn;
  std::vector<Block> blocks;
  std::vector<Leaf<T>> leaves;
  const T* scalars;
  int64_t n_scalars;
  std::atomic<int64_t> next{0}, done{0};

  void work() {
    for (;;) {
      const int64_t b = next.fetch_add(1, std::memory_order_relaxed);
      if (b >= static_cast<int64_t>(blocks.size())) return;
      const Block& k = blocks[b];
      // Operands of one leaf share one offset; the scalars are per row.
      fn(scalars + k.row * n_scalars, leaves[k.leaf], k.begin, k.end);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

constexpr int64_t kBlock = 1 << 16;        // elements per task
constexpr int64_t kMinParallel = 1 << 18;  // below this, one thread

// The operands: scalars T[S, n_scalars], then per leaf n_in inputs and n_io
// in/out arrays (equal shapes); the results: per leaf the n_io arrays, then
// n_out fresh ones (the leaf's shape, no operand). A result whose buffer is
// not its operand's (XLA did not alias) gets a copy first, so `fn` always
// updates in place.
template <typename T>
ffi::Error run(RangeFn<T> fn, int64_t n_scalars, int64_t n_leaves,
               int64_t n_in, int64_t n_io, int64_t n_out,
               ffi::AnyBuffer scalars, ffi::RemainingArgs args,
               ffi::RemainingRets rets, ffi::ThreadPool* pool,
               bool whole_step) {
  const int64_t n_res = n_io + n_out;
  if (n_in > kMaxIn || n_res > kMaxIo ||
      static_cast<int64_t>(args.size()) != n_leaves * (n_in + n_io) ||
      static_cast<int64_t>(rets.size()) != n_leaves * n_res) {
    return ffi::Error::InvalidArgument("optzoo kernel: operand count mismatch");
  }
  const int64_t rows = scalars.element_count() / n_scalars;
  if (rows < 1 || rows * n_scalars != scalars.element_count()) {
    return ffi::Error::InvalidArgument("optzoo kernel: bad scalars operand");
  }
  auto job = std::make_shared<Job<T>>();
  job->fn = fn;
  job->scalars = reinterpret_cast<const T*>(scalars.untyped_data());
  job->n_scalars = n_scalars;
  int64_t total = 0;
  for (int64_t i = 0; i < n_leaves; ++i) {
    const int64_t a = i * (n_in + n_io);
    Leaf<T> leaf{};
    int64_t size = -1;
    for (int64_t k = 0; k < n_in + n_io; ++k) {
      auto b = args.get<ffi::AnyBuffer>(a + k);
      if (!b.has_value()) return ffi::Error::InvalidArgument("optzoo kernel: operand");
      if (size < 0) size = b->element_count();
      if (b->element_count() != size) {
        return ffi::Error::InvalidArgument("optzoo kernel: shapes differ");
      }
      const T* data = reinterpret_cast<const T*>(b->untyped_data());
      if (k < n_in) {
        leaf.in[k] = data;
        continue;
      }
      auto r = rets.get<ffi::AnyBuffer>(i * n_res + (k - n_in));
      if (!r.has_value()) return ffi::Error::InvalidArgument("optzoo kernel: result");
      T* out = reinterpret_cast<T*>((*r)->untyped_data());
      if (out != data) std::copy(data, data + size, out);
      leaf.io[k - n_in] = out;
    }
    for (int64_t k = n_io; k < n_res; ++k) {
      auto r = rets.get<ffi::AnyBuffer>(i * n_res + k);
      if (!r.has_value() || (*r)->element_count() != size) {
        return ffi::Error::InvalidArgument("optzoo kernel: result");
      }
      leaf.io[k] = reinterpret_cast<T*>((*r)->untyped_data());
    }
    job->leaves.push_back(leaf);
    if (size % rows != 0) {
      return ffi::Error::InvalidArgument("optzoo kernel: batch rows mismatch");
    }
    const int64_t per_row = size / rows;
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t b = 0; b < per_row; b += kBlock) {
        job->blocks.push_back({i, row, row * per_row + b,
                               row * per_row + std::min(per_row, b + kBlock)});
      }
    }
    total += size;
  }
  // The calling thread works too. A whole step (update_and_apply) takes
  // num_threads - 1 pool tasks, one worker per pool thread (num_threads
  // tasks oversubscribed a 2-core machine: Adam at 10M params,
  // update_and_apply / torch fused 1.06-1.15 -> 0.93-1.01 over 4 runs); the
  // moments-only call, whose result XLA's own fusions consume, keeps
  // num_threads (its ratio to optax was no better with one fewer).
  int64_t workers = pool ? pool->num_threads() - (whole_step ? 1 : 0) : 0;
  if (total < kMinParallel) workers = 0;
  workers = std::min<int64_t>(workers,
                              static_cast<int64_t>(job->blocks.size()) - 1);
  for (int64_t w = 0; w < workers; ++w) {
    pool->Schedule([job] { job->work(); });
  }
  job->work();
  const int64_t n_blocks = static_cast<int64_t>(job->blocks.size());
  while (job->done.load(std::memory_order_acquire) < n_blocks) {
    std::this_thread::yield();
  }
  return ffi::Error::Success();
}

// `after`: unread, the previous call's last result (adam.py chains the
// calls that write directions, as adam8.py does).
ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::AnyBuffer scalars,
                    ffi::AnyBuffer /*after*/, ffi::RemainingArgs args,
                    ffi::RemainingRets rets,
                    int64_t n_leaves, int64_t decay, bool amsgrad, bool apply,
                    bool direction, bool fma) {
  if (fma && !FmaSupported()) {
    return ffi::Error::InvalidArgument("optzoo adam: this CPU has no FMA");
  }
  if (apply && direction) {
    return ffi::Error::InvalidArgument("optzoo adam: apply and direction");
  }
  const int out = apply ? kOutParams : direction ? kOutDirection : kOutMoments;
  const Flags flags{decay, amsgrad, out, fma};
  const int64_t n_in = 1 + adam_reads_p(decay, out);
  const int64_t n_io = 2 + apply + amsgrad, n_out = direction;
  switch (scalars.element_type()) {
    case ffi::DataType::F32:
      return run<float>(pick_adam<float>(flags), kNumScalars, n_leaves, n_in,
                        n_io, n_out, scalars, args, rets, &pool, apply);
    case ffi::DataType::F64:
      return run<double>(pick_adam<double>(flags), kNumScalars, n_leaves, n_in,
                         n_io, n_out, scalars, args, rets, &pool, apply);
    default:
      return ffi::Error::InvalidArgument("optzoo adam: float32/float64 only");
  }
}

ffi::Error SgdImpl(ffi::ThreadPool pool, ffi::AnyBuffer scalars,
                   ffi::RemainingArgs args, ffi::RemainingRets rets,
                   int64_t n_leaves, bool decay, bool nesterov, bool fma) {
  if (fma && !FmaSupported()) {
    return ffi::Error::InvalidArgument("optzoo sgd: this CPU has no FMA");
  }
  switch (scalars.element_type()) {
    case ffi::DataType::F32:
      return run<float>(pick_sgd<float>(decay, nesterov, fma), kSgdScalars,
                        n_leaves, 1, 2, 0, scalars, args, rets, &pool,
                        /*whole_step=*/true);
    case ffi::DataType::F64:
      return run<double>(pick_sgd<double>(decay, nesterov, fma), kSgdScalars,
                         n_leaves, 1, 2, 0, scalars, args, rets, &pool,
                         /*whole_step=*/true);
    default:
      return ffi::Error::InvalidArgument("optzoo sgd: float32/float64 only");
  }
}


// ---------------------------------------------------------------------------
// 8-bit Adam (optzoo.adam_8bit / adamw_8bit, quantize_state around optzoo's
// Adam): the moments stored as uint8 codes of the dynamic map plus one
// float32 absmax per block (optzoo/_src/quantized.py). One call decodes the
// old moments, runs Adam's moment update, takes each block's new absmax,
// encodes the new moments in place and writes Adam's direction
// (scale_by_adam's output; the links after it, decoupled decay and -lr, stay
// with XLA, which fuses them into optax.apply_updates as on the plain path).
//
// Exactness, against quantized.py's plain path: the decoded moment is
// map[code] * absmax (the map's float32 values, passed in by Python: the
// plain path's arithmetic decoder gives them bit for bit); Adam's lines are
// adam_loop's; the absmax is |max(max, -min)| with NaN-propagating max/min;
// the code of y = x / (absmax > 0 ? absmax : 1) is the number of float32
// midpoints between consecutive map values that are < y (positive
// midpoints, mirrored for a negative y as the plain encoder does), read from
// a bucket table: the positive floats in [2^-24, 2) fall in buckets of 2^16
// consecutive bit patterns, each holding at most one midpoint (checked when
// adam8.py builds the table), so count = base[bucket] + (midpoint's low 16 bits <
// y's low 16 bits).
// The AVX-512 loop (CPUs with VBMI) computes the same count without that
// gather where it can (Q8Decades) and reads the bucket table elsewhere.
// ---------------------------------------------------------------------------

constexpr uint32_t kQ8Lo = 0x33800000u;  // 2^-24: below every midpoint
constexpr int kQ8Shift = 16;
constexpr int64_t kQ8Buckets = ((0x40000000u - kQ8Lo) >> kQ8Shift) + 1;
constexpr uint32_t kQ8None = 0xFFFFu;    // no midpoint in the bucket

// The maps as byte planes, for the AVX-512 decoder: planes[b][c] = byte b of
// map[c] (little-endian float32).
struct Q8Planes {
  uint8_t planes[4][256];
};
constexpr int64_t kQ8PlaneWords = 256;
static_assert(sizeof(Q8Planes) == 4 * kQ8PlaneWords, "Q8Planes layout");

// The arithmetic encoder's tables for one map (adam8.py, _decades): for |y|
// with float32 exponent 96 + k, the decade D = below[k] + (|y| > edge[k]);
// #midpoints < |y| = min(floor(t) + 1, cap[D]) for t = |y| scale[D] +
// offset[D] wherever t is not within kQ8Near of an integer.
struct Q8Decades {
  float edge[32];
  int32_t below[32];
  float scale[16], offset[16];
  int32_t cap[16], unused[16];
};
constexpr int64_t kQ8DecadeWords = 128;
static_assert(sizeof(Q8Decades) == 4 * kQ8DecadeWords, "Q8Decades layout");
constexpr float kQ8Near = 1.0f / 1024;
// q8_count16 takes t in fixed point with kQ8Fraction fractional bits (so
// kQ8Near is kQ8NearUnits units).
constexpr int kQ8Fraction = 14;
constexpr int32_t kQ8NearUnits = static_cast<int32_t>(kQ8Near * (1 << kQ8Fraction));
static_assert(kQ8NearUnits == 16, "kQ8Near in fixed point: a power of 2");
// The AVX-512 encoder also redoes the lanes within kQ8Margin bit patterns of
// a decade edge, so that no lane it decides has a midpoint within kQ8Margin
// patterns (tests/cpu_kernels/check_q8_encoder_exhaustive.py): it may then
// normalize by a multiply with the reciprocal (q8_range_avx512).
constexpr int32_t kQ8Margin = 8;

// The tables operand (built once by adam8.py, kernel_tables): the two maps'
// float32 values, then per map kQ8Buckets entries (base << 16) | (low 16
// bits of the bucket's midpoint, or kQ8None), then per map its Q8Decades,
// then per map its Q8Planes.
constexpr int64_t kQ8TableWords =
    512 + 2 * kQ8Buckets + 2 * kQ8DecadeWords + 2 * kQ8PlaneWords;

struct Q8Tables {
  const float* map_s;     // signed map values
  const float* map_u;     // unsigned map values
  const uint32_t* enc_s;  // the signed map's positive midpoints
  const uint32_t* enc_u;  // the unsigned map's midpoints
  const Q8Planes* planes_s;  // map_s, map_u as byte planes
  const Q8Planes* planes_u;
  const Q8Decades* dec_s;    // enc_s, enc_u as decades
  const Q8Decades* dec_u;

  // The views into the tables operand.
  explicit Q8Tables(const uint32_t* tab)
      : map_s(reinterpret_cast<const float*>(tab)),
        map_u(reinterpret_cast<const float*>(tab + 256)),
        enc_s(tab + 512),
        enc_u(tab + 512 + kQ8Buckets),
        planes_s(reinterpret_cast<const Q8Planes*>(
            tab + 512 + 2 * kQ8Buckets + 2 * kQ8DecadeWords)),
        planes_u(planes_s + 1),
        dec_s(reinterpret_cast<const Q8Decades*>(tab + 512 + 2 * kQ8Buckets)),
        dec_u(dec_s + 1) {}
};

inline uint32_t f2u(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

// #midpoints < a, for the bit pattern `a` of a non-negative float (not NaN).
inline __attribute__((always_inline)) uint32_t q8_count(const uint32_t* enc,
                                                        uint32_t a) {
  int64_t idx = (static_cast<int64_t>(a) - static_cast<int64_t>(kQ8Lo)) >> kQ8Shift;
  idx = idx < 0 ? 0 : (idx >= kQ8Buckets ? kQ8Buckets - 1 : idx);
  const uint32_t e = enc[idx];
  return (e >> 16) + ((e & 0xFFFFu) < (a & 0xFFFFu) ? 1u : 0u);
}

// quantized._encode_unit(y, signed=True): a negative y counts the positive
// midpoints <= |y| (< the next float) and mirrors; -0 and NaN give 127.
inline __attribute__((always_inline)) uint8_t q8_encode_signed(
    const uint32_t* enc, float y) {
  const uint32_t bits = f2u(y);
  const bool neg = (bits >> 31) != 0;
  const uint32_t mag = bits & 0x7FFFFFFFu;
  const uint32_t a = neg ? mag + 1 : mag;
  const int32_t c = a > 0x7F800000u ? 0 : static_cast<int32_t>(q8_count(enc, a));
  int32_t code = neg ? 127 - c : 127 + c;
  code = code < 0 ? 0 : (code > 255 ? 255 : code);
  return static_cast<uint8_t>(code);
}

// quantized._encode_unit(y, signed=False): max(y, 0); NaN gives 0.
inline __attribute__((always_inline)) uint8_t q8_encode_unsigned(
    const uint32_t* enc, float y) {
  const uint32_t bits = f2u(y);  // negative (-0 included) or NaN: > 0x7F800000
  const uint32_t c = bits > 0x7F800000u ? 0u : q8_count(enc, bits);
  return static_cast<uint8_t>(c > 255u ? 255u : c);
}

template <typename T>
inline T nan_min(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (a < b ? a : b));
}

// One leaf: in = g, [p (coupled L2)]; in place: mu codes, mu absmax, nu
// codes, nu absmax; out: Adam's direction x. In apply mode (the whole step)
// the params are in place instead (pw, read and written; p = nullptr) and
// there is no x.
struct Q8Leaf {
  const float* g;
  const float* p;
  float* pw;
  uint8_t* cm;
  float* am;
  uint8_t* cv;
  float* av;
  float* x;
  int64_t size, block;
};

// Adam's direction x of entry i: stored (tx.update), or in apply mode the
// rest of the step as XLA fuses the links after scale_by_adam into
// optax.apply_updates (adam_loop's lines): u = x [+ wd p], p + (-lr) u.
template <int64_t kDecay, bool kApply, bool kFma>
inline __attribute__((always_inline)) void q8_finish(const Q8Leaf& a, int64_t i,
                                                     float x, float wd,
                                                     float neg_lr) {
  if constexpr (kApply) {
    const float pi = a.pw[i];
    float u = x;
    if (kDecay == kDecoupled) u = madd<kFma>(wd, pi, u);  // u + wd p
    a.pw[i] = madd<kFma>(neg_lr, u, pi);                  // p + (-lr) u
  } else {
    a.x[i] = x;
  }
}

// A block's running max and min of the new moments (NaN-propagating, as
// jnp.maximum / minimum) and its new absmax |max(max, -min)|.
struct Q8Extrema {
  float mx_m = -std::numeric_limits<float>::infinity();
  float mn_m = std::numeric_limits<float>::infinity();
  float mx_v = -std::numeric_limits<float>::infinity();
  float mn_v = std::numeric_limits<float>::infinity();
  inline __attribute__((always_inline)) void add(float mi, float vi) {
    mx_m = nan_max(mx_m, mi);
    mn_m = nan_min(mn_m, mi);
    mx_v = nan_max(mx_v, vi);
    mn_v = nan_min(mn_v, vi);
  }
  // In element order (the vector loops' fallback for a block with a NaN).
  void add_all(const float* bm, const float* bv, int64_t n) {
    for (int64_t j = 0; j < n; ++j) add(bm[j], bv[j]);
  }
  float absmax_m() const { return std::fabs(nan_max(mx_m, -mn_m)); }
  float absmax_v() const { return std::fabs(nan_max(mx_v, -mn_v)); }
};

// The first pass's scalar lines for entries [j0, n) of the block at i0
// (absmax am, av): decoded moments, Adam's moment update into bm / bv.
template <int64_t kDecay, bool kFma>
inline __attribute__((always_inline)) void q8_moments(
    const float* s, const Q8Tables& t, const Q8Leaf& a, const float* p,
    int64_t i0, int64_t j0, int64_t n, float am, float av, float* bm,
    float* bv, Q8Extrema& e) {
  const float wd = s[kWeightDecay], c1 = s[kOneMinusB1], b2 = s[kB2],
              c2 = s[kOneMinusB2];
  for (int64_t j = j0; j < n; ++j) {
    const int64_t i = i0 + j;
    float gi = a.g[i];
    if (kDecay == kCoupled) gi = madd<kFma>(wd, p[i], gi);  // g + wd p
    const float m = t.map_s[a.cm[i]] * am;                  // decoded moments
    const float v = t.map_u[a.cv[i]] * av;
    const float mi = madd<kFma>(c1, gi - m, m);             // m + (1-b1)(g-m)
    // b2 v + ((1-b2) g) g. v is a product here (decoded), and LLVM then
    // contracts the other multiply (adam_loop's v is a load: b2 v).
    const float vi = madd<kFma>(c2 * gi, gi, b2 * v);
    bm[j] = mi;
    bv[j] = vi;
    e.add(mi, vi);
  }
}

// The second pass's scalar lines for entries [j0, n) of the block at i0
// (scales sm, sv): the codes, and the direction or (apply) the new params.
template <int64_t kDecay, bool kApply, bool kFma>
inline __attribute__((always_inline)) void q8_encode_range(
    const float* s, const Q8Tables& t, const Q8Leaf& a, int64_t i0,
    int64_t j0, int64_t n, const float* bm, const float* bv, float sm,
    float sv) {
  const float wd = s[kWeightDecay], inv_bc1 = s[kInvBc1],
              eps_root = s[kEpsRoot], inv_sqrt_bc2 = s[kInvSqrtBc2],
              eps = s[kEps], neg_lr = s[kNegLr];
  for (int64_t j = j0; j < n; ++j) {
    const int64_t i = i0 + j;
    const float mi = bm[j], vi = bv[j];
    a.cm[i] = q8_encode_signed(t.enc_s, mi / sm);
    a.cv[i] = q8_encode_unsigned(t.enc_u, vi / sv);
    // (m inv_bc1) / (sqrt(v + eps_root) inv_sqrt_bc2 + eps)
    q8_finish<kDecay, kApply, kFma>(
        a, i, (mi * inv_bc1) / madd<kFma>(std::sqrt(vi + eps_root), inv_sqrt_bc2, eps),
        wd, neg_lr);
  }
}

// Quantization blocks [kb0, kb1) of one leaf; `buf` holds 2 * block floats.
template <int64_t kDecay, bool kApply, bool kFma>
inline __attribute__((always_inline)) void q8_range(
    const float* __restrict s, const Q8Tables& t, const Q8Leaf& a,
    int64_t kb0, int64_t kb1, float* __restrict buf) {
  const float* p = kApply ? a.pw : a.p;  // apply mode: p is also written
  float* bm = buf;
  float* bv = buf + a.block;
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    const int64_t i0 = kb * a.block;
    const int64_t n = std::min(a.size, i0 + a.block) - i0;
    Q8Extrema e;
    q8_moments<kDecay, kFma>(s, t, a, p, i0, 0, n, a.am[kb], a.av[kb], bm, bv, e);
    const float new_am = e.absmax_m(), new_av = e.absmax_v();
    q8_encode_range<kDecay, kApply, kFma>(s, t, a, i0, 0, n, bm, bv,
                                          new_am > 0 ? new_am : 1.0f,
                                          new_av > 0 ? new_av : 1.0f);
    a.am[kb] = new_am;
    a.av[kb] = new_av;
  }
}

using Q8Fn = void (*)(const float*, const Q8Tables&, const Q8Leaf&, int64_t,
                      int64_t, float*);

#if defined(__x86_64__)
// q8_range<kDecay, kApply, true> with AVX2 (8 lanes; table reads by gathers); the
// same operations per element, so the same bits. A block's last n % 8
// entries take the scalar lines; a block with a NaN takes the scalar
// max/min (NaN-propagating, as jnp.maximum).
OPTZOO_FMA_TARGET inline __m256i q8_count8(const uint32_t* enc, __m256i a) {
  __m256i idx = _mm256_srai_epi32(
      _mm256_sub_epi32(a, _mm256_set1_epi32(static_cast<int>(kQ8Lo))), kQ8Shift);
  idx = _mm256_min_epi32(_mm256_max_epi32(idx, _mm256_setzero_si256()),
                         _mm256_set1_epi32(static_cast<int>(kQ8Buckets - 1)));
  const __m256i e = _mm256_i32gather_epi32(reinterpret_cast<const int*>(enc), idx, 4);
  const __m256i low16 = _mm256_set1_epi32(0xFFFF);
  const __m256i above = _mm256_cmpgt_epi32(_mm256_and_si256(a, low16),
                                           _mm256_and_si256(e, low16));
  return _mm256_sub_epi32(_mm256_srli_epi32(e, 16), above);  // above: -1
}

// a > 0x7F800000 as unsigned (NaN, or a pattern with the sign bit set).
OPTZOO_FMA_TARGET inline __m256i q8_not_number(__m256i a) {
  return _mm256_or_si256(_mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7F800000)),
                         _mm256_srai_epi32(a, 31));
}

OPTZOO_FMA_TARGET inline void q8_store8(uint8_t* dst, __m256i c) {
  const __m256i w = _mm256_packus_epi32(c, c);   // per lane: c0..3 c0..3 (u16)
  const __m256i b = _mm256_packus_epi16(w, w);   // per lane: 4 bytes, repeated
  const __m128i lo = _mm256_castsi256_si128(b), hi = _mm256_extracti128_si256(b, 1);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_unpacklo_epi32(lo, hi));
}

template <int64_t kDecay, bool kApply>
OPTZOO_FMA_TARGET void q8_range_avx2(const float* __restrict s,
                                     const Q8Tables& t, const Q8Leaf& a,
                                     int64_t kb0, int64_t kb1,
                                     float* __restrict buf) {
  const float wd = s[kWeightDecay], c1 = s[kOneMinusB1], b2 = s[kB2],
              c2 = s[kOneMinusB2], inv_bc1 = s[kInvBc1], eps_root = s[kEpsRoot],
              inv_sqrt_bc2 = s[kInvSqrtBc2], eps = s[kEps];
  const __m256 vwd = _mm256_set1_ps(wd), vc1 = _mm256_set1_ps(c1),
               vb2 = _mm256_set1_ps(b2), vc2 = _mm256_set1_ps(c2),
               vbc1 = _mm256_set1_ps(inv_bc1), vroot = _mm256_set1_ps(eps_root),
               vbc2 = _mm256_set1_ps(inv_sqrt_bc2), veps = _mm256_set1_ps(eps),
               vnlr = _mm256_set1_ps(s[kNegLr]);
  const float* pr = kApply ? a.pw : a.p;  // apply mode: p is also written
  const __m256i m127 = _mm256_set1_epi32(127), m255 = _mm256_set1_epi32(255),
                one = _mm256_set1_epi32(1), zero = _mm256_setzero_si256();
  const float inf = std::numeric_limits<float>::infinity();
  float* __restrict bm = buf;
  float* __restrict bv = buf + a.block;
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    const int64_t i0 = kb * a.block;
    const int64_t n = std::min(a.size, i0 + a.block) - i0;
    const int64_t n8 = n & ~int64_t{7};
    const float am = a.am[kb], av = a.av[kb];
    const __m256 vam = _mm256_set1_ps(am), vav = _mm256_set1_ps(av);
    __m256 mxm = _mm256_set1_ps(-inf), mnm = _mm256_set1_ps(inf),
           mxv = _mm256_set1_ps(-inf), mnv = _mm256_set1_ps(inf),
           nan = _mm256_setzero_ps();
    for (int64_t j = 0; j < n8; j += 8) {
      const int64_t i = i0 + j;
      __m256 g = _mm256_loadu_ps(a.g + i);
      if (kDecay == kCoupled) g = _mm256_fmadd_ps(vwd, _mm256_loadu_ps(pr + i), g);
      const __m256i cm = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.cm + i)));
      const __m256i cv = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.cv + i)));
      const __m256 m = _mm256_mul_ps(_mm256_i32gather_ps(t.map_s, cm, 4), vam);
      const __m256 v = _mm256_mul_ps(_mm256_i32gather_ps(t.map_u, cv, 4), vav);
      const __m256 mi = _mm256_fmadd_ps(vc1, _mm256_sub_ps(g, m), m);
      const __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(vc2, g), g,
                                        _mm256_mul_ps(vb2, v));
      _mm256_storeu_ps(bm + j, mi);
      _mm256_storeu_ps(bv + j, vi);
      mxm = _mm256_max_ps(mxm, mi);
      mnm = _mm256_min_ps(mnm, mi);
      mxv = _mm256_max_ps(mxv, vi);
      mnv = _mm256_min_ps(mnv, vi);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(mi, vi, _CMP_UNORD_Q));  // either
    }
    float lanes[4][8];
    _mm256_storeu_ps(lanes[0], mxm);
    _mm256_storeu_ps(lanes[1], mnm);
    _mm256_storeu_ps(lanes[2], mxv);
    _mm256_storeu_ps(lanes[3], mnv);
    Q8Extrema e;
    for (int k = 0; k < 8; ++k) {
      e.mx_m = nan_max(e.mx_m, lanes[0][k]);
      e.mn_m = nan_min(e.mn_m, lanes[1][k]);
      e.mx_v = nan_max(e.mx_v, lanes[2][k]);
      e.mn_v = nan_min(e.mn_v, lanes[3][k]);
    }
    q8_moments<kDecay, true>(s, t, a, pr, i0, n8, n, am, av, bm, bv, e);
    if (_mm256_movemask_ps(nan) != 0) {  // in element order, as the scalar loop
      e = Q8Extrema();
      e.add_all(bm, bv, n);
    }
    const float new_am = e.absmax_m(), new_av = e.absmax_v();
    const float sm = new_am > 0 ? new_am : 1.0f;
    const float sv = new_av > 0 ? new_av : 1.0f;
    const __m256 vsm = _mm256_set1_ps(sm), vsv = _mm256_set1_ps(sv);
    for (int64_t j = 0; j < n8; j += 8) {
      const int64_t i = i0 + j;
      const __m256 mi = _mm256_loadu_ps(bm + j), vi = _mm256_loadu_ps(bv + j);
      // signed: a = |y|, or the next float up for a negative y; mirrored.
      const __m256i ym = _mm256_castps_si256(_mm256_div_ps(mi, vsm));
      const __m256i neg = _mm256_srai_epi32(ym, 31);
      const __m256i am8 = _mm256_add_epi32(
          _mm256_and_si256(ym, _mm256_set1_epi32(0x7FFFFFFF)),
          _mm256_and_si256(neg, one));
      const __m256i c_m = _mm256_andnot_si256(q8_not_number(am8),
                                              q8_count8(t.enc_s, am8));
      __m256i code_m = _mm256_add_epi32(
          m127, _mm256_sub_epi32(_mm256_xor_si256(c_m, neg), neg));
      code_m = _mm256_min_epi32(_mm256_max_epi32(code_m, zero), m255);
      const __m256i yv = _mm256_castps_si256(_mm256_div_ps(vi, vsv));
      __m256i code_v = _mm256_andnot_si256(q8_not_number(yv),
                                           q8_count8(t.enc_u, yv));
      code_v = _mm256_min_epi32(code_v, m255);
      q8_store8(a.cm + i, code_m);
      q8_store8(a.cv + i, code_v);
      const __m256 den = _mm256_fmadd_ps(_mm256_sqrt_ps(_mm256_add_ps(vi, vroot)),
                                         vbc2, veps);
      const __m256 xv = _mm256_div_ps(_mm256_mul_ps(mi, vbc1), den);
      if constexpr (kApply) {
        const __m256 pv = _mm256_loadu_ps(a.pw + i);
        const __m256 u = kDecay == kDecoupled ? _mm256_fmadd_ps(vwd, pv, xv) : xv;
        _mm256_storeu_ps(a.pw + i, _mm256_fmadd_ps(vnlr, u, pv));
      } else {
        _mm256_storeu_ps(a.x + i, xv);
      }
    }
    q8_encode_range<kDecay, kApply, true>(s, t, a, i0, n8, n, bm, bv, sm, sv);
    a.am[kb] = new_am;
    a.av[kb] = new_av;
  }
}

// q8_range<kDecay, kApply, true> with AVX-512 (16 lanes), for CPUs with VBMI: the
// same operations per element as the AVX2 loop, so the same bits. The codes
// are decoded 64 at a time without gathers: each map is 4 byte planes of 256
// entries (byte b of every value), and one two-table byte permute
// (vpermi2b, 128 entries) per half of a plane looks up 64 codes; the planes
// are then interleaved into float32. The codes are first permuted (kQ8Order)
// so that the interleaving, which works inside 128-bit lanes, yields the
// values in element order. The encoder does without the bucket-table gather
// where it can (q8_count16).
#define OPTZOO_AVX512_TARGET \
  __attribute__((target("arch=x86-64-v4,avx512vbmi")))

bool Avx512VbmiSupported() {
  return FmaSupported() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vbmi");
}

// kQ8Order[16 L + 4 k + i] = 16 k + 4 L + i (L, k, i in 0..3): after the
// byte-plane lookup, unpack{lo,hi}_epi8 then unpack{lo,hi}_epi16 give, in
// 128-bit lane L of result k, the entries 16 L + 4 k + (0..3) of the permuted
// vector, i.e. the elements 16 k + 4 L + (0..3).
struct Q8Order {
  alignas(64) uint8_t idx[64];
  Q8Order() {
    for (int L = 0; L < 4; ++L)
      for (int k = 0; k < 4; ++k)
        for (int i = 0; i < 4; ++i) idx[16 * L + 4 * k + i] = 16 * k + 4 * L + i;
  }
};
const Q8Order kQ8Order;

// map[c] for the 64 (kQ8Order-permuted) codes `c`, as 16 floats per out[k].
OPTZOO_AVX512_TARGET inline void q8_decode64(const Q8Planes& P, __m512i c,
                                             __m512 out[4]) {
  const __mmask64 high = _mm512_movepi8_mask(c);  // codes >= 128
  __m512i B[4];
  for (int b = 0; b < 4; ++b) {
    const uint8_t* q = P.planes[b];
    const __m512i lo = _mm512_permutex2var_epi8(_mm512_loadu_si512(q), c,
                                                _mm512_loadu_si512(q + 64));
    const __m512i hi = _mm512_permutex2var_epi8(_mm512_loadu_si512(q + 128), c,
                                                _mm512_loadu_si512(q + 192));
    B[b] = _mm512_mask_blend_epi8(high, lo, hi);
  }
  const __m512i w01l = _mm512_unpacklo_epi8(B[0], B[1]);
  const __m512i w01h = _mm512_unpackhi_epi8(B[0], B[1]);
  const __m512i w23l = _mm512_unpacklo_epi8(B[2], B[3]);
  const __m512i w23h = _mm512_unpackhi_epi8(B[2], B[3]);
  out[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(w01l, w23l));
  out[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(w01l, w23l));
  out[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(w01h, w23h));
  out[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(w01h, w23h));
}

// One map's Q8Decades in registers (the encoder's loop would otherwise
// reload them after every byte store, which may alias them).
struct Q8DecadeRegs {
  __m512 edge_lo, edge_hi, scale, offset;
  __m512i below_lo, below_hi, cap;
};
OPTZOO_AVX512_TARGET inline Q8DecadeRegs q8_decade_regs(const Q8Decades& T) {
  const __m512 fixed = _mm512_set1_ps(1 << kQ8Fraction);  // q8_count16
  return {_mm512_loadu_ps(T.edge), _mm512_loadu_ps(T.edge + 16),
          _mm512_mul_ps(_mm512_loadu_ps(T.scale), fixed),
          _mm512_mul_ps(_mm512_loadu_ps(T.offset), fixed),
          _mm512_loadu_si512(T.below), _mm512_loadu_si512(T.below + 16),
          _mm512_loadu_si512(T.cap)};
}
struct Q8EncodeRegs {
  Q8DecadeRegs s, u;  // the signed and the unsigned map
};
OPTZOO_AVX512_TARGET inline Q8EncodeRegs q8_encode_regs(const Q8Tables& t) {
  return {q8_decade_regs(*t.dec_s), q8_decade_regs(*t.dec_u)};
}

// #midpoints < a for 16 lanes of a = |y| (a float32 in [0, 1]), without a
// table gather: Q8Decades. Lanes where t is within kQ8Near of an integer, a
// is within kQ8Margin patterns of a decade edge, or a is above 1 (or NaN),
// are set in `redo`: the caller encodes them with the bucket table
// (q8_encode_*), so every lane gives q8_count's count.
OPTZOO_AVX512_TARGET inline __m512i q8_count16(const Q8DecadeRegs& T, __m512 a,
                                               __mmask16& redo) {
  const __m512i bits = _mm512_castps_si512(a);
  redo |= _mm512_cmpgt_epu32_mask(bits, _mm512_set1_epi32(0x3F800000));
  // the binade's index k: exponent - 96 (low 5 bits; exponents < 96 read 0)
  const __m512i k = _mm512_max_epi32(_mm512_srli_epi32(bits, 23),
                                     _mm512_set1_epi32(96));
  const __m512 edge = _mm512_permutex2var_ps(T.edge_lo, k, T.edge_hi);
  const __m512i below = _mm512_permutex2var_epi32(T.below_lo, k, T.below_hi);
  const __m512i d = _mm512_mask_add_epi32(
      below, _mm512_cmp_ps_mask(a, edge, _CMP_GT_OQ), below, _mm512_set1_epi32(1));
  // |bits(a) - bits(edge)| <= kQ8Margin (a tie included; the edge is +inf
  // in a binade without one: never near)
  redo |= _mm512_cmple_epu32_mask(
      _mm512_add_epi32(_mm512_sub_epi32(bits, _mm512_castps_si512(edge)),
                       _mm512_set1_epi32(kQ8Margin)),
      _mm512_set1_epi32(2 * kQ8Margin));
  // t in fixed point: r = round(2^F t), F = kQ8Fraction (T's scaled tables
  // give 2^F t exactly, one rounding as t's). floor(t) = r >> F except
  // within 2^-(F+1) below an integer, where t is within kQ8Near of it: the
  // lanes with r in [j 2^F - kQ8NearUnits, j 2^F + kQ8NearUnits) for an
  // integer j, i.e. the low F bits of r + kQ8NearUnits below 2 kQ8NearUnits,
  // are redone. (Cheaper than t - round(t) by vreduceps and two compares:
  // 1.08 -> 1.06 ns per entry.)
  const __m512i r = _mm512_cvt_roundps_epi32(
      _mm512_fmadd_ps(a, _mm512_permutexvar_ps(d, T.scale),
                      _mm512_permutexvar_ps(d, T.offset)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  constexpr int32_t kHigh = ((1 << kQ8Fraction) - 1) & ~(2 * kQ8NearUnits - 1);
  redo |= _mm512_testn_epi32_mask(
      _mm512_add_epi32(r, _mm512_set1_epi32(kQ8NearUnits)), _mm512_set1_epi32(kHigh));
  const __m512i n = _mm512_add_epi32(_mm512_srai_epi32(r, kQ8Fraction),
                                     _mm512_set1_epi32(1));
  return _mm512_min_epi32(n, _mm512_permutexvar_epi32(d, T.cap));
}

// The codes of 16 normalized moments: q8_encode_signed(ym) and
// q8_encode_unsigned(yv), except in the lanes set in redo_m / redo_v.
OPTZOO_AVX512_TARGET inline void q8_codes16(const Q8EncodeRegs& r, __m512 ym,
                                            __m512 yv, __m512i& code_m,
                                            __m512i& code_v, __mmask16& redo_m,
                                            __mmask16& redo_v) {
  // signed: the count for |y|, mirrored (q8_encode_signed's tie rule for a
  // negative y only differs at a midpoint: a lane it redoes); 127 - 128
  // (|y| beyond the last value) is code 0.
  const __m512i m127 = _mm512_set1_epi32(127);
  const __mmask16 neg = _mm512_movepi32_mask(_mm512_castps_si512(ym));
  const __m512i c = q8_count16(r.s, _mm512_abs_ps(ym), redo_m);
  code_m = _mm512_max_epi32(
      _mm512_mask_sub_epi32(_mm512_add_epi32(m127, c), neg, m127, c),
      _mm512_setzero_si512());
  // unsigned: max(y, 0) (a negative y, -0 or NaN counts 0)
  const __mmask16 pos = _mm512_cmp_ps_mask(yv, _mm512_setzero_ps(), _CMP_GT_OQ);
  code_v = _mm512_maskz_mov_epi32(
      pos, q8_count16(r.u, _mm512_maskz_mov_ps(pos, yv), redo_v));
}

// The lanes q8_count16 could not decide, encoded with the bucket table
// from the exact quotients mi / sm, vi / sv.
OPTZOO_AVX512_TARGET __attribute__((noinline)) void q8_redo16(
    const Q8Tables& t, const float* mi, const float* vi, float sm, float sv,
    __mmask16 redo_m, __mmask16 redo_v, uint8_t* cm, uint8_t* cv) {
  for (int l = 0; l < 16; ++l) {
    if ((redo_m >> l) & 1) cm[l] = q8_encode_signed(t.enc_s, mi[l] / sm);
    if ((redo_v >> l) & 1) cv[l] = q8_encode_unsigned(t.enc_u, vi[l] / sv);
  }
}

// The 16-entry groups of one chunk of a block (kChunk entries) that have
// lanes to re-encode, and those lanes: note() appends without a branch (a
// group without lanes is written to the slot past the last, and overwritten).
struct Q8Redo {
  static constexpr int64_t kChunk = 4096;
  int64_t count = 0;
  int32_t at[kChunk / 16 + 1];
  __mmask16 m[kChunk / 16 + 1], v[kChunk / 16 + 1];
  inline __attribute__((always_inline)) void note(int64_t j, __mmask16 redo_m,
                                                  __mmask16 redo_v) {
    at[count] = static_cast<int32_t>(j);
    m[count] = redo_m;
    v[count] = redo_v;
    count += (redo_m | redo_v) != 0;
  }
};

// 1 / s when y = x * (1 / s) is within 7 bit patterns of x / s for every
// |x| <= s whose quotient is normal (so, by kQ8Margin, of the same code),
// else 0 (the caller divides). Each of the reciprocal, the product and the
// quotient rounds once, so |x (1/s) - x/s| <= 3.0001 2^-24 |x/s|: under 3
// units in the last place, 7 patterns where a power of 2 lies between.
// That needs 1 / s normal (|s| in [2^-125, 2^125]); a quotient below the
// normal range is far below every midpoint (>= 2^-24) either way.
inline float q8_reciprocal(float s) {
  return s >= 0x1p-125f && s <= 0x1p125f ? 1.0f / s : 0.0f;
}

// Software prefetch of the 64 entries at f of the streams the first pass
// reads (g, the codes, [p]), kQ8Ahead blocks ahead of the loop: one thread
// at 4M entries (out of cache) 1.69 -> 1.47 ns per entry on a Zen 4; with
// both threads of a 2-core guest no difference beyond run-to-run noise.
constexpr int64_t kQ8Ahead = 2;
template <bool kWithP>
OPTZOO_AVX512_TARGET inline void q8_prefetch64(const Q8Leaf& a, const float* p,
                                               int64_t f) {
  if (f + 64 > a.size) return;
  for (int k = 0; k < 4; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(a.g + f + 16 * k), _MM_HINT_T0);
    if (kWithP) _mm_prefetch(reinterpret_cast<const char*>(p + f + 16 * k), _MM_HINT_T0);
  }
  _mm_prefetch(reinterpret_cast<const char*>(a.cm + f), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(a.cv + f), _MM_HINT_T0);
}

template <int64_t kDecay, bool kApply>
OPTZOO_AVX512_TARGET void q8_range_avx512(const float* __restrict s,
                                         const Q8Tables& t, const Q8Leaf& a,
                                         int64_t kb0, int64_t kb1,
                                         float* __restrict buf) {
  const float wd = s[kWeightDecay], c1 = s[kOneMinusB1], b2 = s[kB2],
              c2 = s[kOneMinusB2], inv_bc1 = s[kInvBc1], eps_root = s[kEpsRoot],
              inv_sqrt_bc2 = s[kInvSqrtBc2], eps = s[kEps];
  const __m512 vwd = _mm512_set1_ps(wd), vc1 = _mm512_set1_ps(c1),
               vb2 = _mm512_set1_ps(b2), vc2 = _mm512_set1_ps(c2),
               vbc1 = _mm512_set1_ps(inv_bc1), vroot = _mm512_set1_ps(eps_root),
               vbc2 = _mm512_set1_ps(inv_sqrt_bc2), veps = _mm512_set1_ps(eps),
               vnlr = _mm512_set1_ps(s[kNegLr]);
  const float* pr = kApply ? a.pw : a.p;  // apply mode: p is also written
  const __m512i order = _mm512_loadu_si512(kQ8Order.idx);
  const float inf = std::numeric_limits<float>::infinity();
  const Q8Planes& ps = *t.planes_s;
  const Q8Planes& pu = *t.planes_u;
  const Q8EncodeRegs enc = q8_encode_regs(t);
  float* __restrict bm = buf;
  float* __restrict bv = buf + a.block;
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    const int64_t i0 = kb * a.block;
    const int64_t n = std::min(a.size, i0 + a.block) - i0;
    const int64_t n64 = n & ~int64_t{63}, n16 = n & ~int64_t{15};
    const float am = a.am[kb], av = a.av[kb];
    const __m512 vam = _mm512_set1_ps(am), vav = _mm512_set1_ps(av);
    __m512 mxm = _mm512_set1_ps(-inf), mnm = _mm512_set1_ps(inf),
           mxv = _mm512_set1_ps(-inf), mnv = _mm512_set1_ps(inf);
    __mmask16 nan = 0;
    for (int64_t j = 0; j < n64; j += 64) {
      const int64_t i = i0 + j;
      q8_prefetch64<kDecay == kCoupled || kApply>(a, pr, i + kQ8Ahead * a.block);
      __m512 dm[4], dv[4];
      q8_decode64(ps, _mm512_permutexvar_epi8(order, _mm512_loadu_si512(a.cm + i)), dm);
      q8_decode64(pu, _mm512_permutexvar_epi8(order, _mm512_loadu_si512(a.cv + i)), dv);
      for (int k = 0; k < 4; ++k) {
        __m512 g = _mm512_loadu_ps(a.g + i + 16 * k);
        if (kDecay == kCoupled) g = _mm512_fmadd_ps(vwd, _mm512_loadu_ps(pr + i + 16 * k), g);
        const __m512 m = _mm512_mul_ps(dm[k], vam);
        const __m512 v = _mm512_mul_ps(dv[k], vav);
        const __m512 mi = _mm512_fmadd_ps(vc1, _mm512_sub_ps(g, m), m);
        const __m512 vi = _mm512_fmadd_ps(_mm512_mul_ps(vc2, g), g,
                                          _mm512_mul_ps(vb2, v));
        _mm512_storeu_ps(bm + j + 16 * k, mi);
        _mm512_storeu_ps(bv + j + 16 * k, vi);
        mxm = _mm512_max_ps(mxm, mi);
        mnm = _mm512_min_ps(mnm, mi);
        mxv = _mm512_max_ps(mxv, vi);
        mnv = _mm512_min_ps(mnv, vi);
        nan |= _mm512_cmp_ps_mask(mi, vi, _CMP_UNORD_Q);  // either
      }
    }
    Q8Extrema e;
    e.mx_m = _mm512_reduce_max_ps(mxm);
    e.mn_m = _mm512_reduce_min_ps(mnm);
    e.mx_v = _mm512_reduce_max_ps(mxv);
    e.mn_v = _mm512_reduce_min_ps(mnv);
    q8_moments<kDecay, true>(s, t, a, pr, i0, n64, n, am, av, bm, bv, e);
    if (nan != 0) {  // in element order, as the scalar loop
      e = Q8Extrema();
      e.add_all(bm, bv, n);
    }
    const float new_am = e.absmax_m(), new_av = e.absmax_v();
    const float sm = new_am > 0 ? new_am : 1.0f;
    const float sv = new_av > 0 ? new_av : 1.0f;
    // y = x / s as x * (1 / s) (q8_reciprocal), else divided
    const float rm = q8_reciprocal(sm), rv = q8_reciprocal(sv);
    const bool recip = rm != 0 && rv != 0;
    const __m512 vsm = _mm512_set1_ps(recip ? rm : sm),
                 vsv = _mm512_set1_ps(recip ? rv : sv);
    // The lanes the arithmetic encoder leaves undecided are re-encoded after
    // each chunk of the loop (Q8Redo), which keeps the loop free of calls
    // and branches (1.10 -> 1.08 ns per entry, one thread in cache).
    for (int64_t c0 = 0; c0 < n16; c0 += Q8Redo::kChunk) {
      Q8Redo redo;
      const int64_t c1 = std::min(n16, c0 + Q8Redo::kChunk);
      for (int64_t j = c0; j < c1; j += 16) {
        const int64_t i = i0 + j;
        const __m512 mi = _mm512_loadu_ps(bm + j), vi = _mm512_loadu_ps(bv + j);
        const __m512 ym = recip ? _mm512_mul_ps(mi, vsm) : _mm512_div_ps(mi, vsm);
        const __m512 yv = recip ? _mm512_mul_ps(vi, vsv) : _mm512_div_ps(vi, vsv);
        __m512i code_m, code_v;
        __mmask16 redo_m = 0, redo_v = 0;
        q8_codes16(enc, ym, yv, code_m, code_v, redo_m, redo_v);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(a.cm + i),
                         _mm512_cvtepi32_epi8(code_m));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(a.cv + i),
                         _mm512_cvtepi32_epi8(code_v));
        redo.note(j, redo_m, redo_v);
        const __m512 den = _mm512_fmadd_ps(_mm512_sqrt_ps(_mm512_add_ps(vi, vroot)),
                                           vbc2, veps);
        const __m512 xv = _mm512_div_ps(_mm512_mul_ps(mi, vbc1), den);
        if constexpr (kApply) {
          const __m512 pv = _mm512_loadu_ps(a.pw + i);
          const __m512 u = kDecay == kDecoupled ? _mm512_fmadd_ps(vwd, pv, xv) : xv;
          _mm512_storeu_ps(a.pw + i, _mm512_fmadd_ps(vnlr, u, pv));
        } else {
          _mm512_storeu_ps(a.x + i, xv);
        }
      }
      for (int64_t r = 0; r < redo.count; ++r) {
        const int64_t j = redo.at[r];
        q8_redo16(t, bm + j, bv + j, sm, sv, redo.m[r], redo.v[r], a.cm + i0 + j,
                  a.cv + i0 + j);
      }
    }
    q8_encode_range<kDecay, kApply, true>(s, t, a, i0, n16, n, bm, bv, sm, sv);
    a.am[kb] = new_am;
    a.av[kb] = new_av;
  }
}
#endif

// The loops with FMA contraction, fastest first; tests run each and compare
// (the same bits). Off x86 only the scalar lines.
enum Q8Loop : int64_t { kQ8Best = 0, kQ8Avx2 = 1, kQ8Scalar = 2 };

template <int64_t kDecay, bool kApply>
OPTZOO_FMA_TARGET void q8_fma_avx2(const float* s, const Q8Tables& t,
                                   const Q8Leaf& a, int64_t b, int64_t e,
                                   float* buf) {
#if defined(__x86_64__)
  q8_range_avx2<kDecay, kApply>(s, t, a, b, e, buf);
#else
  q8_range<kDecay, kApply, true>(s, t, a, b, e, buf);
#endif
}
template <int64_t kDecay, bool kApply>
void q8_fma_best(const float* s, const Q8Tables& t, const Q8Leaf& a, int64_t b,
                 int64_t e, float* buf) {
#if defined(__x86_64__)
  static const bool avx512 = Avx512VbmiSupported();
  if (avx512) return q8_range_avx512<kDecay, kApply>(s, t, a, b, e, buf);
#endif
  q8_fma_avx2<kDecay, kApply>(s, t, a, b, e, buf);
}
// The scalar lines with FMA.
template <int64_t kDecay, bool kApply>
OPTZOO_FMA_TARGET void q8_fma_scalar(const float* s, const Q8Tables& t,
                                     const Q8Leaf& a, int64_t b, int64_t e,
                                     float* buf) {
  q8_range<kDecay, kApply, true>(s, t, a, b, e, buf);
}
template <int64_t kDecay, bool kApply>
void q8_plain(const float* s, const Q8Tables& t, const Q8Leaf& a, int64_t b,
              int64_t e, float* buf) {
  q8_range<kDecay, kApply, false>(s, t, a, b, e, buf);
}

template <int64_t kDecay, bool kApply>
Q8Fn q8_pick(bool fma, int64_t loop) {
  if (!fma) return &q8_plain<kDecay, kApply>;
  if (loop == kQ8Scalar) return &q8_fma_scalar<kDecay, kApply>;
  if (loop == kQ8Avx2) return &q8_fma_avx2<kDecay, kApply>;
  return &q8_fma_best<kDecay, kApply>;
}

// Without apply a decoupled decay is XLA's (on the direction).
Q8Fn q8_select(int64_t decay, bool apply, bool fma, int64_t loop) {
  if (apply) {
    if (decay == kCoupled) return q8_pick<kCoupled, true>(fma, loop);
    if (decay == kDecoupled) return q8_pick<kDecoupled, true>(fma, loop);
    return q8_pick<kNoDecay, true>(fma, loop);
  }
  if (decay == kCoupled) return q8_pick<kCoupled, false>(fma, loop);
  return q8_pick<kNoDecay, false>(fma, loop);
}

// Elements per task, and the fewest for which a call uses the pool: one
// call per leaf (adam8.py), and the step costs ~2 ns per element, so smaller
// leaves than the float kernels' thresholds still gain from two threads.
constexpr int64_t kQ8Task = 1 << 14;
constexpr int64_t kQ8MinParallel = 1 << 15;

struct Q8Task {
  int64_t leaf, kb0, kb1;
};

struct Q8Job {
  explicit Q8Job(const Q8Tables& t) : tables(t) {}
  Q8Fn fn;
  const float* scalars;
  const Q8Tables tables;
  std::vector<Q8Leaf> leaves;
  std::vector<Q8Task> tasks;
  int64_t max_block = 1;
  std::atomic<int64_t> next{0}, done{0};

  void work() {
    std::vector<float> buf;
    for (;;) {
      const int64_t k = next.fetch_add(1, std::memory_order_relaxed);
      if (k >= static_cast<int64_t>(tasks.size())) return;
      const Q8Task& w = tasks[k];
      const Q8Leaf& a = leaves[w.leaf];
      if (static_cast<int64_t>(buf.size()) < 2 * a.block) buf.resize(2 * a.block);
      fn(scalars, tables, a, w.kb0, w.kb1, buf.data());
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

// Operands: scalars f32[kNumScalars], tables u32[kQ8TableWords] (Q8Tables),
// `after` (not read: an ordering operand, see adam8.py), then per leaf g,
// [p (coupled L2)], mu codes, mu absmax, nu codes, nu absmax; results per
// leaf: mu codes, mu absmax, nu codes, nu absmax (aliasing their operands)
// and the direction. With `apply` (the whole step, optzoo.update_and_apply):
// per leaf g, p, mu codes, mu absmax, nu codes, nu absmax, all but g in
// place (results alias them), no direction; `decay` (Decay) then includes
// the decoupled decay, and the scalars -lr. `loop` (Q8Loop): kQ8Best, or
// (tests) a slower loop where a faster one would run.
ffi::Error Adam8Impl(ffi::ThreadPool pool, ffi::AnyBuffer scalars,
                     ffi::AnyBuffer tables, ffi::AnyBuffer after,
                     ffi::RemainingArgs args,
                     ffi::RemainingRets rets, int64_t n_leaves,
                     int64_t block_size, int64_t decay, bool apply,
                     bool fma, int64_t loop) {
  if (fma && !FmaSupported()) {
    return ffi::Error::InvalidArgument("optzoo adam8: this CPU has no FMA");
  }
  const bool read_p = decay == kCoupled && !apply;
  const int64_t n_in = 1 + read_p, n_io = 4 + apply, n_args = n_in + n_io,
                n_rets = 5;
  if (scalars.element_type() != ffi::DataType::F32 ||
      scalars.element_count() != kNumScalars ||
      tables.element_type() != ffi::DataType::U32 ||
      tables.element_count() != kQ8TableWords || block_size < 1 ||
      decay < kNoDecay || decay > kDecoupled ||
      static_cast<int64_t>(args.size()) != n_leaves * n_args ||
      static_cast<int64_t>(rets.size()) != n_leaves * n_rets) {
    return ffi::Error::InvalidArgument("optzoo adam8: bad operands");
  }
  auto job = std::make_shared<Q8Job>(
      Q8Tables(reinterpret_cast<const uint32_t*>(tables.untyped_data())));
  job->fn = q8_select(decay, apply, fma, loop);
  job->scalars = reinterpret_cast<const float*>(scalars.untyped_data());
  int64_t total = 0;
  for (int64_t i = 0; i < n_leaves; ++i) {
    const int64_t a0 = i * n_args;
    void* data[6];
    int64_t count[6];
    for (int64_t k = 0; k < n_args; ++k) {
      auto b = args.get<ffi::AnyBuffer>(a0 + k);
      if (!b.has_value()) return ffi::Error::InvalidArgument("optzoo adam8: operand");
      data[k] = b->untyped_data();
      count[k] = b->element_count();
    }
    const int64_t size = count[0];
    const int64_t block = std::max<int64_t>(1, std::min(block_size, size));
    const int64_t nb = size == 0 ? 0 : (size + block - 1) / block;
    // io: [p (apply)], mu codes, mu absmax, nu codes, nu absmax
    const int64_t* c = count + n_in + apply;
    if ((read_p && count[1] != size) || (apply && count[n_in] != size) ||
        c[0] != size || c[1] != nb || c[2] != size || c[3] != nb) {
      return ffi::Error::InvalidArgument("optzoo adam8: shapes differ");
    }
    void* out[5];
    for (int64_t k = 0; k < n_rets; ++k) {
      auto r = rets.get<ffi::AnyBuffer>(i * n_rets + k);
      if (!r.has_value()) return ffi::Error::InvalidArgument("optzoo adam8: result");
      out[k] = (*r)->untyped_data();
    }
    const int64_t io_bytes[5] = {4 * size, size, 4 * nb, size, 4 * nb};
    for (int64_t k = 0; k < n_io; ++k) {  // not aliased by XLA: copy, then in place
      if (out[k] != data[n_in + k]) {
        std::memcpy(out[k], data[n_in + k], io_bytes[k + !apply]);
      }
    }
    void** q = out + apply;
    Q8Leaf leaf{};
    leaf.g = static_cast<const float*>(data[0]);
    leaf.p = read_p ? static_cast<const float*>(data[1]) : nullptr;
    leaf.pw = apply ? static_cast<float*>(out[0]) : nullptr;
    leaf.cm = static_cast<uint8_t*>(q[0]);
    leaf.am = static_cast<float*>(q[1]);
    leaf.cv = static_cast<uint8_t*>(q[2]);
    leaf.av = static_cast<float*>(q[3]);
    leaf.x = apply ? nullptr : static_cast<float*>(out[4]);
    leaf.size = size;
    leaf.block = block;
    job->leaves.push_back(leaf);
    const int64_t per_task = std::max<int64_t>(1, kQ8Task / block);
    for (int64_t kb = 0; kb < nb; kb += per_task) {
      job->tasks.push_back({i, kb, std::min(nb, kb + per_task)});
    }
    total += size;
  }
  // The calling thread works too: num_threads - 1 pool tasks, as run() does
  // for a whole step (num_threads tasks: 10M params in 20 leaves, 16.7 ->
  // 13.8 ms).
  int64_t workers = pool.num_threads() - 1;
  if (total < kQ8MinParallel) workers = 0;
  workers = std::min<int64_t>(workers, static_cast<int64_t>(job->tasks.size()) - 1);
  for (int64_t w = 0; w < workers; ++w) {
    pool.Schedule([job] { job->work(); });
  }
  job->work();
  const int64_t n_tasks = static_cast<int64_t>(job->tasks.size());
  while (job->done.load(std::memory_order_acquire) < n_tasks) {
    std::this_thread::yield();
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OptzooAdam, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("n_leaves")
                                  .Attr<int64_t>("decay")
                                  .Attr<bool>("amsgrad")
                                  .Attr<bool>("apply")
                                  .Attr<bool>("direction")
                                  .Attr<bool>("fma"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OptzooSgd, SgdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("n_leaves")
                                  .Attr<bool>("decay")
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("fma"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OptzooAdam8, Adam8Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("n_leaves")
                                  .Attr<int64_t>("block_size")
                                  .Attr<int64_t>("decay")
                                  .Attr<bool>("apply")
                                  .Attr<bool>("fma")
                                  .Attr<int64_t>("loop"));

// For the loader: can the FMA variant run on this CPU?
extern "C" __attribute__((visibility("default"))) int OptzooFmaSupported() {
  return FmaSupported() ? 1 : 0;
}
