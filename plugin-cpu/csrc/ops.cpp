// Python binding of the CPU kernels. Tensors cross as (data pointer, strides) integers
// taken from torch on the Python side (octavo_cpu/_native.py), so the extension needs
// no torch headers. The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "kernels.h"

#if defined(OCTAVO_HAVE_AMX)
#include <cpuid.h>
#endif

namespace py = pybind11;
using namespace octavo_cpu;

namespace {

// Instruction-set levels, each a superset of the ones before it on its architecture; every
// kernel file is compiled for one of them (CMakeLists.txt) and the best one the CPU has runs.
enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4, kNeon = 5 };
const char* const kIsaNames[] = {"generic", "avx2", "avx512", "avx512_bf16", "amx", "neon"};
// this architecture's levels, lowest first
#if defined(OCTAVO_HAVE_X86)
const Isa kLevels[] = {kGeneric, kAvx2, kAvx512, kAvx512Bf16, kAmx};
#elif defined(OCTAVO_HAVE_NEON)
const Isa kLevels[] = {kGeneric, kNeon};
#else
const Isa kLevels[] = {kGeneric};
#endif
constexpr int kNumLevels = sizeof(kLevels) / sizeof(kLevels[0]);

#if defined(OCTAVO_HAVE_AMX)
// AMX-TILE and AMX-BF16 (CPUID leaf 7: EDX bits 24 and 22), and Linux's grant of the tile state
bool has_amx() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (d >> 24 & 1u) && (d >> 22 & 1u) && amx::enable();
}
#endif

// the position in kLevels of the best level this CPU runs
int best_level() {
#if defined(OCTAVO_HAVE_X86)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
#if defined(OCTAVO_HAVE_AMX)
  if (bf16 && has_amx()) return 4;
#endif
  if (bf16) return 3;
  if (avx512) return 2;
  if (avx2) return 1;
#elif defined(OCTAVO_HAVE_NEON)
  return 1;  // Advanced SIMD is part of AArch64
#endif
  return 0;
}

// chosen once at import; OCTAVO_CPU_ISA in the Python layer may pick a lower level
Isa g_isa = kLevels[best_level()];

#if defined(OCTAVO_HAVE_X86)
#define OCTAVO_DISPATCH(fn, args)                              \
  switch (g_isa) {                                             \
    case kAmx: /* AMX adds tiles only: the rest is BF16's */   \
    case kAvx512Bf16: avx512bf16::fn(args); break;             \
    case kAvx512: avx512::fn(args); break;                     \
    case kAvx2: avx2::fn(args); break;                         \
    default: generic::fn(args);                                \
  }
#define OCTAVO_DISPATCH_RET(fn, ...)                        \
  switch (g_isa) {                                          \
    case kAmx:                                              \
    case kAvx512Bf16: return avx512bf16::fn(__VA_ARGS__);   \
    case kAvx512: return avx512::fn(__VA_ARGS__);           \
    case kAvx2: return avx2::fn(__VA_ARGS__);               \
    default: return generic::fn(__VA_ARGS__);               \
  }
#elif defined(OCTAVO_HAVE_NEON)
#define OCTAVO_DISPATCH(fn, args) \
  if (g_isa == kNeon) {           \
    neon::fn(args);               \
  } else {                        \
    generic::fn(args);            \
  }
#define OCTAVO_DISPATCH_RET(fn, ...) return g_isa == kNeon ? neon::fn(__VA_ARGS__) : generic::fn(__VA_ARGS__);
#else
#define OCTAVO_DISPATCH(fn, args) generic::fn(args)
#define OCTAVO_DISPATCH_RET(fn, ...) return generic::fn(__VA_ARGS__);
#endif

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// y = x @ w^T (+ bias) on the GEMV (dense_impl.h); x's rows at x_stride, y's at y_stride.
void run_linear(void* y, int64_t y_stride, const void* x, int64_t x_stride, const void* w, int64_t w_stride,
                const void* bias, int64_t M, int64_t N, int64_t K, int dtype, int num_threads) {
  LinearArgs a{};
  a.y = y;
  a.y_stride = y_stride;
  a.x = x;
  a.x_stride = x_stride;
  a.w = w;
  a.w_stride = w_stride;
  a.bias = bias;
  a.M = M;
  a.N = N;
  a.K = K;
  a.dtype = dtype;
  a.num_threads = num_threads;
  OCTAVO_DISPATCH(linear, a);
}

