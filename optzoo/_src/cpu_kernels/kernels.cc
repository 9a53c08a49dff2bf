// Fused CPU optimizer steps, as XLA FFI custom calls: the Adam family
// (optzoo_adam: the moments, or the whole step) and SGD with momentum
// (optzoo_sgd: the whole step).
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
// Adam has two modes. `apply`: the whole step, p' = p + u with u the chain's
// update (moments, bias correction, decoupled decay, -lr); what
// optzoo.update_and_apply runs. Otherwise only the moments (m, v, AMSGrad's
// max, after coupled L2): what tx.update runs, leaving u to XLA, which fuses
// it into its consumer (optax.apply_updates) -- a separate u tree written by
// a custom call would be a fresh temporary buffer on every step (page faults:
// slower than the plain path).
//
// Under vmap (vmap_method="broadcast_all") every operand gains the same
// leading batch dimensions: element j of leaf i then uses the scalars of
// batch row j / (size_i / S).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

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

struct Flags {
  int64_t decay;  // Decay
  bool amsgrad;
  bool apply;     // the whole step (p + u), else the moments only
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
template <typename T, int64_t kDecay, bool kAms, bool kApply, bool kFma>
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
    const T pi = kApply ? out[i] : (kDecay == kCoupled ? p[i] : T(0));
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
    if (kApply) {
      // (m inv_bc1) / (sqrt(v + eps_root) inv_sqrt_bc2 + eps)
      T u = (mi * inv_bc1) /
            madd<kFma>(std::sqrt(second + eps_root), inv_sqrt_bc2, eps);
      if (kDecay == kDecoupled) u = madd<kFma>(wd, pi, u);  // u + wd p
      out[i] = madd<kFma>(neg_lr, u, pi);                   // p + (-lr) u
    }
  }
}

// One leaf's arrays: read-only inputs, then the arrays updated in place
// (each result aliases its operand). kernels' layouts:
//   adam, moments only: in = g, [p (coupled)];  io = m, v, [vmax]
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

template <typename T, int64_t kDecay, bool kAms, bool kApply, bool kFma>
inline __attribute__((always_inline)) void adam_range(
    const T* s, const Leaf<T>& a, int64_t begin, int64_t end) {
  const bool read_p = kDecay == kCoupled && !kApply;
  int k = 0;
  T* out = kApply ? a.io[k++] : nullptr;
  T* m = a.io[k++];
  T* v = a.io[k++];
  T* vmax = kAms ? a.io[k] : nullptr;
  adam_loop<T, kDecay, kAms, kApply, kFma>(s, a.in[0], read_p ? a.in[1] : nullptr,
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

template <typename T, int64_t kDecay, bool kAms, bool kApply>
OPTZOO_FMA_TARGET void adam_fma(const T* s, const Leaf<T>& a, int64_t b,
                                int64_t e) {
  adam_range<T, kDecay, kAms, kApply, true>(s, a, b, e);
}
template <typename T, int64_t kDecay, bool kAms, bool kApply>
void adam_plain(const T* s, const Leaf<T>& a, int64_t b, int64_t e) {
  adam_range<T, kDecay, kAms, kApply, false>(s, a, b, e);
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

template <typename T, int64_t kDecay, bool kAms, bool kApply>
RangeFn<T> pick_adam4(bool fma) {
  return fma ? &adam_fma<T, kDecay, kAms, kApply>
             : &adam_plain<T, kDecay, kAms, kApply>;
}

template <typename T, int64_t kDecay, bool kAms>
RangeFn<T> pick_adam3(bool apply, bool fma) {
  return apply ? pick_adam4<T, kDecay, kAms, true>(fma)
               : pick_adam4<T, kDecay, kAms, false>(fma);
}

template <typename T, int64_t kDecay>
RangeFn<T> pick_adam2(bool ams, bool apply, bool fma) {
  return ams ? pick_adam3<T, kDecay, true>(apply, fma)
             : pick_adam3<T, kDecay, false>(apply, fma);
}

template <typename T>
RangeFn<T> pick_adam(const Flags& f) {
  switch (f.decay) {
    case kCoupled: return pick_adam2<T, kCoupled>(f.amsgrad, f.apply, f.fma);
    case kDecoupled: return pick_adam2<T, kDecoupled>(f.amsgrad, f.apply, f.fma);
    default: return pick_adam2<T, kNoDecay>(f.amsgrad, f.apply, f.fma);
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
// in/out arrays (equal shapes); the results: per leaf the n_io arrays. A
// result whose buffer is not its operand's (XLA did not alias) gets a copy
// first, so `fn` always updates in place.
template <typename T>
ffi::Error run(RangeFn<T> fn, int64_t n_scalars, int64_t n_leaves,
               int64_t n_in, int64_t n_io, ffi::AnyBuffer scalars,
               ffi::RemainingArgs args, ffi::RemainingRets rets,
               ffi::ThreadPool* pool) {
  if (n_in > kMaxIn || n_io > kMaxIo ||
      static_cast<int64_t>(args.size()) != n_leaves * (n_in + n_io) ||
      static_cast<int64_t>(rets.size()) != n_leaves * n_io) {
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
      auto r = rets.get<ffi::AnyBuffer>(i * n_io + (k - n_in));
      if (!r.has_value()) return ffi::Error::InvalidArgument("optzoo kernel: result");
      T* out = reinterpret_cast<T*>((*r)->untyped_data());
      if (out != data) std::copy(data, data + size, out);
      leaf.io[k - n_in] = out;
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
  int64_t workers = pool ? pool->num_threads() : 0;
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

ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::AnyBuffer scalars,
                    ffi::RemainingArgs args, ffi::RemainingRets rets,
                    int64_t n_leaves, int64_t decay, bool amsgrad, bool apply,
                    bool fma) {
  if (fma && !FmaSupported()) {
    return ffi::Error::InvalidArgument("optzoo adam: this CPU has no FMA");
  }
  const Flags flags{decay, amsgrad, apply, fma};
  const int64_t n_in = 1 + (decay == kCoupled && !apply);
  const int64_t n_io = 2 + apply + amsgrad;
  switch (scalars.element_type()) {
    case ffi::DataType::F32:
      return run<float>(pick_adam<float>(flags), kNumScalars, n_leaves, n_in,
                        n_io, scalars, args, rets, &pool);
    case ffi::DataType::F64:
      return run<double>(pick_adam<double>(flags), kNumScalars, n_leaves, n_in,
                         n_io, scalars, args, rets, &pool);
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
                        n_leaves, 1, 2, scalars, args, rets, &pool);
    case ffi::DataType::F64:
      return run<double>(pick_sgd<double>(decay, nesterov, fma), kSgdScalars,
                         n_leaves, 1, 2, scalars, args, rets, &pool);
    default:
      return ffi::Error::InvalidArgument("optzoo sgd: float32/float64 only");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OptzooAdam, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("n_leaves")
                                  .Attr<int64_t>("decay")
                                  .Attr<bool>("amsgrad")
                                  .Attr<bool>("apply")
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

// For the loader: can the FMA variant run on this CPU?
extern "C" __attribute__((visibility("default"))) int OptzooFmaSupported() {
  return FmaSupported() ? 1 : 0;
}
