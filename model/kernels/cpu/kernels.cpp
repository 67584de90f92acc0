// CPU kernels of the engine, registered as torch custom ops (namespace model_kernels): the
// Mamba mixer (scan, conv, fused decode step), quantised and fp32 matvecs, RMSNorm, RoPE, and
// for decode a one-token attention, a whole Llama-family layer and Jamba's Mamba and MoE
// sublayers. The PyTorch references in
// model/kernels/*.py are the specification; tests compare every op here against them.
//
// Glossary: Bt batch, ED channels (d_inner), N state size, L length, K conv width, R dt_rank.
//
// Design notes
// - The state and all arithmetic are fp32; inputs may be fp32 or bf16 (converted on load).
// - Vectorisation is left to the compiler (-O3 -march=native, `#pragma omp simd`) on loops
//   written for it: the selective scan puts CB = 16 *channels* in the SIMD lanes (Jamba's B/C
//   are shared by all channels, so each step needs only broadcasts, no horizontal sums), and
//   the exp/log needed in the lanes are small polynomial functions the compiler can inline
//   (libm's expf would not vectorise without -ffast-math, which we avoid).
// - The scan is chunked over the sequence (TCHUNK steps): the per-chunk buffers of one channel
//   block stay in L1 however long the input is. Work is split over (batch, channel block)
//   with at::parallel_for (OpenMP), so torch.set_num_threads governs it. Decode-sized work
//   (a few microseconds) uses large grains and stays on one thread: waking a second thread
//   costs more than it saves, and on an oversubscribed machine a parallel region waits for a
//   descheduled thread for a whole time slice.
// - Inputs may be strided (e.g. the (Bt, L, ED) output of in_proj seen as (Bt, ED, L)): the
//   gathers into the chunk buffers use strides, which costs ~1/N of the exp work.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#if defined(__SSE__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using at::Tensor;

constexpr int64_t CB = 16;       // channels per SIMD block (one AVX-512 register of fp32)
constexpr int64_t TCHUNK = 128;  // sequence steps per chunk of the scan

// ---------------------------------------------------------------------------------------
// Vectorisable math. exp: Cody-Waite range reduction x = n ln2 + r, degree-6 polynomial for
// e^r on |r| <= ln2/2 (max rel. error ~1e-7), times 2^n built in the exponent bits.
// ---------------------------------------------------------------------------------------
inline __attribute__((always_inline)) float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// log(1 + y) for y in [0, 1], as 2 atanh(s) with s = y / (2 + y) in [0, 1/3]: no cancellation
// for tiny y, and the odd series to s^17 is accurate to ~1e-9.
inline __attribute__((always_inline)) float log1p_unit(float y) {
  const float s = y / (2.0f + y);
  const float s2 = s * s;
  float q = 1.0f / 17.0f;
  q = q * s2 + 1.0f / 15.0f;
  q = q * s2 + 1.0f / 13.0f;
  q = q * s2 + 1.0f / 11.0f;
  q = q * s2 + 1.0f / 9.0f;
  q = q * s2 + 1.0f / 7.0f;
  q = q * s2 + 1.0f / 5.0f;
  q = q * s2 + 1.0f / 3.0f;
  q = q * s2 + 1.0f;
  return 2.0f * s * q;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); equals torch's thresholded softplus to fp32
// rounding (for x > 20 the correction is below half an ulp of x).
inline __attribute__((always_inline)) float softplus(float x) {
  return std::max(x, 0.0f) + log1p_unit(fast_exp(-std::fabs(x)));
}

inline __attribute__((always_inline)) float silu(float x) { return x / (1.0f + fast_exp(-x)); }

// Flush denormals to zero (FTZ/DAZ) while a kernel runs on this thread, restoring the caller's
// mode after. Why: GCC vectorises silu's clamped branches by computing all of them for every
// lane, and x / (1 + e^88) is a denormal for ordinary x: each denormal costs a ~100-cycle
// microcode assist on x86, which made silu 4x slower. Values below 1e-38 are zero here anyway.
struct FlushDenormals {
#if defined(__SSE__)
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

template <typename T>
inline float ld(const T* p) {
  return static_cast<float>(*p);
}

// Small per-channel parameters (A, D, biases, norm weights) as contiguous fp32; optional ones
// become an empty tensor. Converting costs nothing when they already are fp32 and contiguous.
Tensor f32(const Tensor& t) {  // no dispatcher round trip in the common case (per-token calls)
  return t.scalar_type() == at::kFloat && t.is_contiguous() ? t : t.to(at::kFloat).contiguous();
}
Tensor f32(const std::optional<Tensor>& t) { return t.has_value() ? f32(*t) : Tensor(); }
const float* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "model_kernels: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16,
              "model_kernels: ", name, " must be float32 or bfloat16, got ", t.scalar_type());
}

// A (Bt, ED, L) tensor seen through its strides.
template <typename T>
struct Seq3 {
  const T* data;
  int64_t sb, sd, st;
  explicit Seq3(const Tensor& t)
      : data(t.data_ptr<T>()), sb(t.stride(0)), sd(t.stride(1)), st(t.stride(2)) {}
  const T* at(int64_t b, int64_t d, int64_t t) const { return data + b * sb + d * sd + t * st; }
};

// A chunk of CB channels x tc steps between a (Bt, ED, L) sequence and a [t][c] buffer; the
// lanes of channels past nc read as 0. The loops follow the sequence's memory: along t when
// its steps are contiguous (one stream per channel, not CB interleaved ones: as strided scalar
// stores into a fresh output those cost a quarter of the scan's time), else along c.
template <typename T>
void gather_chunk(const Seq3<T>& src, int64_t b, int64_t d0, int64_t nc, int64_t t0, int64_t tc,
                  float* buf) {
  if (nc < CB) std::fill(buf, buf + tc * CB, 0.0f);
  if (src.st == 1) {
    for (int64_t c = 0; c < nc; ++c) {
      const T* row = src.at(b, d0 + c, t0);
      for (int64_t t = 0; t < tc; ++t) buf[t * CB + c] = ld(row + t);
    }
  } else {
    for (int64_t t = 0; t < tc; ++t)
      for (int64_t c = 0; c < nc; ++c) buf[t * CB + c] = ld(src.at(b, d0 + c, t0 + t));
  }
}

template <typename T>
void scatter_chunk(const float* buf, int64_t b, int64_t d0, int64_t nc, int64_t t0, int64_t tc,
                   Seq3<T>& dst) {
  if (dst.st == 1) {
    for (int64_t c = 0; c < nc; ++c) {
      T* row = const_cast<T*>(dst.at(b, d0 + c, t0));
      for (int64_t t = 0; t < tc; ++t) row[t] = static_cast<T>(buf[t * CB + c]);
    }
  } else {
    for (int64_t t = 0; t < tc; ++t)
      for (int64_t c = 0; c < nc; ++c)
        *const_cast<T*>(dst.at(b, d0 + c, t0 + t)) = static_cast<T>(buf[t * CB + c]);
  }
}

// An output of shape (Bt, ED, L) in the same layout family as `like`: channel-last memory when
// `like` is channel-contiguous (the in_proj output seen transposed), else standard contiguous.
Tensor empty_seq_like(const Tensor& like, at::ScalarType dtype) {
  const auto opts = like.options().dtype(dtype);
  if (like.stride(1) == 1 && like.size(2) > 1) {
    return at::empty({like.size(0), like.size(2), like.size(1)}, opts).transpose(1, 2);
  }
  return at::empty(like.sizes(), opts);
}

// One chunk of the recurrence for a block of CB channels (lane c = channel d0 + c):
//   h[n] = exp(dt * a[n]) * h[n] + du * B_t[n];   y_t = sum_n h[n] * C_t[n]
// dt, du, y are [tc][CB]; Brows, Crows [tc][N] (shared by all channels); a, h [N][CB].
// NS > 0 fixes N at compile time so that, with AVX-512, the whole state block lives in NS
// registers; NS = 0 is the portable version for any N.
#if defined(__AVX512F__)
inline __attribute__((always_inline)) __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);  // p * 2^n
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
// fast_exp on 8 lanes: the same polynomial and range reduction (the last step fused, so a
// result can differ from fast_exp's by an ulp; NaN inputs are not propagated).
inline __attribute__((always_inline)) __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// 2^x on 8 lanes, for the scan's decay, whose exponent is scaled by log2(e) once per step, not
// once per state: the rounding by adding 1.5 * 2^23 (+127, the exponent bias) leaves round(x)
// + 127 in the low mantissa bits, so shifting them up by 23 builds 2^round(x) directly; a
// degree-6 Taylor polynomial gives 2^f on |f| <= 1/2 (rel. error < 1.2e-7). 13 instructions
// against exp256's 18: the scan's inner loop ran 1.4x faster (one thread, 1536 channels x 512
// steps). Inputs are clamped to [-126, 127]: 2^-126 (~1e-38) stands in for anything smaller.
inline __attribute__((always_inline)) __m256 exp2_256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-126.0f)), _mm256_set1_ps(127.0f));
  const __m256 magic = _mm256_set1_ps(12582912.0f + 127.0f);  // 1.5 * 2^23 + 127
  const __m256 j = _mm256_add_ps(x, magic);
  const __m256 f = _mm256_sub_ps(x, _mm256_sub_ps(j, magic));  // x - round(x)
  __m256 p = _mm256_set1_ps(1.5403530393381609e-4f);  // ln2^k / k!, k = 6 .. 0
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291076284772e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504108664821580e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022650695910071e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718055994531e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_castps_si256(j), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

inline float hsum256(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// 8 consecutive values as fp32. Half-precision storage is widened in registers as it is
// loaded: an fp16 KV cache (F16C, one instruction) and bf16 weights (the top 16 bits of an
// fp32, so widening is exact: zero-extend and shift).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
#if defined(__F16C__)
inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
constexpr bool kHalfSimd = true;
#else
inline __m256 load8(const at::Half*) { return _mm256_setzero_ps(); }  // never called
constexpr bool kHalfSimd = false;
#endif
#endif

template <int NS>
void scan_chunk(const float* dt, const float* du, const float* Brows, const float* Crows,
                int64_t tc, int64_t n_state, const float* a, float* h, float* y) {
#if defined(__AVX512F__)
  static_assert(CB == 16, "the AVX-512 path holds 16 fp32 channels per register");
  if constexpr (NS > 0) {
    __m512 hv[NS];
    for (int n = 0; n < NS; ++n) hv[n] = _mm512_loadu_ps(h + n * CB);
    for (int64_t t = 0; t < tc; ++t) {
      const __m512 d = _mm512_loadu_ps(dt + t * CB), w = _mm512_loadu_ps(du + t * CB);
      const float* Bn = Brows + t * NS;
      const float* Cn = Crows + t * NS;
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
#pragma GCC unroll 16
      for (int n = 0; n < NS; ++n) {
        const __m512 e = exp512(_mm512_mul_ps(d, _mm512_loadu_ps(a + n * CB)));
        hv[n] = _mm512_fmadd_ps(e, hv[n], _mm512_mul_ps(w, _mm512_set1_ps(Bn[n])));
        if (n % 2 == 0) {
          acc0 = _mm512_fmadd_ps(hv[n], _mm512_set1_ps(Cn[n]), acc0);
        } else {
          acc1 = _mm512_fmadd_ps(hv[n], _mm512_set1_ps(Cn[n]), acc1);
        }
      }
      _mm512_storeu_ps(y + t * CB, _mm512_add_ps(acc0, acc1));
    }
    for (int n = 0; n < NS; ++n) _mm512_storeu_ps(h + n * CB, hv[n]);
    return;
  }
#elif defined(__AVX2__) && defined(__FMA__)
  // AVX2: the CB = 16 channels are two 8-lane halves; the state block stays in L1 (16 x 2
  // registers would not fit in AVX2's 16), the output sums stay in registers.
  static_assert(CB == 16, "the AVX2 path holds 16 fp32 channels in two registers");
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  for (int64_t t = 0; t < tc; ++t) {
    // exp(dt a) = 2^((dt log2 e) a): the scaling once per step, exp2_256 per state.
    const __m256 d0 = _mm256_mul_ps(_mm256_loadu_ps(dt + t * CB), log2e);
    const __m256 d1 = _mm256_mul_ps(_mm256_loadu_ps(dt + t * CB + 8), log2e);
    const __m256 w0 = _mm256_loadu_ps(du + t * CB), w1 = _mm256_loadu_ps(du + t * CB + 8);
    const float* Bn = Brows + t * n_state;
    const float* Cn = Crows + t * n_state;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t n = 0; n < n_state; ++n) {
      float* hn = h + n * CB;
      const float* an = a + n * CB;
      const __m256 bn = _mm256_set1_ps(Bn[n]), cn = _mm256_set1_ps(Cn[n]);
      const __m256 e0 = exp2_256(_mm256_mul_ps(d0, _mm256_loadu_ps(an)));
      const __m256 e1 = exp2_256(_mm256_mul_ps(d1, _mm256_loadu_ps(an + 8)));
      const __m256 h0 = _mm256_fmadd_ps(e0, _mm256_loadu_ps(hn), _mm256_mul_ps(w0, bn));
      const __m256 h1 = _mm256_fmadd_ps(e1, _mm256_loadu_ps(hn + 8), _mm256_mul_ps(w1, bn));
      _mm256_storeu_ps(hn, h0);
      _mm256_storeu_ps(hn + 8, h1);
      acc0 = _mm256_fmadd_ps(h0, cn, acc0);
      acc1 = _mm256_fmadd_ps(h1, cn, acc1);
    }
    _mm256_storeu_ps(y + t * CB, acc0);
    _mm256_storeu_ps(y + t * CB + 8, acc1);
  }
  return;
#endif
  for (int64_t t = 0; t < tc; ++t) {
    const float* dtr = dt + t * CB;
    const float* dur = du + t * CB;
    float acc[CB] = {0.0f};
    for (int64_t n = 0; n < n_state; ++n) {
      const float bn = Brows[t * n_state + n], cn = Crows[t * n_state + n];
      float* hn = h + n * CB;
      const float* an = a + n * CB;
#pragma omp simd
      for (int64_t c = 0; c < CB; ++c) {
        const float hv = fast_exp(dtr[c] * an[c]) * hn[c] + dur[c] * bn;
        hn[c] = hv;
        acc[c] += hv * cn;
      }
    }
#pragma omp simd
    for (int64_t c = 0; c < CB; ++c) y[t * CB + c] = acc[c];
  }
}

