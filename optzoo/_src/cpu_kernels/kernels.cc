// Fused CPU steps for the Adam family, as XLA FFI custom calls.
//
// One call updates every leaf of one dtype (a variadic call: one custom call
// per dtype per step instead of several XLA fusions per leaf), reading and
// writing each array it touches exactly once.
//
// Exactness: every element is computed with the operations, operand order and
// rounding of optzoo's plain jnp path as XLA:CPU compiles it (transform.py):
// one IEEE operation per jnp operation, except that a multiply feeding an
// add is one fused multiply-add exactly where XLA's LLVM contracts it (see
// madd). The library is built with -ffp-contract=off and without
// -ffast-math, so GCC adds no contraction or reassociation of its own. The
// scalars (1 - b1, 1/(1 - b1^t), ...) are computed by JAX outside and arrive
// as one small operand, so new hyperparameter values never recompile.
//
// Operands (one dtype T, float or double; `n` leaves):
//   scalars: T[S, K]  (S = 1, or the batch size under vmap)
//   then per leaf i: g_i, [p_i], m_i, v_i, [vmax_i]   (equal shapes)
// Results per leaf i: [p_i'], m_i', v_i', [vmax_i'].
//
// Two modes. `apply`: the whole step, p' = p + u with u the chain's update
// (moments, bias correction, decoupled decay, -lr); what
// optzoo.update_and_apply runs. Otherwise only the moments (m, v, AMSGrad's
// max, after coupled L2): what tx.update runs, leaving u to XLA, which fuses
// it into its consumer (optax.apply_updates) -- a separate u tree written by
// a custom call would be a fresh temporary buffer on every step (page faults:
// slower than the plain path). Every result aliases its operand: XLA writes
// it in place when the buffers are donated or are loop carries, and copies
// them first otherwise.
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

template <typename T>
using RangeFn = void (*)(const T*, const T*, const T*, T*, T*, T*, T*, int64_t,
                         int64_t);

#define OPTZOO_RANGE_ARGS                                                   \
  const T *__restrict s, const T *__restrict g, const T *__restrict p,      \
      T *__restrict m, T *__restrict v, T *__restrict vmax,                 \
      T *__restrict out, int64_t begin, int64_t end
#define OPTZOO_RANGE_CALL s, g, p, m, v, vmax, out, begin, end

#if defined(__x86_64__)
// FMA variant: AVX2 + FMA (x86-64-v3), checked at run time (FmaSupported).
template <typename T, int64_t kDecay, bool kAms, bool kApply>
__attribute__((target("arch=x86-64-v3"))) void range_fma(OPTZOO_RANGE_ARGS) {
  adam_loop<T, kDecay, kAms, kApply, true>(OPTZOO_RANGE_CALL);
}
bool FmaSupported() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
template <typename T, int64_t kDecay, bool kAms, bool kApply>
void range_fma(OPTZOO_RANGE_ARGS) {
  adam_loop<T, kDecay, kAms, kApply, true>(OPTZOO_RANGE_CALL);
}
bool FmaSupported() {
#if defined(__aarch64__) || defined(__FP_FAST_FMA)
  return true;
#else
  return false;
#endif
}
#endif

// Without contraction (XLA did not contract): baseline ISA.
template <typename T, int64_t kDecay, bool kAms, bool kApply>
void range_plain(OPTZOO_RANGE_ARGS) {
  adam_loop<T, kDecay, kAms, kApply, false>(OPTZOO_RANGE_CALL);
}

template <typename T, int64_t kDecay, bool kAms, bool kApply>
RangeFn<T> pick4(bool fma) {
  return fma ? &range_fma<T, kDecay, kAms, kApply>
             : &range_plain<T, kDecay, kAms, kApply>;
}

template <typename T, int64_t kDecay, bool kAms>
RangeFn<T> pick3(bool apply, bool fma) {
  return apply ? pick4<T, kDecay, kAms, true>(fma)
               : pick4<T, kDecay, kAms, false>(fma);
}

template <typename T, int64_t kDecay>
RangeFn<T> pick2(bool ams, bool apply, bool fma) {
  return ams ? pick3<T, kDecay, true>(apply, fma)
             : pick3<T, kDecay, false>(apply, fma);
}