// The packed GEMM: bf16 weights on the levels with AVX512_BF16 take gemm_bf16.h's k-pair
// layout (vdpbf16ps, and AMX's tiles at the "amx" level); every other weight the current
// level's gemm_fma.h panels. A weight is packed and run under the same level.
bool dp_layout(int dtype) { return dtype == kBF16 && (g_isa == kAvx512Bf16 || g_isa == kAmx); }

int64_t packed_elems(int64_t N, int64_t K, int dtype) {
#ifdef OCTAVO_HAVE_X86
  if (dp_layout(dtype)) return avx512bf16::gemm_packed_elems(N, K);
#endif
  (void)dtype;
  OCTAVO_DISPATCH_RET(fgemm_packed_elems, N, K)
}

void run_gemm(void* y, int64_t y_stride, const void* x, int64_t x_stride, const void* w_packed, const void* bias,
              int64_t M, int64_t N, int64_t K, int dtype, int num_threads) {
  GemmArgs a{};
  a.y = y;
  a.y_stride = y_stride;
  a.x = x;
  a.x_stride = x_stride;
  a.w_packed = w_packed;
  a.bias = bias;
  a.M = M;
  a.N = N;
  a.K = K;
  a.dtype = dtype;
  a.num_threads = num_threads;
#ifdef OCTAVO_HAVE_X86
  if (dp_layout(dtype)) {
#ifdef OCTAVO_HAVE_AMX
    if (g_isa == kAmx) return amx::gemm(a);
#endif
    return avx512bf16::gemm(a);
  }
#endif
  OCTAVO_DISPATCH(fgemm, a);
}

// ---- a whole decode step's layers in one call (octavo_cpu/decode_forward.py) ----------
// The per-layer sequence of octavo.models.llama (RMSNorm, qkv, rotary, KV write, attention,
// o_proj, RMSNorm, gate_up, SiLU-and-mul, down) over the same kernels with the same arguments
// as the op-by-op path, so the values are identical; only the ~12 Python calls per layer (and
// their output allocations) go. The linears take the kernel CpuLinearMethod would
// (linear.linear_path): the packed GEMM or the GEMV.

// One layer's row of the plan (int64 each): weight pointers (0 = absent), its window, and the
// GEMM's packed copies of the four weights (0 until a step needs them).
enum PlanCol : int {
  kInNorm, kQkvW, kQkvB, kOW, kPostNorm, kGateUpW, kDownW, kKvCache, kWindow,
  kQkvP, kOP, kGateUpP, kDownP, kPlanCols
};

struct DecodeStep {
  const int64_t* plan;  // [layers, kPlanCols]
  int layers, hidden, num_heads, num_kv_heads, head_dim, inter;
  float eps, scale;
  int dtype, kv_dtype, block_size, attn_kernel, num_threads;
  bool use_gemm;  // the linears on the packed GEMM (weights packed under this level), else the GEMV
  int64_t kv_stride_kv, kv_stride_block, kv_stride_tok, kv_stride_head;
  const void* final_norm;
  const void* x_in;  // [M, hidden] embeddings
  void* out;  // [M, hidden] the final norm's output
  void* scratch;  // M * (3 hidden + 2 q + 2 kv + 3 inter) elements of dtype
  int64_t M;
  const int64_t* positions;
  const int64_t* slot_mapping;
  const float* cos_sin;
  int64_t cs_stride;
  int rot_dim;
  const int32_t* block_tables;
  int64_t bt_stride;
  const int32_t* seq_lens;
  const int32_t* query_start_loc;
  int num_seqs;
};

// The layer's KV cache as WriteKvArgs and AttnArgs both describe it.
template <typename Args>
void set_kv_cache(Args& x, void* kv, const DecodeStep& d) {
  x.kv = kv;
  x.kv_stride_kv = d.kv_stride_kv;
  x.kv_stride_block = d.kv_stride_block;
  x.kv_stride_tok = d.kv_stride_tok;
  x.kv_stride_head = d.kv_stride_head;
  x.kv_dtype = d.kv_dtype;
  x.num_kv_heads = d.num_kv_heads;
  x.head_dim = d.head_dim;
  x.block_size = d.block_size;
}