// ---------------------------------------------------------------------------------------
// Selective scan (prefill).
// ---------------------------------------------------------------------------------------
template <typename T>
void selective_scan_kernel(const Tensor& u, const Tensor& delta, const Tensor& A_t,
                           const Tensor& Bt_t, const Tensor& Ct_t, const Tensor& D_t,
                           const Tensor& z, const Tensor& bias_t, bool use_softplus,
                           const Tensor& h0_t, Tensor& out, Tensor& hT) {
  const int64_t batch = u.size(0), channels = u.size(1), length = u.size(2);
  const int64_t n_state = A_t.size(1);
  const int64_t n_blocks = (channels + CB - 1) / CB;
  const Seq3<T> U(u), DL(delta);
  const bool has_z = z.defined();
  const Seq3<T> Z(has_z ? z : u);
  Seq3<T> O(out);
  const float* A = A_t.data_ptr<float>();
  const float* Bt = Bt_t.data_ptr<float>();  // (Bt, L, N): one row of N per step
  const float* Ct = Ct_t.data_ptr<float>();
  const float* Dp = ptr_or_null(D_t);
  const float* bias = ptr_or_null(bias_t);
  const float* h0 = ptr_or_null(h0_t);
  float* hout = hT.data_ptr<float>();

  at::parallel_for(0, batch * n_blocks, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    std::vector<float> h(n_state * CB), a(n_state * CB);
    std::vector<float> dt(TCHUNK * CB), du(TCHUNK * CB), uu(TCHUNK * CB), zz(TCHUNK * CB),
        yy(TCHUNK * CB);
    float blk_bias[CB], blk_D[CB];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_blocks, d0 = (task % n_blocks) * CB;
      const int64_t nc = std::min(CB, channels - d0);
      // Block parameters, transposed so lane c holds channel d0 + c; padded lanes get A = 0,
      // dt = 0 and never reach memory.
      for (int64_t n = 0; n < n_state; ++n)
        for (int64_t c = 0; c < CB; ++c) {
          a[n * CB + c] = c < nc ? A[(d0 + c) * n_state + n] : 0.0f;
          h[n * CB + c] = (c < nc && h0) ? h0[(b * channels + d0 + c) * n_state + n] : 0.0f;
        }
      for (int64_t c = 0; c < CB; ++c) {
        blk_bias[c] = (c < nc && bias) ? bias[d0 + c] : 0.0f;
        blk_D[c] = (c < nc && Dp) ? Dp[d0 + c] : 0.0f;
      }
      for (int64_t t0 = 0; t0 < length; t0 += TCHUNK) {
        const int64_t tc = std::min(TCHUNK, length - t0);
        // Gather u, delta (and z) for the chunk into [t][c] buffers.
        gather_chunk(DL, b, d0, nc, t0, tc, dt.data());
        gather_chunk(U, b, d0, nc, t0, tc, uu.data());
        const int64_t total = tc * CB;
        for (int64_t t = 0; t < tc; ++t) {
#pragma omp simd
          for (int64_t c = 0; c < CB; ++c) dt[t * CB + c] += blk_bias[c];
        }
        if (use_softplus) {
#pragma omp simd
          for (int64_t i = 0; i < total; ++i) dt[i] = softplus(dt[i]);
        }
#pragma omp simd
        for (int64_t i = 0; i < total; ++i) du[i] = dt[i] * uu[i];
        const float* Brows = Bt + (b * length + t0) * n_state;
        const float* Crows = Ct + (b * length + t0) * n_state;
        if (n_state == 16) {
          scan_chunk<16>(dt.data(), du.data(), Brows, Crows, tc, 16, a.data(), h.data(), yy.data());
        } else {
          scan_chunk<0>(dt.data(), du.data(), Brows, Crows, tc, n_state, a.data(), h.data(),
                        yy.data());
        }
        for (int64_t t = 0; t < tc; ++t) {
#pragma omp simd
          for (int64_t c = 0; c < CB; ++c) yy[t * CB + c] += blk_D[c] * uu[t * CB + c];
        }
        if (has_z) {
          gather_chunk(Z, b, d0, nc, t0, tc, zz.data());
#pragma omp simd
          for (int64_t i = 0; i < total; ++i) yy[i] *= silu(zz[i]);
        }
        scatter_chunk(yy.data(), b, d0, nc, t0, tc, O);
      }
      for (int64_t c = 0; c < nc; ++c)
        for (int64_t n = 0; n < n_state; ++n)
          hout[(b * channels + d0 + c) * n_state + n] = h[n * CB + c];
    }
  });
}

std::tuple<Tensor, Tensor> selective_scan_fwd(
    const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const std::optional<Tensor>& D, const std::optional<Tensor>& z,
    const std::optional<Tensor>& delta_bias, bool delta_softplus,
    const std::optional<Tensor>& initial_state) {
  check_cpu(u, "u");
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan: u, delta must be (Bt, ED, L)");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1), "selective_scan: A must be (ED, N)");
  const int64_t batch = u.size(0), channels = u.size(1), length = u.size(2), n_state = A.size(1);
  TORCH_CHECK(B.dim() == 3 && B.size(0) == batch && B.size(1) == n_state && B.size(2) == length,
              "selective_scan: B must be (Bt, N, L)");
  TORCH_CHECK(C.sizes() == B.sizes(), "selective_scan: C must be (Bt, N, L)");
  const Tensor dl = delta.scalar_type() == u.scalar_type() ? delta : delta.to(u.scalar_type());
  Tensor zz;
  if (z.has_value()) {
    TORCH_CHECK(z->sizes() == u.sizes(), "selective_scan: z must be (Bt, ED, L)");
    zz = z->scalar_type() == u.scalar_type() ? *z : z->to(u.scalar_type());
  }
  Tensor h0;
  if (initial_state.has_value()) {
    TORCH_CHECK(initial_state->dim() == 3 && initial_state->size(0) == batch &&
                    initial_state->size(1) == channels && initial_state->size(2) == n_state,
                "selective_scan: initial_state must be (Bt, ED, N)");
    h0 = f32(*initial_state);
  }
  // (Bt, N, L) -> (Bt, L, N) fp32: each step reads one contiguous row shared by all channels.
  const Tensor Bt = B.transpose(1, 2).to(at::kFloat).contiguous();
  const Tensor Ct = C.transpose(1, 2).to(at::kFloat).contiguous();
  Tensor out = empty_seq_like(u, u.scalar_type());
  Tensor hT = at::empty({batch, channels, n_state}, u.options().dtype(at::kFloat));
  const Tensor Af = f32(A), Df = f32(D), bf = f32(delta_bias);
  if (u.scalar_type() == at::kFloat) {
    selective_scan_kernel<float>(u, dl, Af, Bt, Ct, Df, zz, bf, delta_softplus, h0, out, hT);
  } else {
    selective_scan_kernel<at::BFloat16>(u, dl, Af, Bt, Ct, Df, zz, bf, delta_softplus, h0, out, hT);
  }
  return {out, hT};
}

// ---------------------------------------------------------------------------------------
// Causal depthwise conv1d (prefill) and its decode step.
// ---------------------------------------------------------------------------------------
template <typename T>
void causal_conv1d_kernel(const Tensor& x, const Tensor& w_t, const Tensor& bias_t,
                          const Tensor& init, bool use_silu, Tensor& out, Tensor& final_state) {
  const int64_t batch = x.size(0), channels = x.size(1), length = x.size(2);
  const int64_t width = w_t.size(1), hist = width - 1;
  const Seq3<T> X(x);
  Seq3<T> O(out);
  const bool has_init = init.defined();
  const Seq3<T> I(has_init ? init : x);
  const float* w = w_t.data_ptr<float>();
  const float* bias = ptr_or_null(bias_t);
  T* fs = final_state.data_ptr<T>();
  at::parallel_for(0, batch * channels, 16, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    std::vector<float> buf(hist + length), y(length);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / channels, d = row % channels;
      for (int64_t k = 0; k < hist; ++k) buf[k] = has_init ? ld(I.at(b, d, k)) : 0.0f;
      float* xin = buf.data() + hist;
      const T* src = X.at(b, d, 0);
      if (X.st == 1) {  // the usual (Bt, ED, L) rows: contiguous, vectorised
#pragma omp simd
        for (int64_t t = 0; t < length; ++t) xin[t] = ld(src + t);
      } else {
        for (int64_t t = 0; t < length; ++t) xin[t] = ld(src + t * X.st);
      }
      const float* wd = w + d * width;
      const float b0 = bias ? bias[d] : 0.0f;
      if (width == 4) {  // Mamba's d_conv: all taps in one pass
        const float w0 = wd[0], w1 = wd[1], w2 = wd[2], w3 = wd[3];
        const float* in = buf.data();
#pragma omp simd
        for (int64_t t = 0; t < length; ++t)
          y[t] = b0 + w0 * in[t] + w1 * in[t + 1] + w2 * in[t + 2] + w3 * in[t + 3];
      } else {
#pragma omp simd
        for (int64_t t = 0; t < length; ++t) y[t] = b0;
        for (int64_t k = 0; k < width; ++k) {
          const float wk = wd[k];
          const float* in = buf.data() + k;
#pragma omp simd
          for (int64_t t = 0; t < length; ++t) y[t] += wk * in[t];
        }
      }
      if (use_silu) {
#pragma omp simd
        for (int64_t t = 0; t < length; ++t) y[t] = silu(y[t]);
      }
      T* dst = const_cast<T*>(O.at(b, d, 0));
      if (O.st == 1) {
#pragma omp simd
        for (int64_t t = 0; t < length; ++t) dst[t] = static_cast<T>(y[t]);
      } else {
        for (int64_t t = 0; t < length; ++t) dst[t * O.st] = static_cast<T>(y[t]);
      }
      for (int64_t k = 0; k < hist; ++k) fs[row * hist + k] = static_cast<T>(buf[length + k]);
    }
  });
}

std::tuple<Tensor, Tensor> causal_conv1d_fwd(const Tensor& x, const Tensor& weight,
                                             const std::optional<Tensor>& bias,
                                             const std::optional<Tensor>& initial_state,
                                             bool use_silu) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 3 && weight.dim() == 2 && weight.size(0) == x.size(1),
              "causal_conv1d: x must be (Bt, ED, L) and weight (ED, K)");
  const int64_t hist = weight.size(1) - 1;
  Tensor init;
  if (initial_state.has_value()) {
    TORCH_CHECK(initial_state->dim() == 3 && initial_state->size(0) == x.size(0) &&
                    initial_state->size(1) == x.size(1) && initial_state->size(2) == hist,
                "causal_conv1d: initial_state must be (Bt, ED, K-1)");
    init = initial_state->scalar_type() == x.scalar_type() ? *initial_state
                                                           : initial_state->to(x.scalar_type());
  }
  Tensor out = empty_seq_like(x, x.scalar_type());
  Tensor final_state = at::empty({x.size(0), x.size(1), hist}, x.options());
  const Tensor wf = f32(weight), bf = f32(bias);
  if (x.scalar_type() == at::kFloat) {
    causal_conv1d_kernel<float>(x, wf, bf, init, use_silu, out, final_state);
  } else {
    causal_conv1d_kernel<at::BFloat16>(x, wf, bf, init, use_silu, out, final_state);
  }
  return {out, final_state};
}

// One conv step for one channel: shift the state left, append x, dot with the weight.
// The state (size S >= K-1, contiguous) keeps the last S inputs; the conv reads the last K.
template <typename T>
inline float conv_step(T* state, int64_t size, float x, const float* w, int64_t width, float b) {
  float acc = b;
  const int64_t first = size + 1 - width;  // index in concat(state, x) of the first tap
  for (int64_t k = 0; k < width - 1; ++k) acc += w[k] * ld(state + first + k);
  acc += w[width - 1] * x;
  for (int64_t k = 0; k + 1 < size; ++k) state[k] = state[k + 1];
  state[size - 1] = static_cast<T>(x);
  return acc;
}

Tensor causal_conv1d_update(const Tensor& x, Tensor& conv_state, const Tensor& weight,
                            const std::optional<Tensor>& bias, bool use_silu) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && conv_state.dim() == 3 && conv_state.size(0) == x.size(0) &&
                  conv_state.size(1) == x.size(1) && weight.size(0) == x.size(1),
              "causal_conv1d_update: x (Bt, ED), conv_state (Bt, ED, S), weight (ED, K)");
  TORCH_CHECK(conv_state.size(2) >= weight.size(1) - 1, "conv_state must hold at least K-1 inputs");
  TORCH_CHECK(conv_state.is_contiguous() && conv_state.scalar_type() == x.scalar_type(),
              "causal_conv1d_update: conv_state must be contiguous with x's dtype");
  const int64_t batch = x.size(0), channels = x.size(1), size = conv_state.size(2);
  const int64_t width = weight.size(1);
  const Tensor wf = f32(weight), bf = f32(bias);
  const float* w = wf.data_ptr<float>();
  const float* bp = ptr_or_null(bf);
  Tensor out = at::empty({batch, channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "causal_conv1d_update", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* sp = conv_state.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t sxb = x.stride(0), sxd = x.stride(1);
    at::parallel_for(0, batch * channels, 16384, [&](int64_t begin, int64_t end) {
      FlushDenormals ftz;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / channels, d = row % channels;
        float y = conv_step(sp + row * size, size, ld(xp + b * sxb + d * sxd), w + d * width,
                            width, bp ? bp[d] : 0.0f);
        op[row] = static_cast<scalar_t>(use_silu ? silu(y) : y);
      }
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// Selective state update (one decode step): per channel, the N state entries in the lanes.
// ---------------------------------------------------------------------------------------
inline float ssm_step(float* h, const float* a, const float* B, const float* C, int64_t n_state,
                      float dt, float x) {
  const float dtx = dt * x;
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t n = 0; n < n_state; ++n) {
    const float hv = fast_exp(dt * a[n]) * h[n] + dtx * B[n];
    h[n] = hv;
    acc += hv * C[n];
  }
  return acc;
}

#if defined(__AVX2__) && defined(__FMA__)
// ssm_step for N = 16, Mamba's usual state size: the state in two registers, B and C loaded
// once per token by the caller.
inline float ssm_step16(float* h, const float* a, const __m256 (&B)[2], const __m256 (&C)[2],
                        float dt, float x) {
  const __m256 vdt = _mm256_set1_ps(dt), dtx = _mm256_set1_ps(dt * x);
  __m256 acc = _mm256_setzero_ps();
  for (int k = 0; k < 2; ++k) {
    const __m256 decay = exp256(_mm256_mul_ps(vdt, _mm256_loadu_ps(a + 8 * k)));
    const __m256 hv = _mm256_fmadd_ps(decay, _mm256_loadu_ps(h + 8 * k), _mm256_mul_ps(dtx, B[k]));
    _mm256_storeu_ps(h + 8 * k, hv);
    acc = _mm256_fmadd_ps(hv, C[k], acc);
  }
  return hsum256(acc);
}
#endif

Tensor selective_state_update(Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A,
                              const Tensor& B, const Tensor& C, const std::optional<Tensor>& D,
                              const std::optional<Tensor>& z, const std::optional<Tensor>& dt_bias,
                              bool dt_softplus) {
  check_cpu(x, "x");
  TORCH_CHECK(state.scalar_type() == at::kFloat && state.is_contiguous() && state.dim() == 3,
              "selective_state_update: state must be a contiguous fp32 (Bt, ED, N) tensor");
  const int64_t batch = x.size(0), channels = x.size(1), n_state = state.size(2);
  TORCH_CHECK(x.dim() == 2 && dt.sizes() == x.sizes() && state.size(0) == batch &&
                  state.size(1) == channels && A.size(0) == channels && A.size(1) == n_state,
              "selective_state_update: x, dt (Bt, ED), state (Bt, ED, N), A (ED, N)");
  const Tensor Af = f32(A), Bf = f32(B), Cf = f32(C), Df = f32(D), bf = f32(dt_bias);
  const Tensor xf = f32(x), dtf = f32(dt), zf = f32(z);
  const float *a = Af.data_ptr<float>(), *Bp = Bf.data_ptr<float>(), *Cp = Cf.data_ptr<float>();
  const float *Dp = ptr_or_null(Df), *bp = ptr_or_null(bf), *zp = ptr_or_null(zf);
  const float *xp = xf.data_ptr<float>(), *dp = dtf.data_ptr<float>();
  float* h = state.data_ptr<float>();
  Tensor out32 = at::empty({batch, channels}, x.options().dtype(at::kFloat));
  float* op = out32.data_ptr<float>();
  at::parallel_for(0, batch * channels, 4096, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / channels, d = row % channels;
      float step = dp[row] + (bp ? bp[d] : 0.0f);
      step = dt_softplus ? softplus(step) : step;
      float y = ssm_step(h + row * n_state, a + d * n_state, Bp + b * n_state, Cp + b * n_state,
                         n_state, step, xp[row]);
      y += Dp ? Dp[d] * xp[row] : 0.0f;
      op[row] = zp ? y * silu(zp[row]) : y;
    }
  });
  return out32.to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------
// Fused Jamba Mamba decode step: conv step + SiLU -> x_proj -> RMSNorms -> dt_proj + softplus
// -> scan step + D skip -> gate, in three parallel phases (the x_proj and the norms need all
// channels of the conv output; the scan step needs the normed dt, B, C).
// ---------------------------------------------------------------------------------------
template <typename T>
void rms_norm_inplace(float* v, int64_t n, const T* w, float eps) {
  if (w == nullptr) return;
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += v[i] * v[i];
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) v[i] = ld(w + i) * (v[i] * inv);
}

