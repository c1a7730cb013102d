// Kernel entry points shared by ops.cpp (the Python binding) and the per-ISA files.
//
// Every tensor arrives as a raw pointer plus element strides: the extension links no
// torch C++ API, so one build serves any torch version. Strides count elements, the
// last dimension (head_dim) is always contiguous.
#pragma once

#include <cstdint>

namespace octavo_cpu {

enum DType : int { kF32 = 0, kBF16 = 1 };

// AttnArgs::kernel
enum AttnKernel : int {
  kAttnAuto = 0,  // the blocked kernel where it applies (AVX-512, head_dim 64/96/128/256), else rows
  kAttnRows = 1,  // the per-row kernel everywhere: the portable path, kept as a baseline
};

// Paged varlen GQA attention (causal, or not for encoders), the semantics of octavo.platform.interface:
// request i owns query rows query_start_loc[i]..query_start_loc[i+1] and attends to the
// seq_lens[i] positions of context stored through block_tables[i].
struct AttnArgs {
  void* out;  // [T, num_heads, head_dim], q's dtype
  const void* q;  // [T, num_heads, head_dim]
  const void* kv;  // [2, num_blocks, block_size, num_kv_heads, head_dim] (any strides)
  int64_t q_stride_t, q_stride_h;
  int64_t o_stride_t, o_stride_h;
  int64_t kv_stride_kv, kv_stride_block, kv_stride_tok, kv_stride_head;
  const int32_t* block_tables;  // [num_seqs, max_blocks]
  int64_t bt_stride;
  const int32_t* seq_lens;  // [num_seqs]
  const int32_t* query_start_loc;  // [num_seqs + 1]
  int first_seq, num_seqs;  // requests first_seq .. first_seq + num_seqs - 1
  int num_heads, num_kv_heads, head_dim, block_size;
  float scale;
  int sliding_window;  // <= 0: none
  int causal;  // 1: a query sees positions up to its own; 0: its request's whole context (encoders)
  int q_dtype, kv_dtype;
  int q_tile;  // query tokens of one request handled together (prefill)
  int num_threads;
  int kv_splits;  // split each (tile, KV head) item's keys this many ways; 0 = when threads would idle
  int kernel;  // AttnKernel
};

// slot_mapping[t] < 0 = padding, not stored
struct WriteKvArgs {
  const void* k;  // [T, num_kv_heads, head_dim]
  const void* v;
  int64_t k_stride_t, k_stride_h, v_stride_t, v_stride_h;
  void* kv;  // the cache, strides as in AttnArgs
  int64_t kv_stride_kv, kv_stride_block, kv_stride_tok, kv_stride_head;
  const int64_t* slot_mapping;
  int64_t num_tokens;
  int num_kv_heads, head_dim, block_size;
  int src_dtype, kv_dtype;
  int num_threads;
};

// RMSNorm over rows of `hidden` elements, as the core's default Platform.rms_norm (and
// Hugging Face's Llama): with residual, x = x + residual is rounded to the dtype and
// written to res_out (the new residual stream); the normed row is rounded to the dtype
// before the weight multiplies.
struct RmsNormArgs {
  void* out;  // [rows, hidden], contiguous rows
  const void* x;
  const void* residual;  // nullptr: no residual
  void* res_out;  // [rows, hidden], contiguous rows; may alias residual
  const void* weight;  // [hidden]
  int64_t rows, hidden;
  int64_t x_stride, out_stride, res_stride;
  float eps;
  int dtype, weight_dtype;
  int num_threads;
};

// y = x @ w^T (+ bias) for few rows of x (decode batches): x [M, K] with row stride, w [N, K]
// rows as stored in checkpoints, y [M, N]. x, w, bias and y share one dtype; fp32 sums.
struct LinearArgs {
  void* y;
  const void* x;
  const void* w;
  const void* bias;  // [N] or nullptr
  int64_t M, N, K;
  int64_t x_stride, y_stride, w_stride;  // rows; the last dimension is contiguous
  int dtype;
  int num_threads;
};

// Neox (rotate-half) rotary embedding, in place, as the core's default Platform.rotary:
// q [T, num_q_heads, head_dim] and k [T, num_k_heads, head_dim] with any token and head
// strides (views of the fused qkv output); only the first rot_dim features of a head turn.
struct RotaryArgs {
  void* q;
  void* k;
  int64_t q_stride_t, q_stride_h, k_stride_t, k_stride_h;
  const int64_t* positions;  // [T]
  const float* cos_sin;  // [max_pos, rot_dim]: cos of each frequency, then sin
  int64_t cs_stride;
  int64_t num_tokens;
  int num_q_heads, num_k_heads, rot_dim;
  int dtype;
  int num_threads;
};

// out [rows, d] = silu(x[:, :d]) * x[:, d:], x rows [2d] with a row stride.
struct SiluMulArgs {
  void* out;
  const void* x;
  int64_t rows, d, x_stride, out_stride;
  int dtype;
  int num_threads;
};

// Sampling by inverse CDF, as the core's default Platform.sample: per row, with weights
// w = exp((x - max x) / t), the first token whose cumulative weight exceeds u * sum(w).
// -inf logits weigh 0 and are never drawn.
struct SampleArgs {
  int64_t* out;  // [rows]
  const void* logits;  // [rows, vocab], row stride
  const float* temperatures;  // [rows], or nullptr: 1
  const float* u;  // [rows], in [0, 1)
  int64_t rows, vocab, stride;
  int dtype;
  int num_threads;
};

// y = x @ w^T (+ bias) at any row count, against a weight packed once. Two layouts, each
// ISA's own: bf16 weights where the CPU has AVX512_BF16 use gemm_bf16.h's k-pairs (for
// vdpbf16ps and the AMX tiles); every other weight (bf16 elsewhere, fp32 everywhere) uses
// gemm_fma.h's panels, widened to fp32 in registers. ops.cpp picks by ISA and dtype; a
// weight packed under one ISA level must be packed again to run under another.
struct GemmPackArgs {
  void* out;  // the packed_elems(N, K) of the layout, in the weight's dtype
  const void* w;  // [N, K], row stride w_stride
  int64_t N, K, w_stride;
  int dtype;  // of w, x, bias and y alike
  int num_threads;
};

struct GemmArgs {
  void* y;  // [M, N], row stride y_stride
  const void* x;  // [M, K], row stride x_stride
  const void* w_packed;
  const void* bias;  // [N] or nullptr
  int64_t M, N, K;
  int64_t x_stride, y_stride;
  int dtype;
  int num_threads;
};

#define OCTAVO_DECLARE_KERNELS(ns)               \
  namespace ns {                                 \
  void paged_attention(const AttnArgs& a);       \
  void write_kv(const WriteKvArgs& a);           \
  void rms_norm(const RmsNormArgs& a);           \
  void linear(const LinearArgs& a);              \
  void rotary(const RotaryArgs& a);              \
  void silu_and_mul(const SiluMulArgs& a);       \
  void sample(const SampleArgs& a);              \
  int64_t fgemm_packed_elems(int64_t N, int64_t K); \
  void fgemm_pack(const GemmPackArgs& a);        \
  void fgemm(const GemmArgs& a);                 \
  }

OCTAVO_DECLARE_KERNELS(generic)
OCTAVO_DECLARE_KERNELS(avx2)
OCTAVO_DECLARE_KERNELS(avx512)
OCTAVO_DECLARE_KERNELS(avx512bf16)
OCTAVO_DECLARE_KERNELS(neon)

namespace avx512bf16 {
int64_t gemm_packed_elems(int64_t N, int64_t K);
void gemm_pack(const GemmPackArgs& a);
void gemm(const GemmArgs& a);
}  // namespace avx512bf16

// AMX tiles (kernels_amx.cpp) on gemm_bf16.h's packed layout; rows it does not take (few rows,
// K not a multiple of 32) go to avx512bf16::gemm.
namespace amx {
bool enable();  // asks Linux for the tile state (once per process); false: no AMX here
void gemm(const GemmArgs& a);
}  // namespace amx

}  // namespace octavo_cpu