template <typename T>
RangeFn<T> pick(const Flags& f) {
  switch (f.decay) {
    case kCoupled: return pick2<T, kCoupled>(f.amsgrad, f.apply, f.fma);
    case kDecoupled: return pick2<T, kDecoupled>(f.amsgrad, f.apply, f.fma);
    default: return pick2<T, kNoDecay>(f.amsgrad, f.apply, f.fma);
  }
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
  std::vector<const T*> g, p;
  std::vector<T*> m, v, vmax, out;
  const T* scalars;
  std::atomic<int64_t> next{0}, done{0};

  void work() {
    for (;;) {
      const int64_t b = next.fetch_add(1, std::memory_order_relaxed);
      if (b >= static_cast<int64_t>(blocks.size())) return;
      const Block& k = blocks[b];
      // Operands of one leaf share one offset; the scalars are per row.
      fn(scalars + k.row * kNumScalars, g[k.leaf], p[k.leaf], m[k.leaf],
         v[k.leaf], vmax[k.leaf], out[k.leaf], k.begin, k.end);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

constexpr int64_t kBlock = 1 << 16;        // elements per task
constexpr int64_t kMinParallel = 1 << 18;  // below this, one thread

template <typename T>
ffi::Error run(const Flags& flags, int64_t n_leaves, ffi::AnyBuffer scalars,
               ffi::RemainingArgs args, ffi::RemainingRets rets,
               ffi::ThreadPool* pool) {
  const bool has_p = flags.decay == kCoupled || flags.apply;
  const int64_t per_in = 3 + has_p + flags.amsgrad;
  const int64_t per_out = 2 + flags.apply + flags.amsgrad;
  if (static_cast<int64_t>(args.size()) != n_leaves * per_in ||
      static_cast<int64_t>(rets.size()) != n_leaves * per_out) {
    return ffi::Error::InvalidArgument("optzoo adam: operand count mismatch");
  }
  const int64_t rows = scalars.element_count() / kNumScalars;
  if (rows < 1 || rows * kNumScalars != scalars.element_count()) {
    return ffi::Error::InvalidArgument("optzoo adam: bad scalars operand");
  }
  auto job = std::make_shared<Job<T>>();
  job->fn = pick<T>(flags);
  job->scalars = reinterpret_cast<const T*>(scalars.untyped_data());
  int64_t total = 0;
  for (int64_t i = 0; i < n_leaves; ++i) {
    int64_t a = i * per_in;
    auto in = [&](int64_t k) -> const T* {
      auto b = args.get<ffi::AnyBuffer>(k);
      return b.has_value() ? reinterpret_cast<const T*>(b->untyped_data())
                           : nullptr;
    };
    auto g = args.get<ffi::AnyBuffer>(a);
    if (!g.has_value()) return ffi::Error::InvalidArgument("optzoo adam: g");
    const int64_t size = g->element_count();
    job->g.push_back(in(a++));
    const T* p_in = has_p ? in(a++) : nullptr;
    job->p.push_back(p_in);
    job->m.push_back(nullptr);
    job->v.push_back(nullptr);
    job->vmax.push_back(nullptr);
    int64_t r = i * per_out;
    auto res = [&](int64_t k) -> T* {
      auto b = rets.get<ffi::AnyBuffer>(k);
      return b.has_value() ? reinterpret_cast<T*>((*b)->untyped_data())
                           : nullptr;
    };
    job->out.push_back(flags.apply ? res(r++) : nullptr);
    // State results alias their operands (input_output_aliases): write the
    // result buffers, which are the operand buffers unless XLA copied.
    T* m_out = res(r++);
    T* v_out = res(r++);
    T* vmax_out = flags.amsgrad ? res(r++) : nullptr;
    const T* m_in = in(a++);
    const T* v_in = in(a++);
    const T* vmax_in = flags.amsgrad ? in(a++) : nullptr;
    // In apply mode `out` is the new parameter buffer and aliases p.
    if (flags.apply && job->out.back() != p_in) {
      std::copy(p_in, p_in + size, job->out.back());
    }
    if (m_out != m_in) std::copy(m_in, m_in + size, m_out);
    if (v_out != v_in) std::copy(v_in, v_in + size, v_out);
    if (vmax_out != vmax_in) std::copy(vmax_in, vmax_in + size, vmax_out);
    job->m.back() = m_out;
    job->v.back() = v_out;
    job->vmax.back() = vmax_out;
    if (size % rows != 0) {
      return ffi::Error::InvalidArgument("optzoo adam: batch rows mismatch");
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
  switch (scalars.element_type()) {
    case ffi::DataType::F32:
      return run<float>(flags, n_leaves, scalars, args, rets, &pool);
    case ffi::DataType::F64:
      return run<double>(flags, n_leaves, scalars, args, rets, &pool);
    default:
      return ffi::Error::InvalidArgument("optzoo adam: float32/float64 only");
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

// For the loader: can the FMA variant run on this CPU?
extern "C" __attribute__((visibility("default"))) int OptzooFmaSupported() {
  return FmaSupported() ? 1 : 0;
}