template <typename T>
const T* opt_ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The step's arguments as raw pointers (checked and converted by mamba_step_args), and its
// phases over ranges of rows (b * ED + d), of x_proj outputs or of channels, so that both the
// op below and mamba_mixer_decode's single parallel region run them.
template <typename T>
struct MambaStep {
  int64_t batch, channels, n_state, rank, n_proj, width, size;
  const T* x;  // (batch, ED), row stride sxb
  const T* z;  // (batch, ED), row stride szb, or nullptr
  int64_t sxb, szb;
  T* conv;      // (batch, ED, size)
  float* ssm;   // (batch, ED, N)
  const T *conv_w, *conv_b, *x_proj, *dt_proj, *dt_bias, *D, *dt_norm, *b_norm, *c_norm;
  const float* A;  // (ED, N)
  float eps;

  // Phase 1: conv step + SiLU for rows [begin, end) into u (batch * ED). Mamba's width 4 has
  // its own loop (taps and state shift unrolled): at ED 1536 this phase was 15 of 57 us.
  void conv_rows(int64_t begin, int64_t end, float* u) const {
    float w[16];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / channels, d = row % channels;
      const float xv = ld(x + b * sxb + d), bias = conv_b ? ld(conv_b + d) : 0.0f;
      T* cs = conv + row * size;
      if (width == 4) {
        T* st = cs + (size - 3);  // the last 3 inputs
        const T* wd = conv_w + d * 4;
        u[row] = bias + ld(wd) * ld(st) + ld(wd + 1) * ld(st + 1) + ld(wd + 2) * ld(st + 2) +
                 ld(wd + 3) * xv;
        if (size > 3) std::memmove(cs, cs + 1, (size - 1) * sizeof(T));
        else st[0] = st[1], st[1] = st[2];
        cs[size - 1] = static_cast<T>(xv);
        continue;
      }
      for (int64_t k = 0; k < width; ++k) w[k] = ld(conv_w + d * width + k);
      u[row] = conv_step(cs, size, xv, w, width, bias);
    }
#pragma omp simd
    for (int64_t row = begin; row < end; ++row) u[row] = silu(u[row]);  // a SIMD pass
  }

  // Phase 2: x_proj outputs [j0, j1) for every batch row, one weight row per output (streamed
  // once for all batch rows): proj (batch, n_proj).
  void x_proj_rows(int64_t j0, int64_t j1, const float* u, float* proj) const {
    for (int64_t j = j0; j < j1; ++j) {
      const T* wr = x_proj + j * channels;
      for (int64_t b = 0; b < batch; ++b) {
        const float* ub = u + b * channels;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < channels; ++d) acc += ld(wr + d) * ub[d];
        proj[b * n_proj + j] = acc;
      }
    }
  }

  // Phase 3 (tiny): the RMSNorms on dt, B, C of every batch row, in place.
  void norms(float* proj) const {
    for (int64_t b = 0; b < batch; ++b) {
      float* p = proj + b * n_proj;
      rms_norm_inplace(p, rank, dt_norm, eps);
      rms_norm_inplace(p + rank, n_state, b_norm, eps);
      rms_norm_inplace(p + rank + n_state, n_state, c_norm, eps);
    }
  }

  // Phase 4, channels [c0, c1) of every batch row, by blocks of DB channels: dt_proj + bias,
  // softplus, scan step, D skip, gate, into y (batch, ED) with row stride ldy. Each pass is a
  // SIMD loop over the block (the dt_proj dots over R, softplus and the gate over channels, the
  // scan step over N); done channel by channel in scalar code they were most of this step.
  template <typename Y>
  void scan_channels(int64_t c0, int64_t c1, const float* u, const float* proj, Y* y,
                     int64_t ldy) const {
    constexpr int64_t DB = 64;
    float step[DB], gate[DB], yb[DB];
    for (int64_t d0 = c0; d0 < c1; d0 += DB) {
      const int64_t nd = std::min(DB, c1 - d0);
      for (int64_t b = 0; b < batch; ++b) {
        const float* p = proj + b * n_proj;
        const float* ub = u + b * channels + d0;
        for (int64_t i = 0; i < nd; ++i) {
          const T* pr = dt_proj + (d0 + i) * rank;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int64_t r = 0; r < rank; ++r) dot += ld(pr + r) * p[r];
          step[i] = dot + (dt_bias ? ld(dt_bias + d0 + i) : 0.0f);
        }
#pragma omp simd
        for (int64_t i = 0; i < nd; ++i) step[i] = softplus(step[i]);
        int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
        if (n_state == 16) {
          const __m256 Bv[2] = {_mm256_loadu_ps(p + rank), _mm256_loadu_ps(p + rank + 8)};
          const __m256 Cv[2] = {_mm256_loadu_ps(p + rank + 16), _mm256_loadu_ps(p + rank + 24)};
          for (; i < nd; ++i)
            yb[i] = ssm_step16(ssm + (b * channels + d0 + i) * 16, A + (d0 + i) * 16, Bv, Cv,
                               step[i], ub[i]);
        }
#endif
        for (; i < nd; ++i) {
          const int64_t d = d0 + i;
          yb[i] = ssm_step(ssm + (b * channels + d) * n_state, A + d * n_state, p + rank,
                           p + rank + n_state, n_state, step[i], ub[i]);
        }
        if (D) {
#pragma omp simd
          for (int64_t i = 0; i < nd; ++i) yb[i] += ld(D + d0 + i) * ub[i];
        }
        if (z) {
          for (int64_t i = 0; i < nd; ++i) gate[i] = ld(z + b * szb + d0 + i);
#pragma omp simd
          for (int64_t i = 0; i < nd; ++i) yb[i] *= silu(gate[i]);
        }
        for (int64_t i = 0; i < nd; ++i) y[b * ldy + d0 + i] = static_cast<Y>(yb[i]);
      }
    }
  }
};

// The step's weights in the compute dtype, contiguous (a no-op for a model stored in its
// compute dtype), checked against each other; a MambaStep points into them.
struct MambaWeights {
  Tensor conv_w, conv_b, x_proj, dt_proj, dt_bias, A, D, dt_norm, b_norm, c_norm;

  int64_t channels() const { return conv_w.size(0); }

  // The states must be what the step reads and writes: checked on every call (a cache may
  // be replaced between calls), cheap.
  void check_states(int64_t batch, at::ScalarType dtype, const Tensor& conv_state,
                    const Tensor& ssm_state, const char* op) const {
    TORCH_CHECK(conv_state.dim() == 3 && conv_state.is_contiguous() &&
                    conv_state.scalar_type() == dtype && conv_state.size(0) == batch &&
                    conv_state.size(1) == channels() && conv_state.size(2) >= conv_w.size(1) - 1,
                op, ": conv_state must be contiguous (Bt, ED, >=K-1) in x's dtype");
    TORCH_CHECK(ssm_state.dim() == 3 && ssm_state.is_contiguous() &&
                    ssm_state.scalar_type() == at::kFloat && ssm_state.size(0) == batch &&
                    ssm_state.size(1) == channels() && ssm_state.size(2) == A.size(1),
                op, ": ssm_state must be a contiguous fp32 (Bt, ED, N) tensor");
  }

  // x and z: (batch, ED) with row strides sxb and szb (z may be nullptr).
  template <typename T>
  MambaStep<T> view(int64_t batch, const T* x, int64_t sxb, const T* z, int64_t szb,
                    Tensor& conv_state, Tensor& ssm_state, float eps) const {
    return MambaStep<T>{batch, channels(), A.size(1), dt_proj.size(1), x_proj.size(0),
                        conv_w.size(1), conv_state.size(2), x, z, sxb, szb,
                        conv_state.data_ptr<T>(), ssm_state.data_ptr<float>(),
                        conv_w.data_ptr<T>(), opt_ptr<T>(conv_b), x_proj.data_ptr<T>(),
                        dt_proj.data_ptr<T>(), opt_ptr<T>(dt_bias), opt_ptr<T>(D),
                        opt_ptr<T>(dt_norm), opt_ptr<T>(b_norm), opt_ptr<T>(c_norm),
                        A.data_ptr<float>(), eps};
  }
};

MambaWeights mamba_weights(int64_t channels, at::ScalarType dtype, const Tensor& conv_weight,
                           const std::optional<Tensor>& conv_bias, const Tensor& x_proj_weight,
                           const Tensor& dt_proj_weight, const std::optional<Tensor>& dt_proj_bias,
                           const Tensor& A, const std::optional<Tensor>& D,
                           const std::optional<Tensor>& dt_norm_weight,
                           const std::optional<Tensor>& b_norm_weight,
                           const std::optional<Tensor>& c_norm_weight) {
  TORCH_CHECK(conv_weight.size(1) <= 16, "mamba_decode_step: conv width must be <= 16");
  const int64_t rank = dt_proj_weight.size(1), n_state = A.size(1);
  TORCH_CHECK(x_proj_weight.size(0) == rank + 2 * n_state && x_proj_weight.size(1) == channels &&
                  dt_proj_weight.size(0) == channels,
              "mamba_decode_step: x_proj_weight (R+2N, ED) and dt_proj_weight (ED, R) expected");
  TORCH_CHECK(conv_weight.dim() == 2 && conv_weight.size(0) == channels && A.dim() == 2 &&
                  A.size(0) == channels,
              "mamba_decode_step: conv_weight (ED, K) and A (ED, N) expected");
  const auto sized = [](const std::optional<Tensor>& t, int64_t n) {
    return !t.has_value() || t->numel() == n;
  };
  TORCH_CHECK(sized(conv_bias, channels) && sized(dt_proj_bias, channels) && sized(D, channels),
              "mamba_decode_step: conv_bias, dt_proj_bias and D must have ED entries");
  TORCH_CHECK(sized(dt_norm_weight, rank) && sized(b_norm_weight, n_state) &&
                  sized(c_norm_weight, n_state),
              "mamba_decode_step: the dt/B/C norm weights must have R, N and N entries");
  auto same = [&](const Tensor& t) {
    return t.scalar_type() == dtype && t.is_contiguous() ? t : t.to(dtype).contiguous();
  };
  auto same_opt = [&](const std::optional<Tensor>& t) { return t.has_value() ? same(*t) : Tensor(); };
  return MambaWeights{same(conv_weight), same_opt(conv_bias), same(x_proj_weight),
                      same(dt_proj_weight), same_opt(dt_proj_bias), f32(A), same_opt(D),
                      same_opt(dt_norm_weight), same_opt(b_norm_weight),
                      same_opt(c_norm_weight)};
}

// The step in three parallel phases (the x_proj and the norms need all channels of the conv
// output; the scan step needs the normed dt, B, C).
template <typename T>
void mamba_decode_kernel(const MambaStep<T>& s, T* out) {
  std::vector<float> u(s.batch * s.channels), proj(s.batch * s.n_proj);
  at::parallel_for(0, s.batch * s.channels, 512, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    s.conv_rows(begin, end, u.data());
  });
  at::parallel_for(0, s.n_proj, 8, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    s.x_proj_rows(begin, end, u.data(), proj.data());
  });
  s.norms(proj.data());
  constexpr int64_t DB = 64;  // scan_channels' block: keep a thread's share whole blocks
  at::parallel_for(0, (s.channels + DB - 1) / DB, 4, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    s.scan_channels(begin * DB, std::min(end * DB, s.channels), u.data(), proj.data(), out,
                    s.channels);
  });
}

Tensor mamba_decode_step(const Tensor& x, const std::optional<Tensor>& z, Tensor& conv_state,
                         Tensor& ssm_state, const Tensor& conv_weight,
                         const std::optional<Tensor>& conv_bias, const Tensor& x_proj_weight,
                         const Tensor& dt_proj_weight, const std::optional<Tensor>& dt_proj_bias,
                         const Tensor& A, const std::optional<Tensor>& D,
                         const std::optional<Tensor>& dt_norm_weight,
                         const std::optional<Tensor>& b_norm_weight,
                         const std::optional<Tensor>& c_norm_weight, double norm_eps) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "mamba_decode_step: x must be (Bt, ED), unit stride");
  const auto dtype = x.scalar_type();
  const int64_t batch = x.size(0), channels = x.size(1);
  const MambaWeights w =
      mamba_weights(channels, dtype, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                    dt_proj_bias, A, D, dt_norm_weight, b_norm_weight, c_norm_weight);
  w.check_states(batch, dtype, conv_state, ssm_state, "mamba_decode_step");
  Tensor zz;
  if (z.has_value()) {
    TORCH_CHECK(z->sizes() == x.sizes(), "mamba_decode_step: z must be (Bt, ED)");
    zz = z->stride(1) == 1 && z->scalar_type() == dtype ? *z : z->to(dtype).contiguous();
  }
  Tensor out = at::empty({batch, channels}, x.options());
  const float eps = static_cast<float>(norm_eps);
  const int64_t szb = zz.defined() ? zz.stride(0) : 0;
  if (dtype == at::kFloat)
    mamba_decode_kernel(w.view<float>(batch, x.data_ptr<float>(), x.stride(0), opt_ptr<float>(zz),
                                      szb, conv_state, ssm_state, eps),
                        out.data_ptr<float>());
  else
    mamba_decode_kernel(w.view<at::BFloat16>(batch, x.data_ptr<at::BFloat16>(), x.stride(0),
                                             opt_ptr<at::BFloat16>(zz), szb, conv_state,
                                             ssm_state, eps),
                        out.data_ptr<at::BFloat16>());
  return out;
}

// Quantised linears for decode. Decode reads every weight once per token, so it is bound by
// memory traffic: int8 weights read 4x fewer bytes than fp32, 4-bit ~5x. To keep the
// arithmetic from becoming the new bottleneck, the activations are quantised too, per block of
// Q_BLOCK = 32 values (symmetric int8, scale = max|x| / 127, as GGUF's Q8_0), and each block's
// dot product runs on integers (AVX2: maddubs + madd, 32 products in two instructions), scaled
// back to fp32 once per block. The references in model/kernels/quant_linear.py quantise the
// activations the same way, so kernel and reference agree up to float summation order.
// ---------------------------------------------------------------------------------------
constexpr int64_t Q_BLOCK = 32;

// x (M, K) fp32, K % Q_BLOCK == 0 -> q (M, K) int8 and s (M, K / Q_BLOCK) fp32, x ~ q * s.
// The same float operations as quantize_activations_ref (amax / 127, x / scale, round half to
// even), so both give the same integers.
void quantize_blocks(const float* x, int64_t count, int8_t* q, float* s) {
  for (int64_t b = 0; b < count / Q_BLOCK; ++b) {
    const float* xb = x + b * Q_BLOCK;
    float amax = 0.0f;
    for (int64_t j = 0; j < Q_BLOCK; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float scale = amax / 127.0f;
    s[b] = scale;
    for (int64_t j = 0; j < Q_BLOCK; ++j) {
      const float v = scale > 0.0f ? std::nearbyint(xb[j] / scale) : 0.0f;
      q[b * Q_BLOCK + j] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
    }
  }
}

// ---------------------------------------------------------------------------------------
// The operands of a quantised linear's prefill (the Python wrappers then run one BLAS matmul on
// them): x̂, the activations rounded per block as the matvec kernels see them, and the fp32
// weight. In PyTorch ops each took 5-8 passes over its tensor; these take one, with the same
// float operations as the references (quant_linear.py), so the results are bit-identical.
// ---------------------------------------------------------------------------------------

// One block of Q_BLOCK values -> x̂: rounded to int8 steps of max|x| / 127 and scaled back.
// GCC does not vectorise the scalar loops (the rounding call, the max reduction), which ran
// slower than PyTorch's six passes; by hand it is one load and one store per value.
inline void quantize_block_back(const float* x, float* out) {
#if defined(__AVX2__)
  static_assert(Q_BLOCK == 32, "four 8-float registers a block");
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v[4];
  __m256 m = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[i]));
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
  const float scale = _mm_cvtss_f32(h) / 127.0f;
  if (!(scale > 0.0f)) {
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + 8 * i, _mm256_setzero_ps());
    return;
  }
  const __m256 sv = _mm256_set1_ps(scale);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (int i = 0; i < 4; ++i) {
    __m256 q = _mm256_round_ps(_mm256_div_ps(v[i], sv),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_min_ps(hi, _mm256_max_ps(lo, q));
    _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(q, sv));
  }
