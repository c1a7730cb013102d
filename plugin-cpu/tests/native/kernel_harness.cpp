// A standalone test of the kernels, without Python or torch: it builds random inputs, runs
// each kernel of each ISA namespace compiled in (OCTAVO_HARNESS_NEON adds neon:: to
// generic::) and compares with a scalar reference computed here, in double, from the same
// inputs. It exists for the targets we can only emulate: the aarch64 build is cross-compiled
// (aarch64-linux-gnu-g++) and run under qemu-aarch64, where no aarch64 torch is at hand
// (tests/test_cpu_aarch64.py). Exit status 0 when every check passes; each failure prints
// the kernel, ISA, case and worst error.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels.h"

using namespace octavo_cpu;
using bf16 = uint16_t;

namespace {

struct Isa {
  const char* name;
  void (*linear)(const LinearArgs&);
  int64_t (*fgemm_packed_elems)(int64_t, int64_t);
  void (*fgemm_pack)(const GemmPackArgs&);
  void (*fgemm)(const GemmArgs&);
  void (*rms_norm)(const RmsNormArgs&);
  void (*rotary)(const RotaryArgs&);
  void (*silu_and_mul)(const SiluMulArgs&);
  void (*paged_attention)(const AttnArgs&);
  void (*write_kv)(const WriteKvArgs&);
};

#define OCTAVO_HARNESS_ISA(ns)                                                                                \
  Isa {                                                                                                       \
#ns, &ns::linear, &ns::fgemm_packed_elems, &ns::fgemm_pack, &ns::fgemm, &ns::rms_norm, &ns::rotary,       \
        &ns::silu_and_mul, &ns::paged_attention, &ns::write_kv                                                \
  }

int g_failures = 0, g_checks = 0;
std::mt19937 g_rng(1234);

float bf16_to_f32(bf16 h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
bf16 f32_to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return (bf16)(bits >> 16);
}

// a tensor of n values stored as fp32 or bf16; `v` holds the stored values, widened
struct Arr {
  int dtype;
  std::vector<float> f;
  std::vector<bf16> h;
  Arr(int dt, size_t n) : dtype(dt), f(dt == kF32 ? n : 0), h(dt == kBF16 ? n : 0) {}
  void* data() { return dtype == kF32 ? (void*)f.data() : (void*)h.data(); }
  double at(size_t i) const { return dtype == kF32 ? f[i] : bf16_to_f32(h[i]); }
  void set(size_t i, float x) {
    if (dtype == kF32) {
      f[i] = x;
    } else {
      h[i] = f32_to_bf16(x);
    }
  }
  size_t size() const { return dtype == kF32 ? f.size() : h.size(); }
};

Arr randn(int dtype, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  Arr a(dtype, n);
  for (size_t i = 0; i < n; ++i) a.set(i, d(g_rng));
  return a;
}

// |got - want| <= atol + rtol |want| everywhere
void check(const char* what, const Isa& isa, const std::string& tag, const Arr& got, const std::vector<double>& want,
           double atol, double rtol) {
  ++g_checks;
  double worst = 0.0;
  size_t at = 0;
  bool bad = false;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(got.at(i) - want[i]);
    if (!(e <= atol + rtol * std::fabs(want[i]))) bad = true;
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  if (bad) {
    ++g_failures;
    printf("FAIL %s [%s] %s: worst |error| %g at %zu (got %g, want %g)\n", what, isa.name, tag.c_str(), worst, at,
           got.at(at), want[at]);
  }
}

double tol(int dtype) { return dtype == kF32 ? 1e-4 : 1.6e-2; }
const char* dname(int dtype) { return dtype == kF32 ? "f32" : "bf16"; }

// y = x @ w^T + bias on the GEMV and on the packed GEMM
void test_linears(const Isa& isa) {
  const int shapes[][3] = {{1, 1, 1}, {1, 64, 48}, {3, 33, 17}, {5, 100, 70}, {8, 7, 129}, {13, 64, 40}, {40, 96, 80}};
  for (int dtype : {kF32, kBF16})
    for (auto& s : shapes)
      for (int with_bias = 0; with_bias < 2; ++with_bias) {
        const int M = s[0], K = s[1], N = s[2];
        Arr x = randn(dtype, (size_t)M * K), w = randn(dtype, (size_t)N * K, 1.0f / std::sqrt((float)K));
        Arr b = randn(dtype, N);
        std::vector<double> want((size_t)M * N);
        for (int m = 0; m < M; ++m)
          for (int n = 0; n < N; ++n) {
            double acc = with_bias ? b.at(n) : 0.0;
            for (int k = 0; k < K; ++k) acc += x.at((size_t)m * K + k) * w.at((size_t)n * K + k);
            want[(size_t)m * N + n] = acc;
          }
        const std::string tag = std::string(dname(dtype)) + " M" + std::to_string(M) + " K" + std::to_string(K) +
                                " N" + std::to_string(N) + (with_bias ? " bias" : "");
        Arr y(dtype, (size_t)M * N);
        LinearArgs la{};
        la.y = y.data();
        la.x = x.data();
        la.w = w.data();
        la.bias = with_bias ? b.data() : nullptr;
        la.M = M;
        la.N = N;
        la.K = K;
        la.x_stride = K;
        la.y_stride = N;
        la.w_stride = K;
        la.dtype = dtype;
        la.num_threads = 2;
        isa.linear(la);
        check("linear", isa, tag, y, want, tol(dtype), tol(dtype));

        Arr packed(dtype, (size_t)isa.fgemm_packed_elems(N, K));
        GemmPackArgs pa{};
        pa.out = packed.data();
        pa.w = w.data();
        pa.N = N;
        pa.K = K;
        pa.w_stride = K;
        pa.dtype = dtype;
        pa.num_threads = 2;
        isa.fgemm_pack(pa);
        Arr y2(dtype, (size_t)M * N);
        GemmArgs ga{};
        ga.y = y2.data();
        ga.x = x.data();
        ga.w_packed = packed.data();
        ga.bias = with_bias ? b.data() : nullptr;
        ga.M = M;
        ga.N = N;
        ga.K = K;
        ga.x_stride = K;
        ga.y_stride = N;
        ga.dtype = dtype;
        ga.num_threads = 2;
        isa.fgemm(ga);
        check("gemm", isa, tag, y2, want, tol(dtype), tol(dtype));
      }
}

// RMSNorm with the residual add: the sum and the normed row rounded to the dtype, as the kernel's contract says
void test_rms_norm(const Isa& isa) {
  for (int dtype : {kF32, kBF16})
    for (int H : {8, 37, 576}) {
      const int rows = 5;
      Arr x = randn(dtype, (size_t)rows * H), res = randn(dtype, (size_t)rows * H), w = randn(dtype, H);
      Arr out(dtype, (size_t)rows * H), res_out(dtype, (size_t)rows * H), sum(dtype, (size_t)rows * H);
      std::vector<double> want((size_t)rows * H), want_res((size_t)rows * H);
      for (int r = 0; r < rows; ++r) {
        double ss = 0.0;
        for (int i = 0; i < H; ++i) {
          const size_t j = (size_t)r * H + i;
          sum.set(j, (float)(x.at(j) + res.at(j)));  // rounded to the dtype
          want_res[j] = sum.at(j);
          ss += sum.at(j) * sum.at(j);
        }
        const double inv = 1.0 / std::sqrt(ss / H + 1e-6);
        for (int i = 0; i < H; ++i) {
          const size_t j = (size_t)r * H + i;
          Arr normed(dtype, 1);
          normed.set(0, (float)(sum.at(j) * inv));
          want[j] = normed.at(0) * w.at(i);
        }
      }
      RmsNormArgs a{};
      a.out = out.data();
      a.x = x.data();
      a.residual = res.data();
      a.res_out = res_out.data();
      a.weight = w.data();
      a.rows = rows;
      a.hidden = H;
      a.x_stride = a.out_stride = a.res_stride = H;
      a.eps = 1e-6f;
      a.dtype = a.weight_dtype = dtype;
      a.num_threads = 2;
      isa.rms_norm(a);
      const std::string tag = std::string(dname(dtype)) + " H" + std::to_string(H);
      check("rms_norm", isa, tag, out, want, tol(dtype), tol(dtype));
      check("rms_norm residual", isa, tag, res_out, want_res, 0.0, 0.0);
    }
}

void test_rotary_and_silu(const Isa& isa) {
  for (int dtype : {kF32, kBF16}) {
    const int T = 3, Hq = 4, Hk = 2, D = 20, rot = 12, max_pos = 16;
    Arr q = randn(dtype, (size_t)T * Hq * D), k = randn(dtype, (size_t)T * Hk * D);
    std::vector<float> cs((size_t)max_pos * rot);
    for (int p = 0; p < max_pos; ++p)
      for (int i = 0; i < rot / 2; ++i) {
        const double f = p * std::pow(10000.0, -2.0 * i / rot);
        cs[(size_t)p * rot + i] = (float)std::cos(f);
        cs[(size_t)p * rot + rot / 2 + i] = (float)std::sin(f);
      }
    const int64_t pos[T] = {0, 7, 15};
    auto expect = [&](const Arr& x, int H) {
      std::vector<double> want(x.size());
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < H; ++h) {
          const size_t b = ((size_t)t * H + h) * D;
          const float* c = cs.data() + pos[t] * rot;
          for (int i = 0; i < D; ++i) want[b + i] = x.at(b + i);
          for (int i = 0; i < rot / 2; ++i) {
            const double x1 = x.at(b + i), x2 = x.at(b + rot / 2 + i);
            want[b + i] = x1 * c[i] - x2 * c[rot / 2 + i];
            want[b + rot / 2 + i] = x2 * c[i] + x1 * c[rot / 2 + i];
          }
        }
      return want;
    };
    const std::vector<double> wq = expect(q, Hq), wk = expect(k, Hk);
    RotaryArgs a{};
    a.q = q.data();
    a.k = k.data();
    a.q_stride_t = Hq * D;
    a.q_stride_h = D;
    a.k_stride_t = Hk * D;
    a.k_stride_h = D;
    a.positions = pos;
    a.cos_sin = cs.data();
    a.cs_stride = rot;
    a.num_tokens = T;
    a.num_q_heads = Hq;
    a.num_k_heads = Hk;
    a.rot_dim = rot;
    a.dtype = dtype;
    a.num_threads = 2;
    isa.rotary(a);
    check("rotary q", isa, dname(dtype), q, wq, tol(dtype), tol(dtype));
    check("rotary k", isa, dname(dtype), k, wk, tol(dtype), tol(dtype));

    const int rows = 3, d = 19;
    Arr x = randn(dtype, (size_t)rows * 2 * d, 3.0f), out(dtype, (size_t)rows * d);
    std::vector<double> want((size_t)rows * d);
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < d; ++i) {
        const double g = x.at((size_t)r * 2 * d + i), u = x.at((size_t)r * 2 * d + d + i);
        want[(size_t)r * d + i] = g / (1.0 + std::exp(-g)) * u;
      }
    SiluMulArgs s{};
    s.out = out.data();
    s.x = x.data();
    s.rows = rows;
    s.d = d;
    s.x_stride = 2 * d;
    s.out_stride = d;
    s.dtype = dtype;
    s.num_threads = 2;
    isa.silu_and_mul(s);
    check("silu_and_mul", isa, dname(dtype), out, want, tol(dtype), tol(dtype));
  }
}

