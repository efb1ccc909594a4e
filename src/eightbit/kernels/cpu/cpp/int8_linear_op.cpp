// eightbit: the CPU kernel of the eightbit::int8_linear op in C++ (built and loaded by kernels/cpu/torch_ext.py).
//
// Why C++: the op's Python kernel costs the dispatcher's round trip into Python plus the Python work around the
// native call, ~15-20 us a call inside a model; MiniLM at batch 1 (37 linear calls of ~15-40 us of arithmetic
// each) spent a fifth of its forward there. This kernel does the same as eightbit.kernels.cpu.int8.int8_linear_cpu
// for its common case: one call of the native C function eb_int8_linear (csrc/int8_cpu.c; its address is bound
// once by the loader) into a per-thread scratch buffer, with the per-thread outlier-flag guess of each weight. Every
// other case (forced references, shapes or dtypes it does not take, more than 32 outlier columns, rows the native
// code hands back to the reference) goes to eightbit_cpu::int8_linear_py, the Python kernel, unchanged.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <memory>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sys/mman.h>
#include <unordered_map>
#include <vector>

namespace {

using linear_fn = int64_t (*)(const float *, int64_t, int64_t, const int8_t *, const float *, const float *, int64_t,
                              float, int64_t, int8_t *, float *, float *, uint8_t *, int64_t *, float *, float *,
                              float *, uint8_t *);
using scratch_fn = int64_t (*)(int64_t, int64_t, int64_t, int64_t, int64_t *);

// What the loader binds (kernels/cpu/int8.py, through torch_ext.bind_int8_linear): the native C functions and the
// Python kernel's limits, so that neither the scratch layout nor a limit is written down twice.
struct Bound {
  linear_fn linear;        // eb_int8_linear
  scratch_fn scratch;      // eb_int8_linear_scratch: offsets and size of its scratch
  int64_t max_k;           // int32 sums stay exact up to this K (int8.py _NATIVE_MAX_K)
  int64_t outlier_cap;     // outlier columns summed in the epilogue (SEQUENTIAL_OUTLIER_COLUMNS)
  size_t scratch_keep;     // largest scratch kept between calls (int8.py _SCRATCH_KEEP)
  size_t guesses_kept;     // weights whose outlier flags are kept per thread (int8.py _GUESSES_KEPT)
};
std::atomic<const Bound *> g_bound{nullptr};  // bound once at load (an op, so also rebindable: atomic)
thread_local bool tl_reference = false;        // inside eightbit.kernels.reference_only()

int64_t bind(int64_t linear, int64_t scratch, int64_t max_k, int64_t outlier_cap, int64_t scratch_keep,
             int64_t guesses_kept) {
  TORCH_CHECK_VALUE(linear != 0 && scratch != 0 && max_k > 0 && outlier_cap > 0 && scratch_keep >= 0 && guesses_kept > 0,
                    "bind_int8_linear: bad arguments");
  // a rebinding leaks the previous (tiny) record: a call in flight on another thread may still read it
  g_bound.store(new Bound{reinterpret_cast<linear_fn>(static_cast<uintptr_t>(linear)),
                          reinterpret_cast<scratch_fn>(static_cast<uintptr_t>(scratch)), max_k, outlier_cap,
                          static_cast<size_t>(scratch_keep), static_cast<size_t>(guesses_kept)},
                std::memory_order_release);
  return 0;
}

int64_t set_reference(bool on) {
  tl_reference = on;
  return 0;
}

bool forced_reference() {
  if (tl_reference) return true;
  const char *env = std::getenv("EIGHTBIT_REFERENCE");
  return env != nullptr && std::strcmp(env, "1") == 0;
}

at::Tensor python_kernel(const at::Tensor &x, const at::Tensor &weight, const at::Tensor &weight_absmax,
                         const std::optional<at::Tensor> &bias, double threshold) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("eightbit_cpu::int8_linear_py", "")
                       .typed<at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &,
                                         const std::optional<at::Tensor> &, double)>();
  return op.call(x, weight, weight_absmax, bias, threshold);
}

// The flags last found for this weight (k + 1 bytes, [k] = 1 once filled), this thread's (int8.py _flag_guess).
uint8_t *flag_guess(const void *weight, int64_t k, size_t kept_max) {
  thread_local std::unordered_map<const void *, std::vector<uint8_t>> guesses;
  if (guesses.size() > kept_max) guesses.clear();
  std::vector<uint8_t> &g = guesses[weight];
  if (static_cast<int64_t>(g.size()) != k + 1) g.assign(static_cast<size_t>(k + 1), 0);
  return g.data();
}

// A 64-byte aligned buffer of at least nbytes for one call's temporaries (not initialized): the thread's kept
// buffer (reused by its next call) up to keep_max bytes, else `once`, which the caller frees (int8.py _scratch).
uint8_t *scratch(int64_t nbytes, size_t keep_max, std::unique_ptr<uint8_t[]> &once) {
  thread_local std::unique_ptr<uint8_t[]> keep;
  thread_local size_t kept = 0;
  const size_t need = static_cast<size_t>(nbytes) + 64;
  uint8_t *p;
  if (need - 64 <= keep_max) {
    if (kept < need) keep.reset(new uint8_t[need]), kept = need;
    p = keep.get();
  } else {
    once.reset(new uint8_t[need]);
    p = once.get();
  }
  return reinterpret_cast<uint8_t *>((reinterpret_cast<uintptr_t>(p) + 63) / 64 * 64);
}