#else
  float amax = 0.0f;
  for (int64_t j = 0; j < Q_BLOCK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float scale = amax / 127.0f;
  for (int64_t j = 0; j < Q_BLOCK; ++j) {
    const float q = scale > 0.0f ? std::nearbyint(x[j] / scale) : 0.0f;
    out[j] = std::min(127.0f, std::max(-127.0f, q)) * scale;
  }
#endif
}

#if defined(__AVX2__)
// x̂ of a (B, L, K) fp32 tensor stored as its (B, K, L) transpose (the Mamba out_proj's input,
// the scan's output viewed time-major) without copying it contiguous first: PyTorch's copy of
// that view took 5.7 ms for 1024 x 1536 values. Tiles of 8 steps along L: each of a block's 32
// rows is one 8-wide load, so the 8 blocks' maxima, scales and roundings run in the lanes; a
// small tile then goes out row by row. Same float operations as quantize_block_back.
void quantize_transposed(const float* src, int64_t batch, int64_t length, int64_t k_in,
                         float* out) {
  const int64_t tiles = length / 8;
  at::parallel_for(0, batch * tiles, 4, [&](int64_t begin, int64_t end) {
    alignas(32) float tile[Q_BLOCK][8];
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, l0 = (task % tiles) * 8;
      for (int64_t k0 = 0; k0 < k_in; k0 += Q_BLOCK) {
        const float* col = src + (b * k_in + k0) * length + l0;
        __m256 amax = _mm256_setzero_ps();
        for (int64_t kk = 0; kk < Q_BLOCK; ++kk)
          amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(col + kk * length)));
        const __m256 scale = _mm256_div_ps(amax, _mm256_set1_ps(127.0f));
        // a zero scale divides by 1, as the reference does (its block is all zeros)
        const __m256 safe =
            _mm256_blendv_ps(scale, one, _mm256_cmp_ps(scale, _mm256_setzero_ps(), _CMP_EQ_OQ));
        for (int64_t kk = 0; kk < Q_BLOCK; ++kk) {
          __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(col + kk * length), safe),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          q = _mm256_min_ps(hi, _mm256_max_ps(lo, q));
          _mm256_store_ps(tile[kk], _mm256_mul_ps(q, scale));
        }
        for (int64_t j = 0; j < 8; ++j) {
          float* row = out + (b * length + l0 + j) * k_in + k0;
          for (int64_t kk = 0; kk < Q_BLOCK; ++kk) row[kk] = tile[kk][j];
        }
      }
    }
  });
  for (int64_t b = 0; b < batch; ++b) {  // the last length % 8 steps, one block at a time
    float block[Q_BLOCK];
    for (int64_t l = tiles * 8; l < length; ++l) {
      for (int64_t k0 = 0; k0 < k_in; k0 += Q_BLOCK) {
        for (int64_t kk = 0; kk < Q_BLOCK; ++kk) block[kk] = src[(b * k_in + k0 + kk) * length + l];
        quantize_block_back(block, out + (b * length + l) * k_in + k0);
      }
    }
  }
}
#endif

// x (..., K), K % Q_BLOCK == 0 -> x̂ (..., K) fp32: each block of Q_BLOCK values rounded to
// int8 steps of max|block| / 127 and scaled back.
Tensor quantize_activations(const Tensor& x) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) % Q_BLOCK == 0,
              "quantize_activations: the last dimension must be a multiple of ", Q_BLOCK);
#if defined(__AVX2__)
  if (x.dim() == 3 && x.scalar_type() == at::kFloat && !x.is_contiguous() &&
      x.transpose(1, 2).is_contiguous()) {
    Tensor out = at::empty(x.sizes(), x.options());
    quantize_transposed(x.data_ptr<float>(), x.size(0), x.size(1), x.size(2),
                        out.data_ptr<float>());
    return out;
  }
#endif
  const Tensor xf = x.to(at::kFloat).contiguous();
  Tensor out = at::empty(xf.sizes(), xf.options());
  const float* xp = xf.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, xf.numel() / Q_BLOCK, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) quantize_block_back(xp + b * Q_BLOCK, op + b * Q_BLOCK);
  });
  return out;
}

// (N, K) int8 weight, (N) fp32 scale -> (N, K) fp32 W8 * scale.
Tensor dequantize_int8(const Tensor& weight, const Tensor& scale) {
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kChar &&
                  weight.dim() == 2 && weight.is_contiguous(),
              "dequantize_int8: weight must be a contiguous int8 (N, K) CPU tensor");
  const int64_t n_out = weight.size(0), k_in = weight.size(1);
  TORCH_CHECK(scale.numel() == n_out, "dequantize_int8: scale must hold one value per row");
  const Tensor sf = f32(scale);
  Tensor out = at::empty({n_out, k_in}, weight.options().dtype(at::kFloat));
  const int8_t* wp = weight.data_ptr<int8_t>();
  const float* sp = sf.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n_out, std::max<int64_t>(1, 65536 / std::max<int64_t>(k_in, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float s = sp[n];
#pragma omp simd
      for (int64_t k = 0; k < k_in; ++k)
        op[n * k_in + k] = static_cast<float>(wp[n * k_in + k]) * s;
    }
  });
  return out;
}

// Groups [begin, end) of packed nibbles -> q * scale + minimum, the product rounded before the
// sum as in the reference: GCC contracts a * b + c into an FMA in C++ unless told not to, and a
// function with other optimisation options is not inlined into one without them.
__attribute__((optimize("fp-contract=off"))) void dequantize_int4_groups(
    const uint8_t* wp, const float* sp, const float* mp, int64_t begin, int64_t end, float* op) {
  for (int64_t g = begin; g < end; ++g) {
    const uint8_t* bytes = wp + g * (Q_BLOCK / 2);
    float* o = op + g * Q_BLOCK;
    const float s = sp[g], m = mp[g];
#pragma omp simd
    for (int64_t j = 0; j < Q_BLOCK / 2; ++j) {
      o[j] = static_cast<float>(bytes[j] & 0x0F) * s + m;
      o[j + Q_BLOCK / 2] = static_cast<float>(bytes[j] >> 4) * s + m;
    }
  }
}

// (N, K/2) packed nibbles, (N, K/32) scale and minimum -> (N, K) fp32 q * scale + minimum.
Tensor dequantize_int4(const Tensor& packed, const Tensor& scale, const Tensor& minimum) {
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == at::kByte &&
                  packed.dim() == 2 && packed.is_contiguous(),
              "dequantize_int4: packed must be a contiguous uint8 (N, K/2) CPU tensor");
  const int64_t n_out = packed.size(0), k_in = packed.size(1) * 2;
  TORCH_CHECK(k_in % Q_BLOCK == 0, "dequantize_int4: K must be a multiple of ", Q_BLOCK);
  const int64_t groups = k_in / Q_BLOCK;
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == n_out && scale.size(1) == groups &&
                  minimum.sizes() == scale.sizes(),
              "dequantize_int4: scale and minimum must be (N, K/32)");
  const Tensor sf = f32(scale), mf = f32(minimum);
  Tensor out = at::empty({n_out, k_in}, packed.options().dtype(at::kFloat));
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  const float *sp = sf.data_ptr<float>(), *mp = mf.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n_out * groups, 64, [&](int64_t begin, int64_t end) {
    dequantize_int4_groups(wp, sp, mp, begin, end, op);
  });
  return out;
}

#if defined(__AVX2__) && defined(__FMA__)
// 32 signed int8 weights . 32 signed int8 activations -> 8 int32 partial sums. maddubs wants
// unsigned x signed, so multiply |w| by x carrying w's sign; |w|, |x| <= 127 keeps the int16
// pair sums (<= 2 * 127 * 127) from saturating.
inline __m256 dot_s8(__m256i w, __m256i x) {
  const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// 16 packed bytes (q[j] low nibble, q[j + 16] high nibble) . 32 int8 activations.
inline __m256 dot_q4(const uint8_t* packed, __m256i x) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask),
                                     _mm_and_si128(bytes, mask));  // q[0..31] in order, 0..15
  const __m256i pairs = _mm256_maddubs_epi16(q, x);                // <= 2 * 15 * 127
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
#endif

// Rows of int8 weights against block-quantised activations: y[r] = sum_b xs[b] * (w_r . xq)_b.
// RB rows at a time share each load of x; row r starts at w + r * stride (block_rows), and
// the row after each is prefetched (the same stream's next block).
template <int RB>
inline void int8_rows_dot(const int8_t* w, int64_t stride, int64_t k_in, const int8_t* xq,
                          const float* xs, float* out) {
  const int64_t blocks = k_in / Q_BLOCK;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[RB];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * Q_BLOCK));
    const __m256 sb = _mm256_set1_ps(xs[b]);
    for (int r = 0; r < RB; ++r) {
      const int8_t* wr = w + r * stride + b * Q_BLOCK;
      _mm_prefetch(reinterpret_cast<const char*>(wr + k_in), _MM_HINT_T0);  // next block
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr));
      acc[r] = _mm256_fmadd_ps(dot_s8(wv, xv), sb, acc[r]);
    }
  }
  for (int r = 0; r < RB; ++r) out[r] = hsum256(acc[r]);
#else
  for (int r = 0; r < RB; ++r) {
    float total = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) {
      int32_t dot = 0;
      for (int64_t j = 0; j < Q_BLOCK; ++j)
        dot += int32_t{w[r * stride + b * Q_BLOCK + j]} * int32_t{xq[b * Q_BLOCK + j]};
      total += static_cast<float>(dot) * xs[b];
    }
    out[r] = total;
  }
#endif
}

// The float-activation path, for K not a multiple of Q_BLOCK (no block quantisation there).
inline float int8_row_dot_f32(const int8_t* w, const float* x, int64_t k_in) {
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t k = 0; k < k_in; ++k) total += static_cast<float>(w[k]) * x[k];
  return total;
}

// Decode-sized work: a thread only pays off with enough weights to stream (>= ~256 KB, ~10 us
// of DRAM traffic); smaller matrices stay on one thread.
inline int64_t rows_per_task(int64_t row_bytes) {
  return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(row_bytes, 1));
}

// The decode matvecs read RB weight rows at a time (they share each load of x). Block blk of
// an N-row matrix is rows blk + r * seg, r < RB, seg = ceil(N / RB) (fewer at the end): far
// apart, so that blocks blk and blk + 1 read consecutive memory in each of the RB rows, and a
// thread streams RB long runs instead of starting RB new ones every block, which cost the
// hardware prefetcher ~0.3 us a block (fp32, 8 adjacent rows of K = 1024: 20 GB/s on one
// thread, against 23.5 with K = 4096; the shorter rows of bf16 weights gave 12 against 19).
// Fills row[] and returns how many rows the block has.
template <int64_t RB>
inline int64_t block_rows(int64_t n_out, int64_t blk, int64_t* row) {
  const int64_t seg = (n_out + RB - 1) / RB;
  int64_t nr = 0;
  for (; nr < RB && blk + nr * seg < n_out; ++nr) row[nr] = blk + nr * seg;
  return nr;
}

// ---------------------------------------------------------------------------------------
// fp32 matvec for decode: y = x @ W^T + bias for a few rows of x, W (N, K) fp32 or bf16 (the
// bf16 weights of model.quant's "bf16": half the bytes, widened exactly in registers, fp32
// arithmetic). The BLAS gemv streams a cold weight at ~15 GB/s here; reading 8 rows at a time
// keeps more memory requests in flight (2-6% faster than 4 rows on every decode shape of the
// 300M Jamba, cold weights, 2 threads), and taking them far apart (block_rows) keeps those 8
// streams running from block to block. No software prefetch: with the hardware prefetcher
// alone this streams at ~1.0 of a plain sum over memory; a prefetch of the next rows made it
// ~7% slower (and, tried on bf16 weights before the rows were taken far apart, gained < 3%).
// ---------------------------------------------------------------------------------------
// One matvec: out (rows, N) = x (rows, K) @ W^T + bias, all contiguous; W is fp32, or bf16
// when `bf16` is set.
struct Matvec {
  const float* x;
  int64_t rows;
  const void* w;
  bool bf16;
  const float* bias;  // or nullptr
  int64_t n_out, k_in;
  float* out;
};

constexpr int64_t kMatvecRB = 8;  // weight rows read together

// Block `blk` (block_rows) of one matvec, W's values of type W.
template <typename W>
inline void matvec_block(const Matvec& j, int64_t blk) {
  constexpr int64_t RB = kMatvecRB;
  const int64_t k_in = j.k_in;
  int64_t row[RB];
  const int64_t nr = block_rows<RB>(j.n_out, blk, row);
  const W* wrow[RB];
  for (int64_t r = 0; r < nr; ++r) wrow[r] = static_cast<const W*>(j.w) + row[r] * k_in;
  for (int64_t m = 0; m < j.rows; ++m) {
    const float* xm = j.x + m * k_in;
    float acc[RB] = {};
    int64_t k0 = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if (nr == RB) {
      __m256 a[RB];
      for (auto& v : a) v = _mm256_setzero_ps();
      if constexpr (std::is_same_v<W, at::BFloat16>) {
        // 16 bf16 weights a load, widened by interleaving zeros below them: lane-wise, so the
        // low half holds weights 0-3 and 8-11 and the high half 4-7 and 12-15; x is permuted
        // alike once for all RB rows. (Two ops per 16 weights instead of zero-extend + shift
        // per 8, which streamed cached weights at ~0.55x this speed: 22.5 against 39 GB/s on
        // a 3072x1024 matvec.)
        const __m256i zero = _mm256_setzero_si256();
        for (; k0 + 16 <= k_in; k0 += 16) {
          const __m256 x0 = _mm256_loadu_ps(xm + k0), x1 = _mm256_loadu_ps(xm + k0 + 8);
          const __m256 xa = _mm256_permute2f128_ps(x0, x1, 0x20);  // x 0-3, 8-11
          const __m256 xb = _mm256_permute2f128_ps(x0, x1, 0x31);  // x 4-7, 12-15
          for (int r = 0; r < RB; ++r) {
            const __m256i w =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow[r] + k0));
            a[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, w)), xa, a[r]);
            a[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, w)), xb, a[r]);
          }
        }
      }
      for (; k0 + 8 <= k_in; k0 += 8) {
        const __m256 xv = _mm256_loadu_ps(xm + k0);
        for (int r = 0; r < RB; ++r) a[r] = _mm256_fmadd_ps(load8(wrow[r] + k0), xv, a[r]);
      }
      for (int r = 0; r < RB; ++r) acc[r] = hsum256(a[r]);
    }
#endif
    for (int64_t r = 0; r < nr; ++r) {
      const W* wr = wrow[r];
      float tail = 0.0f;
#pragma omp simd reduction(+ : tail)
      for (int64_t k = k0; k < k_in; ++k) tail += ld(wr + k) * xm[k];
      j.out[m * j.n_out + row[r]] = acc[r] + tail + (j.bias ? j.bias[row[r]] : 0.0f);
    }
  }
}

// Several matvecs in ONE parallel region, their row blocks dealt out to the threads together:
// one fork/join instead of one per matrix, and a thread that finishes its share of one matrix
// goes on to the next instead of waiting at a barrier (the MoE's experts: 6 regions -> 2).
void matvec_many(const Matvec* jobs, int64_t count) {
  std::vector<int64_t> first(count + 1, 0);  // first block of each job
  int64_t widest = 1;
  for (int64_t i = 0; i < count; ++i) {
    first[i + 1] = first[i] + (jobs[i].n_out + kMatvecRB - 1) / kMatvecRB;
    widest = std::max(widest, jobs[i].k_in);
  }
  at::parallel_for(0, first[count], rows_per_task(kMatvecRB * widest * 4),
                   [&](int64_t begin, int64_t end) {
    int64_t i = 0;
    while (first[i + 1] <= begin) ++i;
    for (int64_t blk = begin; blk < end; ++blk) {
      while (first[i + 1] <= blk) ++i;
      if (jobs[i].bf16)
        matvec_block<at::BFloat16>(jobs[i], blk - first[i]);
      else
        matvec_block<float>(jobs[i], blk - first[i]);
    }
  });
}