void rms_rows(const DecodeStep& d, void* out, const void* x, void* res, const void* weight, bool with_residual) {
  RmsNormArgs a{};
  a.out = out;
  a.x = x;
  a.residual = with_residual ? res : nullptr;
  a.res_out = with_residual ? res : nullptr;  // the kernel allows res_out to alias residual
  a.weight = weight;
  a.rows = d.M;
  a.hidden = d.hidden;
  a.x_stride = a.out_stride = a.res_stride = d.hidden;
  a.eps = d.eps;
  a.dtype = a.weight_dtype = d.dtype;
  a.num_threads = d.num_threads;
  OCTAVO_DISPATCH(rms_norm, a);
}

void linear_rows(const DecodeStep& d, void* y, const void* x, int64_t K, int64_t N, int64_t plan_w, int64_t plan_b,
                 int64_t plan_packed) {
  const void* bias = plan_b ? ptr<const void>((uintptr_t)plan_b) : nullptr;
  if (d.use_gemm)  // the binding checked that the packed copies exist
    return run_gemm(y, N, x, K, ptr<const void>((uintptr_t)plan_packed), bias, d.M, N, K, d.dtype, d.num_threads);
  run_linear(y, N, x, K, ptr<const void>((uintptr_t)plan_w), K, bias, d.M, N, K, d.dtype, d.num_threads);
}