// at::empty whose pages, for 4 MiB and more, are asked for as 2 MiB transparent huge pages before anything
// touches them (eightbit._memory.empty: faulting a fresh large output in 4 KiB pages costs more than writing it).
at::Tensor empty_output(int64_t m, int64_t n) {
  at::Tensor out = at::empty({m, n}, at::TensorOptions().dtype(at::kFloat));
  constexpr uintptr_t huge = uintptr_t{2} << 20;
  const uintptr_t start = reinterpret_cast<uintptr_t>(out.data_ptr()), nbytes = static_cast<uintptr_t>(m * n) * 4;
  if (nbytes >= 2 * huge) {
    const uintptr_t lo = (start + huge - 1) / huge * huge, hi = (start + nbytes) / huge * huge;
    if (hi > lo) madvise(reinterpret_cast<void *>(lo), hi - lo, MADV_HUGEPAGE);  // best effort: a failure loses the hint
  }
  return out;
}

bool float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

at::Tensor int8_linear(const at::Tensor &x, const at::Tensor &weight, const at::Tensor &weight_absmax,
                       const std::optional<at::Tensor> &bias, double threshold) {
  // as ctypes passes a double to a C float (beyond float's range: infinity, where a plain cast is undefined)
  const float threshold_f = threshold > FLT_MAX ? INFINITY : threshold < -FLT_MAX ? -INFINITY : static_cast<float>(threshold);
  const bool fits = threshold <= 0 || threshold_f > 0.0f;  // a tiny positive threshold must not become 0
  const Bound *bound = g_bound.load(std::memory_order_acquire);
  // the absmax in float32 only: the reference computes in its dtype, which the native code does not
  if (bound == nullptr || forced_reference() || !fits || x.dim() != 2 || weight.dim() != 2 || x.size(0) == 0 ||
      x.size(1) > bound->max_k || !float_dtype(x.scalar_type()) || weight.scalar_type() != at::kChar ||
      weight_absmax.scalar_type() != at::kFloat || (bias.has_value() && !float_dtype(bias->scalar_type())))
    return python_kernel(x, weight, weight_absmax, bias, threshold);
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
  // the native code reads these by pointer: a mismatch is an error here, not a read past the end
  TORCH_CHECK_VALUE(weight.size(1) == k, "int8_linear: weight has ", weight.size(1), " input features, x has ", k);
  TORCH_CHECK_VALUE(weight_absmax.dim() == 1 && weight_absmax.size(0) == n, "int8_linear: weight_absmax must have shape (",
                    n, ",), got ", weight_absmax.sizes());
  TORCH_CHECK_VALUE(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == n), "int8_linear: bias must have shape (",
                    n, ",), got ", bias.has_value() ? bias->sizes() : at::IntArrayRef{});
  const at::Tensor xf = (x.scalar_type() == at::kFloat ? x : x.to(at::kFloat)).contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor wa = weight_absmax.contiguous();
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = (bias->scalar_type() == at::kFloat ? *bias : bias->to(at::kFloat)).contiguous();
  const int64_t cap = std::min(k, bound->outlier_cap);
  int64_t offsets[7];
  const int64_t total = bound->scratch(m, k, n, cap, offsets);
  std::unique_ptr<uint8_t[]> once;
  uint8_t *base = scratch(total, bound->scratch_keep, once);
  at::Tensor out = empty_output(m, n);
  const int64_t c = bound->linear(xf.data_ptr<float>(), m, k, static_cast<const int8_t *>(w.const_data_ptr()),
                             wa.const_data_ptr<float>(), b ? b->const_data_ptr<float>() : nullptr, n, threshold_f, cap,
                             reinterpret_cast<int8_t *>(base + offsets[0]), reinterpret_cast<float *>(base + offsets[1]),
                             reinterpret_cast<float *>(base + offsets[2]), base + offsets[3],
                             reinterpret_cast<int64_t *>(base + offsets[4]), reinterpret_cast<float *>(base + offsets[5]),
                             reinterpret_cast<float *>(base + offsets[6]), out.data_ptr<float>(),
                             flag_guess(w.const_data_ptr(), k, bound->guesses_kept));
  if (c < 0 || c > cap)  // rows for the reference, or an outlier product for BLAS: the Python kernel does both
    return python_kernel(x, weight, weight_absmax, bias, threshold);
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY(eightbit_cpu, m) {
  m.def("bind_int8_linear(int linear, int scratch, int max_k, int outlier_cap, int scratch_keep, int guesses_kept) -> int");
  m.def("set_reference(bool on) -> int");
  m.def("int8_linear_py(Tensor x, Tensor weight, Tensor weight_absmax, Tensor? bias, float threshold) -> Tensor");
  m.impl("bind_int8_linear", c10::DispatchKey::CompositeExplicitAutograd, TORCH_FN(bind));
  m.impl("set_reference", c10::DispatchKey::CompositeExplicitAutograd, TORCH_FN(set_reference));
}

TORCH_LIBRARY_IMPL(eightbit, CPU, m) { m.impl("int8_linear", TORCH_FN(int8_linear)); }