void matvec_f32(const float* xp, int64_t rows, const float* wp, const float* bp, int64_t n_out,
                int64_t k_in, float* op) {
  const Matvec job{xp, rows, wp, false, bp, n_out, k_in, op};
  matvec_many(&job, 1);
}

Tensor linear_matvec(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "linear_matvec: x must be fp32");
  const bool bf16 = weight.scalar_type() == at::kBFloat16;
  TORCH_CHECK((bf16 || weight.scalar_type() == at::kFloat) && weight.dim() == 2 &&
                  weight.is_contiguous(),
              "linear_matvec: weight must be a contiguous fp32 or bf16 (N, K) tensor");
  const int64_t n_out = weight.size(0), k_in = weight.size(1);
  TORCH_CHECK(x.size(-1) == k_in, "linear_matvec: x's last dimension must be K = ", k_in);
  const Tensor x2 = x.reshape({-1, k_in}).contiguous();
  const Tensor bf = f32(bias);
  Tensor out = at::empty({x2.size(0), n_out}, x.options());
  const Matvec job{x2.data_ptr<float>(), x2.size(0), weight.data_ptr(), bf16, ptr_or_null(bf),
                   n_out, k_in, out.data_ptr<float>()};
  matvec_many(&job, 1);
  auto sizes = x.sizes().vec();
  sizes.back() = n_out;
  return out.view(sizes);
}

// ---------------------------------------------------------------------------------------
// int8 linear: y = (x @ W8^T) * scale + bias, W8 (N, K) int8 with one fp32 scale per output
// row. Meant for few rows of x (decode steps); the Python wrapper dequantises for long prefill
// chunks, where the matmul is compute-bound and the BLAS kernel wins.
// ---------------------------------------------------------------------------------------
// y (rows, N) = x̂ (rows, K) @ W8^T * scale + bias; x contiguous fp32, x̂ its block-quantised
// form when K % Q_BLOCK == 0 (else x itself).
void matvec_int8(const float* xp, int64_t rows, const int8_t* wp, const float* sp,
                 const float* bp, int64_t n_out, int64_t k_in, float* op) {
  const bool blocked = k_in % Q_BLOCK == 0;
  std::vector<int8_t> xq(blocked ? rows * k_in : 0);
  std::vector<float> xs(blocked ? rows * (k_in / Q_BLOCK) : 0);
  for (int64_t m = 0; blocked && m < rows; ++m)
    quantize_blocks(xp + m * k_in, k_in, xq.data() + m * k_in, xs.data() + m * (k_in / Q_BLOCK));
  // 8 rows a block (block_rows): with int8_rows_dot's prefetch of the next block, more of a
  // cold weight is in flight while the integer dots run (cold 3072x576 and 49152x576 matvecs
  // ~8-14% faster than 4 rows; the dots are compute-heavy enough that without prefetch they
  // stream at ~0.5 of the read bandwidth).
  constexpr int64_t RB = 8;
  const int64_t seg = (n_out + RB - 1) / RB;
  at::parallel_for(0, seg, rows_per_task(RB * k_in), [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    for (int64_t blk = begin; blk < end; ++blk) {
      int64_t row[RB];
      const int64_t nr = block_rows<RB>(n_out, blk, row);
      for (int64_t m = 0; m < rows; ++m) {
        float acc[RB];
        if (blocked && nr == RB) {
          int8_rows_dot<RB>(wp + blk * k_in, seg * k_in, k_in, xq.data() + m * k_in,
                            xs.data() + m * (k_in / Q_BLOCK), acc);
        } else {
          for (int64_t r = 0; r < nr; ++r) {
            if (blocked)
              int8_rows_dot<1>(wp + row[r] * k_in, k_in, k_in, xq.data() + m * k_in,
                               xs.data() + m * (k_in / Q_BLOCK), acc + r);
            else
              acc[r] = int8_row_dot_f32(wp + row[r] * k_in, xp + m * k_in, k_in);
          }
        }
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t n = row[r];
          op[m * n_out + n] = acc[r] * sp[n] + (bp ? bp[n] : 0.0f);
        }
      }
    }
  });
}

Tensor int8_linear(const Tensor& x, const Tensor& weight, const Tensor& scale,
                   const std::optional<Tensor>& bias) {
  check_cpu(x, "x");
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 2 && weight.is_contiguous(),
              "int8_linear: weight must be a contiguous int8 (N, K) tensor");
  const int64_t n_out = weight.size(0), k_in = weight.size(1);
  TORCH_CHECK(x.size(-1) == k_in, "int8_linear: x's last dimension must be K = ", k_in);
  TORCH_CHECK(scale.numel() == n_out, "int8_linear: scale must hold one value per output row");
  const Tensor x2 = x.reshape({-1, k_in}).to(at::kFloat).contiguous();  // (M, K) fp32
  const Tensor sf = f32(scale), bf = f32(bias);
  Tensor out = at::empty({x2.size(0), n_out}, x.options().dtype(at::kFloat));
  matvec_int8(x2.data_ptr<float>(), x2.size(0), weight.data_ptr<int8_t>(), sf.data_ptr<float>(),
              ptr_or_null(bf), n_out, k_in, out.data_ptr<float>());
  auto sizes = x.sizes().vec();
  sizes.back() = n_out;
  return out.view(sizes).to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------
// 4-bit linear, asymmetric like GGUF's Q4_1: each group of G = 32 weights along K has a scale
// and a minimum, w = q * scale + minimum with q in [0, 15]. Byte j of a group holds q[j] in its
// low nibble and q[j + 16] in its high nibble. With the activations block-quantised (blocks =
// groups), x_g ~ xs_g * xq_g:
//   y = sum_g scale_g * xs_g * (q_g . xq_g) + sum_g minimum_g * xs_g * sum(xq_g),
// where xs_g * sum(xq_g) is computed once per row of x and shared by all N outputs.
// 0.75 bytes per weight with the fp32 scales and minima.
// ---------------------------------------------------------------------------------------
constexpr int64_t Q4_GROUP = Q_BLOCK;

// RB rows of packed 4-bit weights (each `groups * 16` bytes, scale and minimum `groups` floats)
// against one block-quantised activation row: out[r] = sum_g scale_rg * xs_g * (q_rg . xq_g)
// + sum_g minimum_rg * xsum_g. The RB rows share each load of x (as the int8 kernel does); row
// r is `stride` rows after row 0 (block_rows), and the row after each is prefetched.
template <int RB>
inline void int4_rows_dot(const uint8_t* w, const float* sc, const float* mn, int64_t stride,
                          const int8_t* xq, const float* xs, const float* xsum, int64_t groups,
                          float* out) {
  const int64_t row_bytes = groups * 16;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[RB];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + g * Q4_GROUP));
    const float xsg = xs[g];
    for (int r = 0; r < RB; ++r) {
      const uint8_t* wr = w + r * stride * row_bytes + g * 16;
      if ((g & 3) == 0)  // one prefetch per 64-byte line, of the next block
        _mm_prefetch(reinterpret_cast<const char*>(wr + row_bytes), _MM_HINT_T0);
      acc[r] = _mm256_fmadd_ps(dot_q4(wr, xv), _mm256_set1_ps(sc[r * stride * groups + g] * xsg),
                               acc[r]);
    }
  }
  for (int r = 0; r < RB; ++r) out[r] = hsum256(acc[r]);
#else
  for (int r = 0; r < RB; ++r) {
    float total = 0.0f;
    for (int64_t g = 0; g < groups; ++g) {
      int32_t dot = 0;
      for (int64_t j = 0; j < 16; ++j) {
        const uint8_t b = w[r * stride * row_bytes + g * 16 + j];
        dot += int32_t{b & 0x0F} * int32_t{xq[g * Q4_GROUP + j]};
        dot += int32_t{b >> 4} * int32_t{xq[g * Q4_GROUP + 16 + j]};
      }
      total += static_cast<float>(dot) * (sc[r * stride * groups + g] * xs[g]);
    }
    out[r] = total;
  }
#endif
  for (int r = 0; r < RB; ++r) {
    float offset = 0.0f;
#pragma omp simd reduction(+ : offset)
    for (int64_t g = 0; g < groups; ++g) offset += mn[r * stride * groups + g] * xsum[g];
    out[r] += offset;
  }
}

// y (rows, N) = x̂ (rows, K) @ W4^T + bias for packed 4-bit weights; x contiguous fp32.
void matvec_int4(const float* xp, int64_t rows, const uint8_t* wp, const float* sp,
                 const float* mp, const float* bp, int64_t n_out, int64_t k_in, float* op) {
  const int64_t groups = k_in / Q4_GROUP;
  std::vector<int8_t> xq(rows * k_in);
  std::vector<float> xs(rows * groups), xsum(rows * groups);  // xsum: xs_g * sum(xq_g)
  for (int64_t m = 0; m < rows; ++m) {
    int8_t* qm = xq.data() + m * k_in;
    quantize_blocks(xp + m * k_in, k_in, qm, xs.data() + m * groups);
    for (int64_t g = 0; g < groups; ++g) {
      int32_t total = 0;
      for (int64_t j = 0; j < Q4_GROUP; ++j) total += qm[g * Q4_GROUP + j];
      xsum[m * groups + g] = xs[m * groups + g] * static_cast<float>(total);
    }
  }
  constexpr int64_t RB = 4;
  const int64_t seg = (n_out + RB - 1) / RB;
  at::parallel_for(0, seg, rows_per_task(RB * k_in / 2), [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    for (int64_t blk = begin; blk < end; ++blk) {
      int64_t row[RB];
      const int64_t nr = block_rows<RB>(n_out, blk, row);
      for (int64_t m = 0; m < rows; ++m) {
        const int8_t* xm = xq.data() + m * k_in;
        const float *xsm = xs.data() + m * groups, *sum_m = xsum.data() + m * groups;
        float acc[RB];
        if (nr == RB) {
          int4_rows_dot<RB>(wp + blk * (k_in / 2), sp + blk * groups, mp + blk * groups, seg, xm,
                            xsm, sum_m, groups, acc);
        } else {
          for (int64_t r = 0; r < nr; ++r)
            int4_rows_dot<1>(wp + row[r] * (k_in / 2), sp + row[r] * groups,
                             mp + row[r] * groups, 1, xm, xsm, sum_m, groups, acc + r);
        }
        for (int64_t r = 0; r < nr; ++r) op[m * n_out + row[r]] = acc[r] + (bp ? bp[row[r]] : 0.0f);
      }
    }
  });
}

Tensor int4_linear(const Tensor& x, const Tensor& packed, const Tensor& scale,
                   const Tensor& minimum, const std::optional<Tensor>& bias) {
  check_cpu(x, "x");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 2 && packed.is_contiguous(),
              "int4_linear: packed weight must be a contiguous uint8 (N, K/2) tensor");
  const int64_t n_out = packed.size(0), k_in = packed.size(1) * 2;
  TORCH_CHECK(k_in % Q4_GROUP == 0, "int4_linear: K must be a multiple of ", Q4_GROUP);
  TORCH_CHECK(x.size(-1) == k_in, "int4_linear: x's last dimension must be K = ", k_in);
  const int64_t groups = k_in / Q4_GROUP;
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == n_out && scale.size(1) == groups &&
                  minimum.sizes() == scale.sizes(),
              "int4_linear: scale and minimum must be (N, K/32)");
  const Tensor x2 = x.reshape({-1, k_in}).to(at::kFloat).contiguous();
  const Tensor sf = f32(scale), mf = f32(minimum), bf = f32(bias);
  Tensor out = at::empty({x2.size(0), n_out}, x.options().dtype(at::kFloat));
  matvec_int4(x2.data_ptr<float>(), x2.size(0), packed.data_ptr<uint8_t>(), sf.data_ptr<float>(),
              mf.data_ptr<float>(), ptr_or_null(bf), n_out, k_in, out.data_ptr<float>());
  auto sizes = x.sizes().vec();
  sizes.back() = n_out;
  return out.view(sizes).to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------
// RMSNorm over the last dimension: out = weight * T(x * rsqrt(mean(x^2) + eps)), in fp32,
// cast to x's type T before the weight multiply (the Hugging Face order). Rows in parallel.
// ---------------------------------------------------------------------------------------
template <typename T>
void rms_norm_rows(const T* x, const T* w, T* out, int64_t rows, int64_t dim, float eps) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * dim;
      float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
      for (int64_t i = 0; i < dim; ++i) squares += ld(xr + i) * ld(xr + i);
      const float inv = 1.0f / std::sqrt(squares / static_cast<float>(dim) + eps);
      T* o = out + r * dim;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i)
        o[i] = static_cast<T>(ld(w + i) * static_cast<float>(static_cast<T>(ld(xr + i) * inv)));
    }
  });
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_cpu(x, "x");
  const int64_t dim = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == dim, "rms_norm: weight must be (", dim, ",)");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "rms_norm: weight and x dtypes differ");
  const Tensor xc = x.contiguous(), wc = weight.contiguous();
  Tensor out = at::empty_like(xc);
  const int64_t rows = dim ? xc.numel() / dim : 0;
  if (x.scalar_type() == at::kFloat)
    rms_norm_rows(xc.data_ptr<float>(), wc.data_ptr<float>(), out.data_ptr<float>(), rows, dim,
                  static_cast<float>(eps));
  else
    rms_norm_rows(xc.data_ptr<at::BFloat16>(), wc.data_ptr<at::BFloat16>(),
                  out.data_ptr<at::BFloat16>(), rows, dim, static_cast<float>(eps));
  return out;
}