// write_kv into a paged cache, then causal GQA attention of a decode and a prefill chunk
void test_attention(const Isa& isa) {
  for (int dtype : {kF32, kBF16})
    for (int D : {16, 64}) {
      const int Hq = 4, Hk = 2, bs = 4, blocks = 16, G = Hq / Hk;
      // request 0: decode of its 11th token; request 1: 5 tokens after 2 cached
      const int32_t seq_lens[2] = {11, 7}, qsl[3] = {0, 1, 6};
      const int32_t tables[2][4] = {{3, 9, 1, 0}, {12, 5, 0, 0}};
      const int T = 6;
      const int64_t kv_elems = 2LL * blocks * bs * Hk * D;
      Arr kv(dtype, (size_t)kv_elems);
      // every position of both requests written through write_kv, slot = block * bs + offset
      for (int r = 0; r < 2; ++r) {
        Arr k = randn(dtype, (size_t)seq_lens[r] * Hk * D), v = randn(dtype, (size_t)seq_lens[r] * Hk * D);
        std::vector<int64_t> slots(seq_lens[r]);
        for (int p = 0; p < seq_lens[r]; ++p) slots[p] = (int64_t)tables[r][p / bs] * bs + p % bs;
        WriteKvArgs w{};
        w.k = k.data();
        w.v = v.data();
        w.k_stride_t = w.v_stride_t = Hk * D;
        w.k_stride_h = w.v_stride_h = D;
        w.kv = kv.data();
        w.kv_stride_kv = (int64_t)blocks * bs * Hk * D;
        w.kv_stride_block = (int64_t)bs * Hk * D;
        w.kv_stride_tok = (int64_t)Hk * D;
        w.kv_stride_head = D;
        w.slot_mapping = slots.data();
        w.num_tokens = seq_lens[r];
        w.num_kv_heads = Hk;
        w.head_dim = D;
        w.block_size = bs;
        w.src_dtype = w.kv_dtype = dtype;
        w.num_threads = 2;
        isa.write_kv(w);
        std::vector<double> want_k(k.size());
        Arr got(dtype, k.size());
        for (int p = 0; p < seq_lens[r]; ++p)
          for (int i = 0; i < Hk * D; ++i) {
            want_k[(size_t)p * Hk * D + i] = k.at((size_t)p * Hk * D + i);
            got.set((size_t)p * Hk * D + i, (float)kv.at((size_t)slots[p] * Hk * D + i));
          }
        check("write_kv", isa, dname(dtype), got, want_k, 0.0, 0.0);
      }
      Arr q = randn(dtype, (size_t)T * Hq * D), out(dtype, (size_t)T * Hq * D);
      const double scale = 1.0 / std::sqrt((double)D);
      std::vector<double> want((size_t)T * Hq * D, 0.0);
      for (int r = 0; r < 2; ++r) {
        const int qlen = qsl[r + 1] - qsl[r];
        for (int t = 0; t < qlen; ++t) {
          const int own = seq_lens[r] - qlen + t;  // the query's position: it sees 0..own
          for (int h = 0; h < Hq; ++h) {
            const int kvh = h / G;
            std::vector<double> s(own + 1);
            double mx = -1e300, sum = 0.0;
            for (int p = 0; p <= own; ++p) {
              const size_t kb = ((size_t)tables[r][p / bs] * bs + p % bs) * Hk * D + (size_t)kvh * D;
              double dot = 0.0;
              for (int i = 0; i < D; ++i) dot += q.at(((size_t)(qsl[r] + t) * Hq + h) * D + i) * kv.at(kb + i);
              s[p] = dot * scale;
              mx = s[p] > mx ? s[p] : mx;
            }
            for (int p = 0; p <= own; ++p) sum += (s[p] = std::exp(s[p] - mx));
            for (int p = 0; p <= own; ++p) {
              const size_t vb = (size_t)kv_elems / 2 + ((size_t)tables[r][p / bs] * bs + p % bs) * Hk * D +
                                (size_t)kvh * D;
              for (int i = 0; i < D; ++i) want[((size_t)(qsl[r] + t) * Hq + h) * D + i] += s[p] / sum * kv.at(vb + i);
            }
          }
        }
      }
      AttnArgs a{};
      a.out = out.data();
      a.q = q.data();
      a.kv = kv.data();
      a.q_stride_t = a.o_stride_t = Hq * D;
      a.q_stride_h = a.o_stride_h = D;
      a.kv_stride_kv = (int64_t)blocks * bs * Hk * D;
      a.kv_stride_block = (int64_t)bs * Hk * D;
      a.kv_stride_tok = (int64_t)Hk * D;
      a.kv_stride_head = D;
      a.block_tables = &tables[0][0];
      a.bt_stride = 4;
      a.seq_lens = seq_lens;
      a.query_start_loc = qsl;
      a.first_seq = 0;
      a.num_seqs = 2;
      a.num_heads = Hq;
      a.num_kv_heads = Hk;
      a.head_dim = D;
      a.block_size = bs;
      a.scale = (float)scale;
      a.q_dtype = a.kv_dtype = dtype;
      a.q_tile = 2;
      a.num_threads = 2;
      a.kernel = kAttnAuto;
      a.causal = 1;
      isa.paged_attention(a);
      check("paged_attention", isa, std::string(dname(dtype)) + " D" + std::to_string(D), out, want, tol(dtype),
            tol(dtype));
    }
}

}  // namespace

int main() {
  std::vector<Isa> isas = {OCTAVO_HARNESS_ISA(generic)};
#ifdef OCTAVO_HARNESS_NEON
  isas.push_back(OCTAVO_HARNESS_ISA(neon));
#endif
  for (const Isa& isa : isas) {
    test_linears(isa);
    test_rms_norm(isa);
    test_rotary_and_silu(isa);
    test_attention(isa);
  }
  printf("%d of %d checks failed (ISAs:", g_failures, g_checks);
  for (const Isa& isa : isas) printf(" %s", isa.name);
  printf(")\n");
  return g_failures ? 1 : 0;
}