void decode_step(const DecodeStep& d) {
  const int64_t H = d.hidden, D = d.head_dim;
  const int64_t Q = (int64_t)d.num_heads * D, KV = (int64_t)d.num_kv_heads * D, QKV = Q + 2 * KV, I = d.inter;
  const size_t es = d.dtype == kF32 ? 4 : 2;
  char* s = static_cast<char*>(d.scratch);
  char* res = s;
  char* h = res + d.M * H * es;
  char* xb = h + d.M * H * es;
  char* qkv = xb + d.M * H * es;
  char* ao = qkv + d.M * QKV * es;
  char* gu = ao + d.M * Q * es;
  char* act = gu + d.M * 2 * I * es;
  std::memcpy(res, d.x_in, d.M * H * es);  // layer 0: the residual stream starts as the embeddings
  for (int l = 0; l < d.layers; ++l) {
    const int64_t* p = d.plan + (int64_t)l * kPlanCols;
    rms_rows(d, h, l == 0 ? d.x_in : xb, res, ptr<const void>((uintptr_t)p[kInNorm]), l > 0);
    linear_rows(d, qkv, h, H, QKV, p[kQkvW], p[kQkvB], p[kQkvP]);
    RotaryArgs r{};
    r.q = qkv;
    r.k = qkv + Q * es;
    r.q_stride_t = r.k_stride_t = QKV;
    r.q_stride_h = r.k_stride_h = D;
    r.positions = d.positions;
    r.cos_sin = d.cos_sin;
    r.cs_stride = d.cs_stride;
    r.num_tokens = d.M;
    r.num_q_heads = d.num_heads;
    r.num_k_heads = d.num_kv_heads;
    r.rot_dim = d.rot_dim;
    r.dtype = d.dtype;
    r.num_threads = d.num_threads;
    OCTAVO_DISPATCH(rotary, r);
    void* kv = ptr<void>((uintptr_t)p[kKvCache]);
    WriteKvArgs w{};
    w.k = qkv + Q * es;
    w.v = qkv + (Q + KV) * es;
    w.k_stride_t = w.v_stride_t = QKV;
    w.k_stride_h = w.v_stride_h = D;
    w.src_dtype = d.dtype;
    set_kv_cache(w, kv, d);
    w.slot_mapping = d.slot_mapping;
    w.num_tokens = d.M;
    w.num_threads = d.num_threads;
    OCTAVO_DISPATCH(write_kv, w);
    AttnArgs a{};
    a.out = ao;
    a.o_stride_t = Q;
    a.o_stride_h = D;
    a.q = qkv;
    a.q_stride_t = QKV;
    a.q_stride_h = D;
    a.q_dtype = d.dtype;
    set_kv_cache(a, kv, d);
    a.block_tables = d.block_tables;
    a.bt_stride = d.bt_stride;
    a.seq_lens = d.seq_lens;
    a.query_start_loc = d.query_start_loc;
    a.first_seq = 0;
    a.num_seqs = d.num_seqs;
    a.num_heads = d.num_heads;
    a.scale = d.scale;
    a.sliding_window = (int)p[kWindow];
    a.causal = 1;
    a.q_tile = 16;  // _native.paged_attention's default (decode rows: one token per request)
    a.num_threads = d.num_threads;
    a.kv_splits = 0;
    a.kernel = d.attn_kernel;
    OCTAVO_DISPATCH(paged_attention, a);
    linear_rows(d, xb, ao, Q, H, p[kOW], 0, p[kOP]);
    rms_rows(d, h, xb, res, ptr<const void>((uintptr_t)p[kPostNorm]), true);
    linear_rows(d, gu, h, H, 2 * I, p[kGateUpW], 0, p[kGateUpP]);
    SiluMulArgs m{};
    m.out = act;
    m.x = gu;
    m.rows = d.M;
    m.d = I;
    m.x_stride = 2 * I;
    m.out_stride = I;
    m.dtype = d.dtype;
    m.num_threads = d.num_threads;
    OCTAVO_DISPATCH(silu_and_mul, m);
    linear_rows(d, xb, act, I, H, p[kDownW], 0, p[kDownP]);
  }
  rms_rows(d, d.out, xb, res, d.final_norm, true);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "octavo-cpu native kernels (see csrc/kernels.h)";

  m.def("isa", []() { return std::string(kIsaNames[g_isa]); });
  m.def("supported_isas", []() {
    py::list out;
    for (int i = 0; i <= best_level(); ++i) out.append(kIsaNames[kLevels[i]]);
    return out;
  });
  m.def("set_isa", [](const std::string& isa) {
    std::string names;
    for (int i = 0; i < kNumLevels; ++i) {
      names += (i ? ", " : "") + std::string(kIsaNames[kLevels[i]]);
      if (isa != kIsaNames[kLevels[i]]) continue;
      if (i > best_level())
        throw py::value_error("this CPU lacks " + isa + "; it supports up to " + kIsaNames[kLevels[best_level()]]);
      g_isa = kLevels[i];
      return;
    }
    throw py::value_error("isa must be one of " + names + " on this architecture; got '" + isa + "'");
  });

  m.def(
      "paged_attention",
      [](uintptr_t out, int64_t o_stride_t, int64_t o_stride_h, uintptr_t q, int64_t q_stride_t,
         int64_t q_stride_h, int q_dtype, uintptr_t kv, int64_t kv_stride_kv, int64_t kv_stride_block,
         int64_t kv_stride_tok, int64_t kv_stride_head, int kv_dtype, uintptr_t block_tables,
         int64_t bt_stride, uintptr_t seq_lens, uintptr_t query_start_loc, int first_seq, int num_seqs,
         int num_heads, int num_kv_heads, int head_dim, int block_size, float scale, int sliding_window,
         int q_tile, int num_threads, int kv_splits, int kernel, int causal) {
        AttnArgs a{};
        a.out = ptr<void>(out);
        a.o_stride_t = o_stride_t;
        a.o_stride_h = o_stride_h;
        a.q = ptr<const void>(q);
        a.q_stride_t = q_stride_t;
        a.q_stride_h = q_stride_h;
        a.q_dtype = q_dtype;
        a.kv = ptr<const void>(kv);
        a.kv_stride_kv = kv_stride_kv;
        a.kv_stride_block = kv_stride_block;
        a.kv_stride_tok = kv_stride_tok;
        a.kv_stride_head = kv_stride_head;
        a.kv_dtype = kv_dtype;
        a.block_tables = ptr<const int32_t>(block_tables);
        a.bt_stride = bt_stride;
        a.seq_lens = ptr<const int32_t>(seq_lens);
        a.query_start_loc = ptr<const int32_t>(query_start_loc);
        a.first_seq = first_seq;
        a.num_seqs = num_seqs;
        a.num_heads = num_heads;
        a.num_kv_heads = num_kv_heads;
        a.head_dim = head_dim;
        a.block_size = block_size;
        a.scale = scale;
        a.sliding_window = sliding_window;
        a.causal = causal;
        a.q_tile = q_tile;
        a.num_threads = num_threads;
        a.kv_splits = kv_splits;
        a.kernel = kernel;
        py::gil_scoped_release nogil;
        OCTAVO_DISPATCH(paged_attention, a);
      },
      "Paged varlen GQA attention over block tables, causal or not (see kernels.h)");

  m.def(
      "write_kv",
      [](uintptr_t k, int64_t k_stride_t, int64_t k_stride_h, uintptr_t v, int64_t v_stride_t,
         int64_t v_stride_h, int src_dtype, uintptr_t kv, int64_t kv_stride_kv, int64_t kv_stride_block,
         int64_t kv_stride_tok, int64_t kv_stride_head, int kv_dtype, uintptr_t slot_mapping,
         int64_t num_tokens, int num_kv_heads, int head_dim, int block_size, int num_threads) {
        WriteKvArgs a{};
        a.k = ptr<const void>(k);
        a.k_stride_t = k_stride_t;
        a.k_stride_h = k_stride_h;
        a.v = ptr<const void>(v);
        a.v_stride_t = v_stride_t;
        a.v_stride_h = v_stride_h;
        a.src_dtype = src_dtype;
        a.kv = ptr<void>(kv);
        a.kv_stride_kv = kv_stride_kv;
        a.kv_stride_block = kv_stride_block;
        a.kv_stride_tok = kv_stride_tok;
        a.kv_stride_head = kv_stride_head;
        a.kv_dtype = kv_dtype;
        a.slot_mapping = ptr<const int64_t>(slot_mapping);
        a.num_tokens = num_tokens;
        a.num_kv_heads = num_kv_heads;
        a.head_dim = head_dim;
        a.block_size = block_size;
        a.num_threads = num_threads;
        py::gil_scoped_release nogil;
        OCTAVO_DISPATCH(write_kv, a);
      },
      "Store k/v rows at their slots of the paged cache (slot < 0 = skip)");

  m.def(
      "rms_norm",
      [](uintptr_t out, int64_t out_stride, uintptr_t x, int64_t x_stride, uintptr_t residual,
         uintptr_t res_out, int64_t res_stride, uintptr_t weight, int weight_dtype, int64_t rows, int64_t hidden, float eps,
         int dtype, int num_threads) {
        RmsNormArgs a{};
        a.out = ptr<void>(out);
        a.out_stride = out_stride;
        a.x = ptr<const void>(x);
        a.x_stride = x_stride;
        a.residual = ptr<const void>(residual);
        a.res_out = ptr<void>(res_out);
        a.res_stride = res_stride;
        a.weight = ptr<const void>(weight);
        a.weight_dtype = weight_dtype;
        a.rows = rows;
        a.hidden = hidden;
        a.eps = eps;
        a.dtype = dtype;
        a.num_threads = num_threads;
        py::gil_scoped_release nogil;
        OCTAVO_DISPATCH(rms_norm, a);
      },
      "RMSNorm over rows, optionally fused with the residual add (sum written to res_out)");
  m.def(
      "linear",
      [](uintptr_t y, int64_t y_stride, uintptr_t x, int64_t x_stride, uintptr_t w, int64_t w_stride,
         uintptr_t bias, int64_t M, int64_t N, int64_t K, int dtype, int num_threads) {
        py::gil_scoped_release nogil;
        run_linear(ptr<void>(y), y_stride, ptr<const void>(x), x_stride, ptr<const void>(w), w_stride,
                   ptr<const void>(bias), M, N, K, dtype, num_threads);
      },
      "y = x @ w^T (+ bias) for few rows of x, fp32 accumulation (see kernels.h)");

  // The packed GEMM (any level; the layout is the level's and the dtype's, see run_gemm)
  m.def("gemm_layout", [](int dtype) {
    return std::string(dp_layout(dtype) ? "bf16_pairs" : kIsaNames[g_isa]) + (dtype == kF32 ? "/f32" : "/bf16");
  }, "names the layout gemm_pack writes for dtype under the current level; gemm reads only that");
  m.def("gemm_packed_elems", &packed_elems, "elements of gemm_pack's output for an [N, K] weight of dtype");
  m.def(
      "gemm_pack",
      [](uintptr_t out, uintptr_t w, int64_t w_stride, int64_t N, int64_t K, int dtype, int num_threads) {
        GemmPackArgs a{};
        a.out = ptr<void>(out);
        a.w = ptr<const void>(w);
        a.w_stride = w_stride;
        a.N = N;
        a.K = K;
        a.dtype = dtype;
        a.num_threads = num_threads;
        py::gil_scoped_release nogil;
#ifdef OCTAVO_HAVE_X86
        if (dp_layout(dtype)) return avx512bf16::gemm_pack(a);
#endif
        OCTAVO_DISPATCH(fgemm_pack, a);
      },
      "Pack a weight [N, K] for gemm (layouts in csrc/gemm_bf16.h and csrc/gemm_fma.h)");
  m.def(
      "gemm",
      [](uintptr_t y, int64_t y_stride, uintptr_t x, int64_t x_stride, uintptr_t w_packed, uintptr_t bias,
         int64_t M, int64_t N, int64_t K, int dtype, int num_threads) {
        py::gil_scoped_release nogil;
        run_gemm(ptr<void>(y), y_stride, ptr<const void>(x), x_stride, ptr<const void>(w_packed),
                 ptr<const void>(bias), M, N, K, dtype, num_threads);
      },
      "y = x @ w^T (+ bias) against gemm_pack's packed w; fp32 sums, one rounding");
  m.def(
      "rotary",
      [](uintptr_t q, int64_t q_stride_t, int64_t q_stride_h, int num_q_heads, uintptr_t k, int64_t k_stride_t,
         int64_t k_stride_h, int num_k_heads, uintptr_t positions, int64_t num_tokens, uintptr_t cos_sin,
         int64_t cs_stride, int64_t max_pos, int rot_dim, int dtype, int num_threads) {
        // the kernel indexes the table with these: a bad position must raise, not read
        // past the table (index_select raises too)
        const int64_t* pos = ptr<const int64_t>(positions);
        for (int64_t t = 0; t < num_tokens; ++t)
          if (pos[t] < 0 || pos[t] >= max_pos)
            throw py::index_error("rotary: position " + std::to_string(pos[t]) + " is outside the cos/sin table of " +
                                  std::to_string(max_pos) + " positions");
        RotaryArgs a{};
        a.q = ptr<void>(q);
        a.q_stride_t = q_stride_t;
        a.q_stride_h = q_stride_h;
        a.num_q_heads = num_q_heads;
        a.k = ptr<void>(k);
        a.k_stride_t = k_stride_t;
        a.k_stride_h = k_stride_h;
        a.num_k_heads = num_k_heads;
        a.positions = ptr<const int64_t>(positions);
        a.num_tokens = num_tokens;
        a.cos_sin = ptr<const float>(cos_sin);
        a.cs_stride = cs_stride;
        a.rot_dim = rot_dim;
        a.dtype = dtype;
        a.num_threads = num_threads;
        py::gil_scoped_release nogil;
        OCTAVO_DISPATCH(rotary, a);
      },
      "Neox rotary embedding of q and k in place (see kernels.h)");

  m.def(
      "silu_and_mul",
      [](uintptr_t out, int64_t out_stride, uintptr_t x, int64_t x_stride, int64_t rows, int64_t d, int dtype,
         int num_threads) {
        SiluMulArgs a{};
        a.out = ptr<void>(out);
        a.out_stride = out_stride;
        a.x = ptr<const void>(x);
        a.x_stride = x_stride;
        a.rows = rows;
        a.d = d;
        a.dtype = dtype;
        a.num_threads = num_threads;
        py::gil_scoped_release nogil;
        OCTAVO_DISPATCH(silu_and_mul, a);
      },
      "out = silu(x[:, :d]) * x[:, d:] over rows, fp32 math (see kernels.h)");

  m.def(
      "sample",
      [](uintptr_t out, uintptr_t logits, int64_t stride, int64_t rows, int64_t vocab, uintptr_t temperatures,
         uintptr_t u, int dtype, int num_threads) {
        SampleArgs a{};
        a.out = ptr<int64_t>(out);
        a.logits = ptr<const void>(logits);
        a.stride = stride;
        a.rows = rows;
        a.vocab = vocab;
        a.temperatures = ptr<const float>(temperatures);
        a.u = ptr<const float>(u);
        a.dtype = dtype;
        a.num_threads = num_threads;
        py::gil_scoped_release nogil;
        OCTAVO_DISPATCH(sample, a);
      },
      "one token per row by inverse CDF at u of softmax(logits / t) (see kernels.h)");

  m.def(
      "apply_token_bitmask",
      [](uintptr_t logits, int64_t stride, int64_t rows, int64_t vocab, uintptr_t bitmask, int64_t words) {
        float* lg = ptr<float>(logits);
        const int32_t* bm = ptr<const int32_t>(bitmask);
        const float ninf = -std::numeric_limits<float>::infinity();
        py::gil_scoped_release nogil;
        // one pass over the words, touching only the logits of words with a banned token: a
        // grammar's mask is mostly all-allowed or all-banned words (core's torch definition
        // expands every bit into a byte mask first, ~10x the memory traffic)
        for (int64_t r = 0; r < rows; ++r) {
          float* row = lg + r * stride;
          const int32_t* w = bm + r * words;
          for (int64_t j = 0; j < words && j * 32 < vocab; ++j) {
            const uint32_t bits = (uint32_t)w[j];
            if (bits == 0xffffffffu) continue;
            const int64_t base = j * 32, n = vocab - base < 32 ? vocab - base : 32;
            if (bits == 0) {
              for (int64_t b = 0; b < n; ++b) row[base + b] = ninf;
              continue;
            }
            for (int64_t b = 0; b < n; ++b)
              if (!(bits >> b & 1u)) row[base + b] = ninf;
          }
        }
      },
      "ban, in place, the float32 logits whose bit is 0 in xgrammar's int32 bitmask (FusedOps.apply_token_bitmask)");

  m.def(
      "decode_step",
      [](uintptr_t plan, int layers, int hidden, int num_heads, int num_kv_heads, int head_dim, int inter,
         float eps, float scale, int dtype, int kv_dtype, int block_size, int attn_kernel, int num_threads,
         int64_t kv_stride_kv, int64_t kv_stride_block, int64_t kv_stride_tok, int64_t kv_stride_head,
         uintptr_t final_norm, uintptr_t x_in, uintptr_t out, uintptr_t scratch, int64_t M, uintptr_t positions,
         uintptr_t slot_mapping, uintptr_t cos_sin, int64_t cs_stride, int64_t max_pos, int rot_dim,
         uintptr_t block_tables, int64_t bt_stride, uintptr_t seq_lens, uintptr_t query_start_loc, int num_seqs,
         bool use_gemm) {
        if (use_gemm) {  // the packed GEMM: every layer's copies present
          bool ok = true;
          const int64_t* pl = ptr<const int64_t>(plan);
          for (int l = 0; ok && l < layers; ++l)
            for (int c : {kQkvP, kOP, kGateUpP, kDownP}) ok = ok && pl[(int64_t)l * kPlanCols + c] != 0;
          if (!ok) throw py::value_error("decode_step: use_gemm needs every layer's packed weights");
        }
        const int64_t* pos = ptr<const int64_t>(positions);
        for (int64_t t = 0; t < M; ++t)  // as the rotary binding: a bad position raises, not reads
          if (pos[t] < 0 || pos[t] >= max_pos)
            throw py::index_error("decode_step: position " + std::to_string(pos[t]) +
                                  " is outside the cos/sin table of " + std::to_string(max_pos) + " positions");
        DecodeStep d{};
        d.plan = ptr<const int64_t>(plan);
        d.layers = layers;
        d.hidden = hidden;
        d.num_heads = num_heads;
        d.num_kv_heads = num_kv_heads;
        d.head_dim = head_dim;
        d.inter = inter;
        d.eps = eps;
        d.scale = scale;
        d.dtype = dtype;
        d.kv_dtype = kv_dtype;
        d.block_size = block_size;
        d.attn_kernel = attn_kernel;
        d.num_threads = num_threads;
        d.kv_stride_kv = kv_stride_kv;
        d.kv_stride_block = kv_stride_block;
        d.kv_stride_tok = kv_stride_tok;
        d.kv_stride_head = kv_stride_head;
        d.final_norm = ptr<const void>(final_norm);
        d.x_in = ptr<const void>(x_in);
        d.out = ptr<void>(out);
        d.scratch = ptr<void>(scratch);
        d.M = M;
        d.positions = pos;
        d.slot_mapping = ptr<const int64_t>(slot_mapping);
        d.cos_sin = ptr<const float>(cos_sin);
        d.cs_stride = cs_stride;
        d.rot_dim = rot_dim;
        d.block_tables = ptr<const int32_t>(block_tables);
        d.bt_stride = bt_stride;
        d.seq_lens = ptr<const int32_t>(seq_lens);
        d.query_start_loc = ptr<const int32_t>(query_start_loc);
        d.num_seqs = num_seqs;
        d.use_gemm = use_gemm;
        py::gil_scoped_release nogil;
        decode_step(d);
      },
      "Every layer of a decode step plus the final norm, in one call (see decode_forward.py)");
}