// ---------------------------------------------------------------------------------------
// RoPE, rotate_half convention: x (B, L, H, hd) fp32, cos/sin (B, L, hd) fp32.
//   out[i]        = x[i] * cos[i] - x[i + hd/2] * sin[i]
//   out[i + hd/2] = x[i + hd/2] * cos[i + hd/2] + x[i] * sin[i + hd/2]     (i < hd/2)
// ---------------------------------------------------------------------------------------
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4,
              "rope: x must be a CPU fp32 (B, L, H, hd) tensor");
  const int64_t batch = x.size(0), length = x.size(1), heads = x.size(2), hd = x.size(3);
  TORCH_CHECK(hd % 2 == 0, "rope: head_dim must be even");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 3 && cos.size(0) == batch &&
                  cos.size(1) == length && cos.size(2) == hd,
              "rope: cos and sin must be (B, L, hd)");
  const Tensor xc = x.contiguous(), cc = f32(cos), sc = f32(sin);
  Tensor out = at::empty_like(xc);
  const float *xp = xc.data_ptr<float>(), *cp = cc.data_ptr<float>(), *sp = sc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t half = hd / 2, rows = batch * length;
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(heads * hd, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float *c = cp + r * hd, *s = sp + r * hd;
      for (int64_t h = 0; h < heads; ++h) {
        const float* xi = xp + (r * heads + h) * hd;
        float* o = op + (r * heads + h) * hd;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          o[i] = xi[i] * c[i] - xi[i + half] * s[i];
          o[i + half] = xi[i + half] * c[i + half] + xi[i] * s[i + half];
        }
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// SwiGLU's activation on a fused gate|up projection: x (..., 2I) -> silu(x[:I]) * x[I:].
// ---------------------------------------------------------------------------------------
Tensor silu_mul(const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.size(-1) % 2 == 0,
              "silu_mul: x must be a CPU fp32 tensor with an even last dimension");
  const int64_t width = x.size(-1), half = width / 2;
  const Tensor xc = x.contiguous();
  auto sizes = x.sizes().vec();
  sizes.back() = half;
  Tensor out = at::empty(sizes, x.options());
  const int64_t rows = half ? out.numel() / half : 0;
  const float* xp = xc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(half, 1)),
                   [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    for (int64_t r = begin; r < end; ++r) {
      const float *g = xp + r * width, *u = g + half;
      float* o = op + r * half;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) o[i] = silu(g[i]) * u[i];
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// One decode step of causal grouped-query attention over a preallocated KV cache.
// q (B, 1, H*hd), k and v (B, 1, Hkv*hd): the new token's projections, before RoPE;
// cos/sin (B, 1, hd) or absent (no positional encoding); k_cache, v_cache (B, Hkv, S, hd).
// Writes RoPE(k) and v into slot `start`, then for each head h (reading kv head h / (H/Hkv)):
//   out_h = softmax(q_h . K[0..start] / sqrt(hd)) . V[0..start]
// Replaces ~12 small PyTorch ops per layer (RoPE, transposes, cache writes, slicing, SDPA,
// whose CPU flash kernel costs ~85 us for one query).
// ---------------------------------------------------------------------------------------
inline void rope_row(const float* x, const float* c, const float* s, float* o, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) {
    o[i] = x[i] * c[i] - x[i + half] * s[i];
    o[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
  }
}

// Attention of `group` query heads (q: group x hd, contiguous) over keys [t0, t1) of one kv
// head (K, V: rows of hd floats). Leaves per head the unnormalised output sum_t e^(s_t - m) V_t,
// the maximum score m and the sum of e^(s_t - m), for merging with the other slices.
//
// The keys go in blocks of ATT_BLOCK with an online softmax (running max, rescaled sums), so
// each block of K and V is read from memory once and then served from L1 to every head of the
// group: with the heads in the outer loop, a long context re-read K and V once per head.
constexpr int64_t ATT_BLOCK = 64;

#if defined(__AVX2__) && defined(__FMA__)
template <typename C>
constexpr bool simd_cache() { return std::is_same_v<C, float> || kHalfSimd; }
#endif

inline void narrow(const float* src, int64_t count, float* dst) { std::memcpy(dst, src, count * 4); }

inline void narrow(const float* src, int64_t count, at::Half* dst) {
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<at::Half>(src[i]);
}

// Four scores q.K[t..t+3] (rows hd values apart), hd % 8 == 0.
#if defined(__AVX2__) && defined(__FMA__)
template <typename C>
inline __m128 dot4_keys(const float* qh, const C* kr, int64_t hd) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t d = 0; d < hd; d += 8) {
    const __m256 qv = _mm256_loadu_ps(qh + d);
    a0 = _mm256_fmadd_ps(qv, load8(kr + d), a0);
    a1 = _mm256_fmadd_ps(qv, load8(kr + hd + d), a1);
    a2 = _mm256_fmadd_ps(qv, load8(kr + 2 * hd + d), a2);
    a3 = _mm256_fmadd_ps(qv, load8(kr + 3 * hd + d), a3);
  }
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
#endif

// acc (hd) += sum_t p[t] * V[t] over n rows of V (hd values apart).
template <typename C>
inline void accumulate_rows(const float* p, const C* V, int64_t n, int64_t hd, float* acc) {
  int64_t d0 = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; simd_cache<C>() && hd % 8 == 0 && d0 + 64 <= hd; d0 += 64) {  // 64 outputs, 8 registers
    __m256 a[8];
    for (int j = 0; j < 8; ++j) a[j] = _mm256_loadu_ps(acc + d0 + 8 * j);
    for (int64_t t = 0; t < n; ++t) {
      const __m256 pv = _mm256_set1_ps(p[t]);
      const C* vr = V + t * hd + d0;
      for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(pv, load8(vr + 8 * j), a[j]);
    }
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(acc + d0 + 8 * j, a[j]);
  }
#endif
  for (int64_t t = 0; t < n && d0 < hd; ++t) {
    const float pt = p[t];
    const C* vr = V + t * hd;
#pragma omp simd
    for (int64_t d = d0; d < hd; ++d) acc[d] += pt * static_cast<float>(vr[d]);
  }
}

template <typename C>
void attend_slice(const float* q, const C* K, const C* V, int64_t t0, int64_t t1, int64_t hd,
                  int64_t group, float scale, float* scores, float* out, float* top, float* sum) {
  for (int64_t g = 0; g < group; ++g) {
    top[g] = -INFINITY;
    sum[g] = 0.0f;
    std::fill(out + g * hd, out + (g + 1) * hd, 0.0f);
  }
#if defined(__AVX2__) && defined(__FMA__)
  const bool vec = simd_cache<C>() && hd % 8 == 0;
#endif
  for (int64_t b0 = t0; b0 < t1; b0 += ATT_BLOCK) {
    const int64_t n = std::min(ATT_BLOCK, t1 - b0);
    const C* kb = K + b0 * hd;
    const C* vb = V + b0 * hd;
    for (int64_t g = 0; g < group; ++g) {
      const float* qh = q + g * hd;
      float* sg = scores + g * ATT_BLOCK;
      int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
      for (; vec && t + 4 <= n; t += 4)
        _mm_storeu_ps(sg + t, _mm_mul_ps(dot4_keys(qh, kb + t * hd, hd), _mm_set1_ps(scale)));
#endif
      for (; t < n; ++t) {
        float dot = 0.0f;
        for (int64_t d = 0; d < hd; ++d) dot += qh[d] * static_cast<float>(kb[t * hd + d]);
        sg[t] = dot * scale;
      }
      float block_max = -INFINITY;
#pragma omp simd reduction(max : block_max)
      for (int64_t i = 0; i < n; ++i) block_max = std::max(block_max, sg[i]);
      const float m = std::max(top[g], block_max);
      const float rescale = fast_exp(top[g] - m);  // 0 on the first block (top = -inf)
      float total = 0.0f;
#pragma omp simd reduction(+ : total)
      for (int64_t i = 0; i < n; ++i) {
        sg[i] = fast_exp(sg[i] - m);  // vectorised; libm's expf was this loop's bottleneck
        total += sg[i];
      }
      float* o = out + g * hd;
      if (rescale != 1.0f)
        for (int64_t d = 0; d < hd; ++d) o[d] *= rescale;
      sum[g] = sum[g] * rescale + total;
      top[g] = m;
      accumulate_rows(sg, vb, n, hd, o);
    }
  }
}

// The body of attention_decode on raw pointers: q rows (B, H*hd) `q_stride` floats apart, k and
// v rows (B, Hkv*hd) `kv_stride` apart, cos/sin (B, hd) or null, caches (B, Hkv, S, hd)
// contiguous; out (B, H*hd) contiguous.
template <typename C>
void attention_step(const float* qp_in, int64_t q_stride, const float* kn_in, const float* vn_in,
                    int64_t kv_stride, const float* cp, const float* sp_, C* kp, C* vp,
                    int64_t batch, int64_t heads, int64_t kv_heads, int64_t slots, int64_t hd,
                    int64_t start, float* op) {
  const bool rotary = cp != nullptr;
  std::vector<float> q_rot(batch * heads * hd), k_rot(hd);
  for (int64_t b = 0; b < batch; ++b) {
    const float *c = rotary ? cp + b * hd : nullptr, *s = rotary ? sp_ + b * hd : nullptr;
    for (int64_t kh = 0; kh < kv_heads; ++kh) {
      const int64_t slot = ((b * kv_heads + kh) * slots + start) * hd;
      const float* kn = kn_in + b * kv_stride + kh * hd;
      if (rotary) {
        rope_row(kn, c, s, k_rot.data(), hd);
        kn = k_rot.data();
      }
      narrow(kn, hd, kp + slot);
      narrow(vn_in + b * kv_stride + kh * hd, hd, vp + slot);
    }
    for (int64_t h = 0; h < heads; ++h) {
      const float* qh = qp_in + b * q_stride + h * hd;
      float* dst = q_rot.data() + (b * heads + h) * hd;
      if (rotary)
        rope_row(qh, c, s, dst, hd);
      else
        std::memcpy(dst, qh, hd * sizeof(float));
    }
  }
  const int64_t keys = start + 1, group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // Work units: (batch row, kv head, slice of the keys). The heads of one group share each
  // read of K and V; slicing the keys (each slice >= 256 of them) gives both threads work
  // when there are fewer kv heads than threads, and the slices are merged after.
  const int64_t pairs = batch * kv_heads;
  const int64_t splits = std::max<int64_t>(
      1, std::min<int64_t>(keys / 256, (4 * at::get_num_threads() + pairs - 1) / pairs));
  const int64_t per_split = (keys + splits - 1) / splits;
  std::vector<float> part_out(pairs * splits * group * hd), part_max(pairs * splits * group),
      part_sum(pairs * splits * group);
  const float* qp = q_rot.data();
  const int64_t grain = std::max<int64_t>(1, 32768 / (2 * per_split * hd));
  at::parallel_for(0, pairs * splits, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(group * ATT_BLOCK);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t pair = unit / splits, b = pair / kv_heads, kh = pair % kv_heads;
      const int64_t t0 = (unit % splits) * per_split, t1 = std::min(keys, t0 + per_split);
      const C* kb = kp + pair * slots * hd;
      const C* vb = vp + pair * slots * hd;
      const float* qg = qp + (b * heads + kh * group) * hd;  // the group's query heads
      attend_slice(qg, kb, vb, t0, t1, hd, group, scale, scores.data(),
                   part_out.data() + unit * group * hd, part_max.data() + unit * group,
                   part_sum.data() + unit * group);
    }
  });
  for (int64_t pair = 0; pair < pairs; ++pair) {
    const int64_t b = pair / kv_heads, kh = pair % kv_heads;
    for (int64_t g = 0; g < group; ++g) {
      float top = -INFINITY;
      for (int64_t sp = 0; sp < splits; ++sp)
        top = std::max(top, part_max[(pair * splits + sp) * group + g]);
      float* o = op + (b * heads + kh * group + g) * hd;
      std::fill(o, o + hd, 0.0f);
      float total = 0.0f;
      for (int64_t sp = 0; sp < splits; ++sp) {
        const int64_t u = (pair * splits + sp) * group + g;
        if (part_sum[u] == 0.0f) continue;  // an empty slice
        const float w = std::exp(part_max[u] - top);
        total += w * part_sum[u];
        const float* po = part_out.data() + u * hd;
        for (int64_t d = 0; d < hd; ++d) o[d] += w * po[d];
      }
      const float inv = 1.0f / total;
      for (int64_t d = 0; d < hd; ++d) o[d] *= inv;
    }
  }
}

// The KV cache of a decode op: contiguous CPU fp32 or fp16 (B, Hkv, S, hd) pair, one dtype,
// with slot `start` inside.
void check_kv_cache(const Tensor& k_cache, const Tensor& v_cache, int64_t start, const char* op) {
  const auto dtype = k_cache.scalar_type();
  TORCH_CHECK(k_cache.device().is_cpu() && v_cache.device().is_cpu() &&
                  (dtype == at::kFloat || dtype == at::kHalf) && v_cache.scalar_type() == dtype &&
                  k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  v_cache.sizes() == k_cache.sizes(),
              op, ": k_cache and v_cache must be contiguous CPU (B, Hkv, S, hd) tensors, both "
              "fp32 or both fp16");
  TORCH_CHECK(start >= 0 && start < k_cache.size(2), op, ": slot ", start,
              " outside the cache (", k_cache.size(2), " slots)");
}

// f(k, v) with the caches' data as float* or at::Half* (check_kv_cache has run).
template <typename F>
void with_cache_type(Tensor& k_cache, Tensor& v_cache, F&& f) {
  if (k_cache.scalar_type() == at::kHalf)
    f(k_cache.data_ptr<at::Half>(), v_cache.data_ptr<at::Half>());
  else
    f(k_cache.data_ptr<float>(), v_cache.data_ptr<float>());
}

// RoPE tables of a decode step as contiguous fp32 (B, 1, hd), or two undefined tensors.
std::pair<Tensor, Tensor> rope_tables(const std::optional<Tensor>& cos,
                                      const std::optional<Tensor>& sin, int64_t batch,
                                      int64_t hd, const char* op) {
  TORCH_CHECK(cos.has_value() == sin.has_value(), op, ": pass both cos and sin, or neither");
  if (!cos.has_value()) return {Tensor(), Tensor()};
  Tensor cc = f32(*cos), sc = f32(*sin);
  TORCH_CHECK(cc.numel() == batch * hd && sc.numel() == batch * hd, op,
              ": cos and sin must be (B, 1, hd)");
  return {cc, sc};
}

Tensor attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& k_cache,
                        Tensor& v_cache, int64_t start, const std::optional<Tensor>& cos,
                        const std::optional<Tensor>& sin) {
  for (const Tensor* t : std::initializer_list<const Tensor*>{&q, &k, &v})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat,
                "attention_decode: q, k and v must be CPU fp32 tensors");
  check_kv_cache(k_cache, v_cache, start, "attention_decode");
  const int64_t batch = k_cache.size(0), kv_heads = k_cache.size(1), slots = k_cache.size(2),
                hd = k_cache.size(3);
  TORCH_CHECK(q.numel() % (batch * hd) == 0 && q.size(0) == batch,
              "attention_decode: q must be (B, 1, H * hd)");
  const int64_t heads = q.numel() / (batch * hd);
  TORCH_CHECK(heads % kv_heads == 0 && k.numel() == batch * kv_heads * hd &&
                  v.numel() == k.numel(),
              "attention_decode: k and v must be (B, 1, Hkv * hd) with H a multiple of Hkv");
  const auto [cc, sc] = rope_tables(cos, sin, batch, hd, "attention_decode");
  const bool rotary = cc.defined();
  const Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  Tensor out = at::empty({batch, 1, heads * hd}, q.options());
  with_cache_type(k_cache, v_cache, [&](auto* kp, auto* vp) {
    attention_step(qc.data_ptr<float>(), heads * hd, kc.data_ptr<float>(), vc.data_ptr<float>(),
                   kv_heads * hd, rotary ? cc.data_ptr<float>() : nullptr,
                   rotary ? sc.data_ptr<float>() : nullptr, kp, vp, batch, heads, kv_heads, slots,
                   hd, start, out.data_ptr<float>());
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// A whole pre-norm decoder layer (attention + SwiGLU MLP, the Llama family) for one decode
// step of B rows, in one call:
//   x = rms_norm(h) ; q|k|v = x @ Wqkv^T ; a = attention_step(q, k, v) ; h += a @ Wo^T
//   x = rms_norm(h) ; g|u = x @ Wgu^T ; h += (silu(g) * u) @ Wdown^T
// A projection is passed as [weight, scale, minimum, bias] (absent ones None): an fp32 or bf16
// weight (N, K), an int8 one (N, K) with scale (N,), or packed 4-bit (N, K/2) with scale and
// minimum (N, K/32), as model.quant stores them. Why: in PyTorch a layer's decode step is
// ~15 Python-level calls of 5-15 us dispatch each around ~250 us of matvecs; a 30-layer
// model spent ~3.5 ms a token outside the kernels.
// ---------------------------------------------------------------------------------------
struct Proj {
  Tensor weight, scale, minimum, bias;  // fp32 scale/minimum/bias, contiguous
  int64_t n_out = 0, k_in = 0;
  enum { kF32, kBF16, kInt8, kInt4 } kind = kF32;

  bool floating() const { return kind == kF32 || kind == kBF16; }
  Matvec job(const float* x, int64_t rows, float* out) const {  // fp32 and bf16 weights
    return {x, rows, weight.data_ptr(), kind == kBF16, ptr_or_null(bias), n_out, k_in, out};
  }
  void apply(const float* x, int64_t rows, float* out) const {
    const float* bp = ptr_or_null(bias);
    if (floating()) {
      const Matvec j = job(x, rows, out);
      matvec_many(&j, 1);
    } else if (kind == kInt8) {
      matvec_int8(x, rows, weight.data_ptr<int8_t>(), scale.data_ptr<float>(), bp, n_out, k_in,
                  out);
    } else {
      matvec_int4(x, rows, weight.data_ptr<uint8_t>(), scale.data_ptr<float>(),
                  minimum.data_ptr<float>(), bp, n_out, k_in, out);
    }
  }
};

// projs[i] applied to rows of xs[i] into outs[i]: in one parallel region when all are fp32 or
// bf16.
void apply_together(const std::vector<const Proj*>& projs, const std::vector<const float*>& xs,
                    int64_t rows, const std::vector<float*>& outs) {
  if (!std::all_of(projs.begin(), projs.end(), [](const Proj* p) { return p->floating(); })) {
    for (size_t i = 0; i < projs.size(); ++i) projs[i]->apply(xs[i], rows, outs[i]);
    return;
  }
  std::vector<Matvec> jobs;
  for (size_t i = 0; i < projs.size(); ++i) jobs.push_back(projs[i]->job(xs[i], rows, outs[i]));
  matvec_many(jobs.data(), static_cast<int64_t>(jobs.size()));
}

Proj make_proj(const c10::List<std::optional<Tensor>>& parts, const char* op, const char* name,
               int64_t k_in) {
  TORCH_CHECK(parts.size() == 4 && parts.get(0).has_value(), op, ": ", name,
              " must be [weight, scale, minimum, bias]");
  Proj p;
  p.weight = *parts.get(0);
  const Tensor& w = p.weight;
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 2 && w.is_contiguous(), op, ": ", name,
              " weight must be a contiguous 2-D CPU tensor");
  p.n_out = w.size(0);
  p.k_in = w.scalar_type() == at::kByte ? w.size(1) * 2 : w.size(1);
  TORCH_CHECK(p.k_in == k_in, op, ": ", name, " takes ", p.k_in,
              " inputs, the layer gives it ", k_in);
  if (parts.get(1).has_value()) p.scale = f32(*parts.get(1));
  if (parts.get(2).has_value()) p.minimum = f32(*parts.get(2));
  if (parts.get(3).has_value()) {
    p.bias = f32(*parts.get(3));
    TORCH_CHECK(p.bias.numel() == p.n_out, op, ": ", name, " bias size");
  }
  if (w.scalar_type() == at::kFloat) {
    p.kind = Proj::kF32;
  } else if (w.scalar_type() == at::kBFloat16) {
    p.kind = Proj::kBF16;
  } else if (w.scalar_type() == at::kChar) {
    p.kind = Proj::kInt8;
    TORCH_CHECK(p.scale.defined() && p.scale.numel() == p.n_out, op, ": ", name,
                " int8 weight needs one scale per row");
  } else if (w.scalar_type() == at::kByte) {
    p.kind = Proj::kInt4;
    const int64_t groups = p.k_in / Q4_GROUP;
    TORCH_CHECK(p.k_in % Q4_GROUP == 0 && p.scale.defined() && p.minimum.defined() &&
                    p.scale.numel() == p.n_out * groups && p.minimum.numel() == p.n_out * groups,
                op, ": ", name, " 4-bit weight needs (N, K/32) scale and minimum");
  } else {
    TORCH_CHECK(false, op, ": ", name, " weight must be fp32, bf16, int8 or uint8");
  }
  return p;
}

// A norm weight as a contiguous fp32 (D,) CPU tensor.
Tensor norm_weight(const Tensor& w, int64_t dim, const char* op) {
  TORCH_CHECK(w.device().is_cpu() && w.numel() == dim, op,
              ": the norm weights must be CPU (D,) tensors");
  return f32(w);
}

// h (batch, D) += down(silu(g) * u), g|u = gate_up(rms_norm(h, norm)): the MLP half of a layer.
struct MlpLayer {
  Tensor norm;
  float eps;
  Proj gate_up, down;

  MlpLayer(const Tensor& norm_w, double eps_, const c10::List<std::optional<Tensor>>& gu,
           const c10::List<std::optional<Tensor>>& dn, int64_t dim, const char* op)
      : norm(norm_weight(norm_w, dim, op)), eps(static_cast<float>(eps_)) {
    gate_up = make_proj(gu, op, "gate_up", dim);
    TORCH_CHECK(gate_up.n_out % 2 == 0, op, ": gate_up must have 2I outputs");
    down = make_proj(dn, op, "down", gate_up.n_out / 2);
    TORCH_CHECK(down.n_out == dim, op, ": down must have D outputs");
  }

  void run(float* hp, int64_t batch) const {
    const int64_t dim = down.n_out, inter = gate_up.n_out / 2;
    std::vector<float> x(batch * dim), proj(batch * gate_up.n_out), act(batch * inter),
        back(batch * dim);
    rms_norm_rows(hp, norm.data_ptr<float>(), x.data(), batch, dim, eps);
    gate_up.apply(x.data(), batch, proj.data());
    {
      FlushDenormals ftz;
      for (int64_t b = 0; b < batch; ++b) {
        const float *g = proj.data() + b * 2 * inter, *u = g + inter;
        float* a = act.data() + b * inter;
#pragma omp simd
        for (int64_t i = 0; i < inter; ++i) a[i] = silu(g[i]) * u[i];
      }
    }
    down.apply(act.data(), batch, back.data());
    for (int64_t i = 0; i < batch * dim; ++i) hp[i] += back[i];
  }
};

// The attention half of a decoder layer, then its MLP half (see above).
struct AttentionLayer {
  Tensor norm;
  Proj qkv, o;
  MlpLayer mlp;
  int64_t heads;

  AttentionLayer(const Tensor& attn_norm, const Tensor& ffn_norm, double eps,
                 const c10::List<std::optional<Tensor>>& qkv_,
                 const c10::List<std::optional<Tensor>>& o_,
                 const c10::List<std::optional<Tensor>>& gate_up,
                 const c10::List<std::optional<Tensor>>& down, int64_t dim, int64_t kv_heads,
                 int64_t hd, const char* op)
      : norm(norm_weight(attn_norm, dim, op)), mlp(ffn_norm, eps, gate_up, down, dim, op) {
    qkv = make_proj(qkv_, op, "qkv", dim);
    heads = (qkv.n_out - 2 * kv_heads * hd) / hd;
    TORCH_CHECK(heads > 0 && heads % kv_heads == 0 && qkv.n_out == (heads + 2 * kv_heads) * hd,
                op, ": qkv must have (H + 2 Hkv) * hd outputs");
    o = make_proj(o_, op, "o", heads * hd);
    TORCH_CHECK(o.n_out == dim, op, ": o must have D outputs");
  }

  // The caches (B, Hkv, S, hd) get the new token at slot start; cc/sc: RoPE tables or undefined.
  void run(float* hp, int64_t batch, Tensor& k_cache, Tensor& v_cache, int64_t start,
           const Tensor& cc, const Tensor& sc) const {
    const int64_t dim = o.n_out, kv_heads = k_cache.size(1), slots = k_cache.size(2);
    const int64_t hd = k_cache.size(3);
    std::vector<float> x(batch * dim), proj(batch * qkv.n_out), mixed(batch * heads * hd),
        back(batch * dim);
    rms_norm_rows(hp, norm.data_ptr<float>(), x.data(), batch, dim, mlp.eps);
    qkv.apply(x.data(), batch, proj.data());
    const float* qp = proj.data();
    const bool rotary = cc.defined();
    with_cache_type(k_cache, v_cache, [&](auto* kp, auto* vp) {
      attention_step(qp, qkv.n_out, qp + heads * hd, qp + (heads + kv_heads) * hd, qkv.n_out,
                     rotary ? cc.data_ptr<float>() : nullptr,
                     rotary ? sc.data_ptr<float>() : nullptr, kp, vp, batch, heads, kv_heads,
                     slots, hd, start, mixed.data());
    });
    o.apply(mixed.data(), batch, back.data());
    for (int64_t i = 0; i < batch * dim; ++i) hp[i] += back[i];
    mlp.run(hp, batch);
  }

  void check_cache(int64_t batch, const Tensor& k_cache, const Tensor& v_cache, int64_t start,
                   const char* op) const {
    check_kv_cache(k_cache, v_cache, start, op);
    TORCH_CHECK(k_cache.size(0) == batch, op, ": the caches hold ", k_cache.size(0),
                " rows, h ", batch);
    TORCH_CHECK(k_cache.size(3) * (heads + 2 * k_cache.size(1)) == qkv.n_out, op,
                ": the caches' Hkv and hd do not match qkv");
  }
};

Tensor decode_output(const Tensor& h, const char* op) {
  TORCH_CHECK(h.device().is_cpu() && h.scalar_type() == at::kFloat && h.dim() == 3 &&
                  h.size(1) == 1,
              op, ": h must be a CPU fp32 (B, 1, D) tensor");
  return h.contiguous().clone();  // h, to which the sublayer's output is added
}

Tensor decoder_layer_decode(const Tensor& h, const Tensor& attn_norm, const Tensor& ffn_norm,
                            double eps, const c10::List<std::optional<Tensor>>& qkv,
                            const c10::List<std::optional<Tensor>>& o,
                            const c10::List<std::optional<Tensor>>& gate_up,
                            const c10::List<std::optional<Tensor>>& down, Tensor& k_cache,
                            Tensor& v_cache, int64_t start, const std::optional<Tensor>& cos,
                            const std::optional<Tensor>& sin) {
  constexpr const char* op = "decoder_layer_decode";
  Tensor out = decode_output(h, op);
  const int64_t batch = h.size(0);
  check_kv_cache(k_cache, v_cache, start, op);
  const AttentionLayer layer(attn_norm, ffn_norm, eps, qkv, o, gate_up, down, h.size(2),
                             k_cache.size(1), k_cache.size(3), op);
  layer.check_cache(batch, k_cache, v_cache, start, op);
  const auto [cc, sc] = rope_tables(cos, sin, batch, k_cache.size(3), op);
  layer.run(out.data_ptr<float>(), batch, k_cache, v_cache, start, cc, sc);
  return out;
}

// ---------------------------------------------------------------------------------------
// Jamba's other decode sublayers, one op each (why: as for decoder_layer_decode):
//   mamba_mixer_decode: h + out_proj(mamba_decode_step(in_proj(rms_norm(h)))), both states
//                       updated in place;
//   mlp_decode:         h + down(silu(g) * u), g|u = gate_up(rms_norm(h)): the dense MLP of a
//                       Mamba layer (an attention layer's is inside decoder_layer_decode);
//   moe_decode:         h + sum over the top-k experts e of p_e * down_e(silu(gate_e(x)) * up_e(x)),
//                       x = rms_norm(h), p = softmax(router @ x) over ALL experts, not renormalised.
// An expert stack is a list of 4 * E tensors: [weight, scale, minimum, bias] of each expert.
// ---------------------------------------------------------------------------------------
struct MixerLayer {
  Tensor norm;
  float eps;
  Proj in, out;
  MambaWeights step;

  MixerLayer(const Tensor& norm_w, double eps_, const c10::List<std::optional<Tensor>>& in_proj,
             const Tensor& conv_weight, const std::optional<Tensor>& conv_bias,
             const Tensor& x_proj_weight, const Tensor& dt_proj_weight,
             const std::optional<Tensor>& dt_proj_bias, const Tensor& A,
             const std::optional<Tensor>& D, const std::optional<Tensor>& dt_norm_weight,
             const std::optional<Tensor>& b_norm_weight,
             const std::optional<Tensor>& c_norm_weight,
             const c10::List<std::optional<Tensor>>& out_proj, int64_t dim, const char* op)
      : norm(norm_weight(norm_w, dim, op)), eps(static_cast<float>(eps_)) {
    in = make_proj(in_proj, op, "in_proj", dim);
    TORCH_CHECK(in.n_out % 2 == 0, op, ": in_proj must have 2 ED outputs (x and z)");
    const int64_t channels = in.n_out / 2;
    out = make_proj(out_proj, op, "out_proj", channels);
    TORCH_CHECK(out.n_out == dim, op, ": out_proj must have D outputs");
    step = mamba_weights(channels, at::kFloat, conv_weight, conv_bias, x_proj_weight,
                         dt_proj_weight, dt_proj_bias, A, D, dt_norm_weight, b_norm_weight,
                         c_norm_weight);
  }

  void run(float* hp, int64_t batch, Tensor& conv_state, Tensor& ssm_state) const {
    const int64_t dim = out.n_out, channels = in.n_out / 2;
    std::vector<float> x(batch * dim), xz(batch * 2 * channels), y(batch * channels),
        back(batch * dim);
    rms_norm_rows(hp, norm.data_ptr<float>(), x.data(), batch, dim, eps);
    in.apply(x.data(), batch, xz.data());
    mamba_decode_kernel(step.view<float>(batch, xz.data(), 2 * channels, xz.data() + channels,
                                         2 * channels, conv_state, ssm_state, eps),
                        y.data());
    out.apply(y.data(), batch, back.data());
    for (int64_t i = 0; i < batch * dim; ++i) hp[i] += back[i];
  }
};

Tensor mamba_mixer_decode(const Tensor& h, const Tensor& norm, double eps,
                          const c10::List<std::optional<Tensor>>& in_proj, Tensor& conv_state,
                          Tensor& ssm_state, const Tensor& conv_weight,
                          const std::optional<Tensor>& conv_bias, const Tensor& x_proj_weight,
                          const Tensor& dt_proj_weight, const std::optional<Tensor>& dt_proj_bias,
                          const Tensor& A, const std::optional<Tensor>& D,
                          const std::optional<Tensor>& dt_norm_weight,
                          const std::optional<Tensor>& b_norm_weight,
                          const std::optional<Tensor>& c_norm_weight,
                          const c10::List<std::optional<Tensor>>& out_proj) {
  constexpr const char* op = "mamba_mixer_decode";
  Tensor out = decode_output(h, op);
  const MixerLayer layer(norm, eps, in_proj, conv_weight, conv_bias, x_proj_weight,
                         dt_proj_weight, dt_proj_bias, A, D, dt_norm_weight, b_norm_weight,
                         c_norm_weight, out_proj, h.size(2), op);
  layer.step.check_states(h.size(0), at::kFloat, conv_state, ssm_state, op);
  layer.run(out.data_ptr<float>(), h.size(0), conv_state, ssm_state);
  return out;
}

Tensor mlp_decode(const Tensor& h, const Tensor& norm, double eps,
                  const c10::List<std::optional<Tensor>>& gate_up,
                  const c10::List<std::optional<Tensor>>& down) {
  constexpr const char* op = "mlp_decode";
  Tensor out = decode_output(h, op);
  MlpLayer(norm, eps, gate_up, down, h.size(2), op).run(out.data_ptr<float>(), h.size(0));
  return out;
}

std::vector<Proj> expert_projs(const c10::List<std::optional<Tensor>>& parts, int64_t experts,
                               const char* name, int64_t k_in) {
  TORCH_CHECK(static_cast<int64_t>(parts.size()) == 4 * experts, "moe_decode: ", name,
              " must hold [weight, scale, minimum, bias] for each of the ", experts, " experts");
  std::vector<Proj> projs;
  for (int64_t e = 0; e < experts; ++e) {
    c10::List<std::optional<Tensor>> one;
    for (int64_t j = 0; j < 4; ++j) one.push_back(parts.get(4 * e + j));
    projs.push_back(make_proj(one, "moe_decode", name, k_in));
  }
  return projs;
}

struct MoeLayer {
  Tensor norm, router;
  float eps;
  int64_t top_k;
  std::vector<Proj> gate, up, down;

  MoeLayer(const Tensor& norm_w, double eps_, const Tensor& router_, int64_t top_k_,
           const c10::List<std::optional<Tensor>>& g, const c10::List<std::optional<Tensor>>& u,
           const c10::List<std::optional<Tensor>>& d, int64_t dim)
      : norm(norm_weight(norm_w, dim, "moe_decode")), router(router_),
        eps(static_cast<float>(eps_)), top_k(top_k_) {
    constexpr const char* op = "moe_decode";
    TORCH_CHECK(router.device().is_cpu() && router.scalar_type() == at::kFloat &&
                    router.dim() == 2 && router.is_contiguous() && router.size(1) == dim,
                op, ": router must be a contiguous fp32 (E, D) tensor");
    const int64_t experts = router.size(0);
    TORCH_CHECK(top_k >= 1 && top_k <= experts, op, ": top_k must be in [1, E]");
    gate = expert_projs(g, experts, "gate", dim);
    up = expert_projs(u, experts, "up", dim);
    const int64_t inter = gate[0].n_out;
    for (int64_t e = 0; e < experts; ++e)
      TORCH_CHECK(gate[e].n_out == inter && up[e].n_out == inter, op,
                  ": every expert's gate and up must have the same I outputs");
    down = expert_projs(d, experts, "down", inter);
    for (const Proj& p : down) TORCH_CHECK(p.n_out == dim, op, ": every down must have D outputs");
  }

  void run(float* hp, int64_t batch) const {
    const int64_t dim = router.size(1), experts = router.size(0), inter = gate[0].n_out;
    std::vector<float> x(batch * dim), probs(experts), gu(top_k * 2 * inter), ys(top_k * dim);
    std::vector<int64_t> order(experts);
    std::vector<const Proj*> projs;
    std::vector<const float*> ins;
    std::vector<float*> outs;
    rms_norm_rows(hp, norm.data_ptr<float>(), x.data(), batch, dim, eps);
    for (int64_t b = 0; b < batch; ++b) {
      const float* xb = x.data() + b * dim;
      matvec_f32(xb, 1, router.data_ptr<float>(), nullptr, experts, dim, probs.data());
      // Softmax over all experts (libm's exp: E values), then the top k in descending order
      // (exact ties to the lower index; torch.topk leaves their order unspecified).
      const float top = *std::max_element(probs.begin(), probs.end());
      float total = 0.0f;
      for (float& p : probs) total += (p = std::exp(p - top));
      for (float& p : probs) p /= total;
      for (int64_t e = 0; e < experts; ++e) order[e] = e;
      std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                        [&](int64_t i, int64_t j) {
                          return probs[i] > probs[j] || (probs[i] == probs[j] && i < j);
                        });
      // The chosen experts' gates and ups in one parallel region, then their downs in another.
      projs.clear(), ins.clear(), outs.clear();
      for (int64_t slot = 0; slot < top_k; ++slot) {
        const int64_t e = order[slot];
        float* gate_out = gu.data() + slot * 2 * inter;
        projs.insert(projs.end(), {&gate[e], &up[e]});
        ins.insert(ins.end(), {xb, xb});
        outs.insert(outs.end(), {gate_out, gate_out + inter});
      }
      apply_together(projs, ins, 1, outs);
      projs.clear(), ins.clear(), outs.clear();
      for (int64_t slot = 0; slot < top_k; ++slot) {
        float* gv = gu.data() + slot * 2 * inter;
        const float* uv = gv + inter;
        {
          FlushDenormals ftz;
#pragma omp simd
          for (int64_t i = 0; i < inter; ++i) gv[i] = silu(gv[i]) * uv[i];
        }
        projs.push_back(&down[order[slot]]);
        ins.push_back(gv);
        outs.push_back(ys.data() + slot * dim);
      }
      apply_together(projs, ins, 1, outs);
      std::vector<float> acc(dim, 0.0f);
      for (int64_t slot = 0; slot < top_k; ++slot) {
        const float weight = probs[order[slot]];
        const float* y = ys.data() + slot * dim;
        for (int64_t i = 0; i < dim; ++i) acc[i] += y[i] * weight;
      }
      for (int64_t i = 0; i < dim; ++i) hp[b * dim + i] += acc[i];
    }
  }
};

Tensor moe_decode(const Tensor& h, const Tensor& norm, double eps, const Tensor& router,
                  int64_t top_k, const c10::List<std::optional<Tensor>>& gate,
                  const c10::List<std::optional<Tensor>>& up,
                  const c10::List<std::optional<Tensor>>& down) {
  Tensor out = decode_output(h, "moe_decode");
  MoeLayer(norm, eps, router, top_k, gate, up, down, h.size(2))
      .run(out.data_ptr<float>(), h.size(0));
  return out;
}

// ---------------------------------------------------------------------------------------
// DecodePlan: a whole decode step of a model (every layer, the final norm and the LM head) as
// ONE call, for a model whose layers all run as the sublayer ops above. Built once (the
// layers' arguments checked and kept), then run once per token:
//   plan = torch.classes.model_kernels.DecodePlan(dim)
//   plan.add_mamba_mixer(...) / add_attention_layer(...) / add_moe(...) / add_mlp(...)  in
//   layer order, then plan.set_head(norm, eps, lm_head); logits = plan.run(h, states, ...)
// Why: between the sublayer ops, Python ran the model's layer loop with caches that the
// weights had just streamed through: measured 1.2 ms a token on the 300M Jamba (4.5%), where
// the same Python warm costs 0.26 ms.
// ---------------------------------------------------------------------------------------
struct DecodePlan : torch::CustomClassHolder {
  enum Kind { kMixer, kAttention, kMoe, kMlp };
  int64_t dim;
  std::vector<std::pair<Kind, size_t>> steps;  // in order: what runs, index in its vector
  mutable std::vector<MixerLayer> mixers;  // their step.A: -exp(A_log), redone when it changes
  std::vector<Tensor> a_logs;
  mutable std::vector<int64_t> a_versions;
  std::vector<AttentionLayer> attentions;
  std::vector<MoeLayer> moes;
  std::vector<MlpLayer> mlps;
  Tensor head_norm;
  float head_eps = 0.0f;
  std::optional<Proj> head;

  explicit DecodePlan(int64_t dim_) : dim(dim_) {}

  void add_mamba_mixer(const Tensor& norm, double eps,
                       const c10::List<std::optional<Tensor>>& in_proj, const Tensor& conv_weight,
                       const std::optional<Tensor>& conv_bias, const Tensor& x_proj_weight,
                       const Tensor& dt_proj_weight, const std::optional<Tensor>& dt_proj_bias,
                       const Tensor& A_log, const std::optional<Tensor>& D,
                       const std::optional<Tensor>& dt_norm_weight,
                       const std::optional<Tensor>& b_norm_weight,
                       const std::optional<Tensor>& c_norm_weight,
                       const c10::List<std::optional<Tensor>>& out_proj) {
    TORCH_CHECK(A_log.device().is_cpu(), "DecodePlan.add_mamba_mixer: A_log must be on the CPU");
    mixers.emplace_back(norm, eps, in_proj, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                        dt_proj_bias, minus_exp(A_log), D, dt_norm_weight, b_norm_weight,
                        c_norm_weight, out_proj, dim, "DecodePlan.add_mamba_mixer");
    a_logs.push_back(A_log);
    a_versions.push_back(A_log._version());
    steps.emplace_back(kMixer, mixers.size() - 1);
  }

  static Tensor minus_exp(const Tensor& a_log) { return a_log.detach().to(at::kFloat).exp().neg_(); }

  void add_attention_layer(const Tensor& attn_norm, const Tensor& ffn_norm, double eps,
                           const c10::List<std::optional<Tensor>>& qkv,
                           const c10::List<std::optional<Tensor>>& o,
                           const c10::List<std::optional<Tensor>>& gate_up,
                           const c10::List<std::optional<Tensor>>& down, int64_t kv_heads,
                           int64_t head_dim) {
    attentions.emplace_back(attn_norm, ffn_norm, eps, qkv, o, gate_up, down, dim, kv_heads,
                            head_dim, "DecodePlan.add_attention_layer");
    steps.emplace_back(kAttention, attentions.size() - 1);
  }

  void add_moe(const Tensor& norm, double eps, const Tensor& router, int64_t top_k,
               const c10::List<std::optional<Tensor>>& gate,
               const c10::List<std::optional<Tensor>>& up,
               const c10::List<std::optional<Tensor>>& down) {
    moes.emplace_back(norm, eps, router, top_k, gate, up, down, dim);
    steps.emplace_back(kMoe, moes.size() - 1);
  }

  void add_mlp(const Tensor& norm, double eps, const c10::List<std::optional<Tensor>>& gate_up,
               const c10::List<std::optional<Tensor>>& down) {
    mlps.emplace_back(norm, eps, gate_up, down, dim, "DecodePlan.add_mlp");
    steps.emplace_back(kMlp, mlps.size() - 1);
  }

  void set_head(const Tensor& norm, double eps, const c10::List<std::optional<Tensor>>& lm_head) {
    head_norm = norm_weight(norm, dim, "DecodePlan.set_head");
    head_eps = static_cast<float>(eps);
    head = make_proj(lm_head, "DecodePlan.set_head", "lm_head", dim);
  }

  // h (B, 1, D) fp32, the embedded tokens -> logits (B, 1, V). states: per mixer, its conv and
  // ssm states; per attention layer, its k and v caches (in layer order); start: the slot of
  // the new token; cos/sin: RoPE tables (B, 1, hd) or None.
  Tensor run(const Tensor& h, std::vector<Tensor> states, int64_t start,
             const std::optional<Tensor>& cos, const std::optional<Tensor>& sin) const {
    constexpr const char* op = "DecodePlan.run";
    TORCH_CHECK(head.has_value(), op, ": set_head was not called");
    TORCH_CHECK(h.device().is_cpu() && h.scalar_type() == at::kFloat && h.dim() == 3 &&
                    h.size(1) == 1 && h.size(2) == dim,
                op, ": h must be a CPU fp32 (B, 1, D) tensor");
    TORCH_CHECK(states.size() == 2 * (mixers.size() + attentions.size()), op, ": expected ",
                2 * (mixers.size() + attentions.size()), " state tensors, got ", states.size());
    const int64_t batch = h.size(0);
    size_t next = 0;  // check every state before anything is written
    int64_t head_dim = 0;
    for (const auto& [kind, i] : steps) {
      if (kind == kMixer) {
        mixers[i].step.check_states(batch, at::kFloat, states[next], states[next + 1], op);
      } else if (kind == kAttention) {
        attentions[i].check_cache(batch, states[next], states[next + 1], start, op);
        head_dim = states[next].size(3);
      }
      next += kind == kMixer || kind == kAttention ? 2 : 0;
    }
    Tensor rope_cos, rope_sin;
    if (!attentions.empty())
      std::tie(rope_cos, rope_sin) = rope_tables(cos, sin, batch, head_dim, op);
    for (size_t i = 0; i < mixers.size(); ++i) {  // A_log written in place (load_state_dict)
      if (a_logs[i]._version() != a_versions[i]) {
        mixers[i].step.A = minus_exp(a_logs[i]);
        a_versions[i] = a_logs[i]._version();
      }
    }
    Tensor hidden = h.contiguous().clone();
    float* hp = hidden.data_ptr<float>();
    next = 0;
    for (const auto& [kind, i] : steps) {
      switch (kind) {
        case kMixer:
          mixers[i].run(hp, batch, states[next], states[next + 1]);
          next += 2;
          break;
        case kAttention:
          attentions[i].run(hp, batch, states[next], states[next + 1], start, rope_cos, rope_sin);
          next += 2;
          break;
        case kMoe:
          moes[i].run(hp, batch);
          break;
        case kMlp:
          mlps[i].run(hp, batch);
          break;
      }
    }
    std::vector<float> x(batch * dim);
    rms_norm_rows(hp, head_norm.data_ptr<float>(), x.data(), batch, dim, head_eps);
    Tensor logits = at::empty({batch, 1, head->n_out}, h.options());
    head->apply(x.data(), batch, logits.data_ptr<float>());
    return logits;
  }
};

}  // namespace

TORCH_LIBRARY(model_kernels, m) {
  m.class_<DecodePlan>("DecodePlan")
      .def(torch::init<int64_t>())
      .def("add_mamba_mixer", &DecodePlan::add_mamba_mixer)
      .def("add_attention_layer", &DecodePlan::add_attention_layer)
      .def("add_moe", &DecodePlan::add_moe)
      .def("add_mlp", &DecodePlan::add_mlp)
      .def("set_head", &DecodePlan::set_head)
      .def("run", &DecodePlan::run);
  m.def(
      "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? z, Tensor? delta_bias, bool delta_softplus, Tensor? initial_state) "
      "-> (Tensor, Tensor)");
  m.def(
      "causal_conv1d_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_state, "
      "bool silu) -> (Tensor, Tensor)");
  m.def(
      "causal_conv1d_update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, "
      "bool silu) -> Tensor");
  m.def(
      "selective_state_update(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, "
      "Tensor C, Tensor? D, Tensor? z, Tensor? dt_bias, bool dt_softplus) -> Tensor");
  m.def(
      "mamba_decode_step(Tensor x, Tensor? z, Tensor(a!) conv_state, Tensor(b!) ssm_state, "
      "Tensor conv_weight, Tensor? conv_bias, Tensor x_proj_weight, Tensor dt_proj_weight, "
      "Tensor? dt_proj_bias, Tensor A, Tensor? D, Tensor? dt_norm_weight, "
      "Tensor? b_norm_weight, Tensor? c_norm_weight, float norm_eps) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor weight, Tensor scale, Tensor? bias) -> Tensor");
  m.def("int4_linear(Tensor x, Tensor packed, Tensor scale, Tensor minimum, Tensor? bias) -> Tensor");
  m.def("quantize_activations(Tensor x) -> Tensor");
  m.def("dequantize_int8(Tensor weight, Tensor scale) -> Tensor");
  m.def("dequantize_int4(Tensor packed, Tensor scale, Tensor minimum) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("linear_matvec(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("silu_mul(Tensor x) -> Tensor");
  m.def(
      "decoder_layer_decode(Tensor h, Tensor attn_norm, Tensor ffn_norm, float eps, "
      "Tensor?[] qkv, Tensor?[] o, Tensor?[] gate_up, Tensor?[] down, Tensor(a!) k_cache, "
      "Tensor(b!) v_cache, int start, Tensor? cos, Tensor? sin) -> Tensor");
  m.def(
      "mamba_mixer_decode(Tensor h, Tensor norm, float eps, Tensor?[] in_proj, "
      "Tensor(a!) conv_state, Tensor(b!) ssm_state, Tensor conv_weight, Tensor? conv_bias, "
      "Tensor x_proj_weight, Tensor dt_proj_weight, Tensor? dt_proj_bias, Tensor A, Tensor? D, "
      "Tensor? dt_norm_weight, Tensor? b_norm_weight, Tensor? c_norm_weight, "
      "Tensor?[] out_proj) -> Tensor");
  m.def(
      "mlp_decode(Tensor h, Tensor norm, float eps, Tensor?[] gate_up, Tensor?[] down) -> Tensor");
  m.def(
      "moe_decode(Tensor h, Tensor norm, float eps, Tensor router, int top_k, Tensor?[] gate, "
      "Tensor?[] up, Tensor?[] down) -> Tensor");
  m.def(
      "attention_decode(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
      "int start, Tensor? cos, Tensor? sin) -> Tensor");
}

TORCH_LIBRARY_IMPL(model_kernels, CPU, m) {
  m.impl("selective_scan_fwd", &selective_scan_fwd);
  m.impl("causal_conv1d_fwd", &causal_conv1d_fwd);
  m.impl("causal_conv1d_update", &causal_conv1d_update);
  m.impl("selective_state_update", &selective_state_update);
  m.impl("mamba_decode_step", &mamba_decode_step);
  m.impl("int8_linear", &int8_linear);
  m.impl("int4_linear", &int4_linear);
  m.impl("quantize_activations", &quantize_activations);
  m.impl("dequantize_int8", &dequantize_int8);
  m.impl("dequantize_int4", &dequantize_int4);
  m.impl("rms_norm", &rms_norm);
  m.impl("linear_matvec", &linear_matvec);
  m.impl("rope", &rope);
  m.impl("silu_mul", &silu_mul);
  m.impl("decoder_layer_decode", &decoder_layer_decode);
  m.impl("attention_decode", &attention_decode);
  m.impl("mamba_mixer_decode", &mamba_mixer_decode);
  m.impl("mlp_decode", &mlp_decode);
  m.impl("moe_decode", &moe_decode);
}
