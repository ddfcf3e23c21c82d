// groklab's fused prefix-masked attention for small heads on the CPU (see attn_kernel.py).
//
// For every (example b, head h) and query i, the visible keys are j < lim[b, i]:
//   s_j = q_i . k_j,   p = softmax(s),   z_i = sum_j p_j v_j,   lse_i = log sum_j exp(s_j)
// (q comes pre-scaled by 1/sqrt(d_head)). One (b, h) pair's keys and values are copied,
// transposed (AVX2 8x8 blocks for float), into a small buffer, so that every inner loop runs over
// keys, contiguous and vectorisable. The backward takes p from the forward's saved pattern (its
// rows packed, each only as long as its keys: ~7.5 MB for induction's layer 0), or, when the
// forward did not save it, recomputes p from the scores and lse:
//   dp_j = dz_i . v_j,  D_i = dz_i . z_i,  ds_j = p_j (dp_j - D_i),
//   dq_i = sum_j ds_j k_j,  dk_j += ds_j q_i,  dv_j += p_j dz_i.
// Tensors are [B, L, H, d] with any strides on B and L and the d axis contiguous; the work is
// split over examples b with at::parallel_for (torch's intra-op threads). forward_tables and
// backward_tables take a first layer's q | k | v as token and position tables instead (Table,
// TableSink): rows are added as they are loaded and gradients scattered into the tables.
// softmax_ce_exact (at the end) is models/softmax_ce.py's cross-entropy, one pass per row.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

typedef float v8f __attribute__((vector_size(32), aligned(4)));  // unaligned loads and stores
typedef int v8i __attribute__((vector_size(32), aligned(4)));

// exp(x) for x <= 0, 8 lanes: Cephes' expf range reduction and polynomial (~1 ulp; below -87 it
// gives exp(-87) = 1.6e-38, under float's normal range)
inline v8f exp8(v8f x) {
  const v8f magic = v8f{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  x = x < -87.0f ? v8f{} - 87.0f : x;
  const v8f t = x * 1.44269504088896341f + magic;
  const v8f k = t - magic;
  const v8i e = (((v8i)t - (v8i)magic) + 127) << 23;
  v8f r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  v8f q = r * 1.9875691500e-4f + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  q = q * r * r + r + 1.0f;
  return q * (v8f)e;
}

inline v8f log8(v8f x) {  // log(x) for normal x > 0, 8 lanes: Cephes' logf (~1 ulp)
  const v8i bits = (v8i)x;
  v8i e = ((bits >> 23) & 0xff) - 126;
  x = (v8f)((bits & 0x807fffff) | 0x3f000000);  // the mantissa, in [0.5, 1)
  const v8i small = x < 0.707106781186547524f;
  e = small ? e - 1 : e;
  x = small ? x + x - 1.0f : x - 1.0f;
  const v8f z = x * x;
  v8f y = x * 7.0376836292e-2f - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  const v8f ef = __builtin_convertvector(e, v8f);
  y = y + ef * -2.12194440e-4f - 0.5f * z;
  return x + y + ef * 0.693359375f;
}

// l[i] += log(s[i]) for i < n (s[i] normal and > 0)
inline void add_log(float* l, const float* s, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    *reinterpret_cast<v8f*>(l + i) += log8(*reinterpret_cast<const v8f*>(s + i));
  for (; i < n; ++i) l[i] += std::log(s[i]);
}

// s[j] = exp(s[j] - m) for j < n, where s[j] <= m (scores minus their max, or minus their
// log-sum-exp); float: 8 lanes at a time (exp8), the lanes past n, up to the next multiple of 8,
// get garbage that the caller zeroes (rows are padded to 16)
inline void exp_sub(float* s, int64_t n, float m) {
  for (int64_t j = 0; j < n; j += 8) {
    v8f* p = reinterpret_cast<v8f*>(s + j);
    *p = exp8(*p - m);
  }
}

// One forward row of n >= 1 scores in a buffer at least nc wide (nc a multiple of 8, >= n):
// s[j] = exp(s[j] - max) for j < n and 0 for j in [n, nc); returns {max, sum of the exps}. One
// pass for the max and one for exp, sum and the zeroed tail (the lanes past n masked), instead
// of separate max, exp, sum and zeroing loops with their scalar remainders.
inline std::pair<float, float> exp_row(float* s, int64_t n, int64_t nc) {
  const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
  const int64_t nf = n & ~int64_t(7);
  const v8i keep = lane < int(n - nf);  // the tail vector's lanes below n
  v8f mx = v8f{} - INFINITY;
  for (int64_t j = 0; j < nf; j += 8) {
    const v8f x = *reinterpret_cast<const v8f*>(s + j);
    mx = x > mx ? x : mx;
  }
  if (nf < n) {
    const v8f x = *reinterpret_cast<const v8f*>(s + nf);
    mx = keep ? (x > mx ? x : mx) : mx;
  }
  float m = mx[0];
  for (int c = 1; c < 8; ++c) m = mx[c] > m ? mx[c] : m;
  v8f acc = {};
  int64_t j = 0;
  for (; j < nf; j += 8) {
    v8f* p = reinterpret_cast<v8f*>(s + j);
    const v8f e = exp8(*p - m);
    *p = e;
    acc += e;
  }
  if (nf < n) {
    v8f* p = reinterpret_cast<v8f*>(s + j);
    const v8f e = keep ? exp8(*p - m) : v8f{};
    *p = e;
    acc += e;
    j += 8;
  }
  for (; j < nc; j += 8) *reinterpret_cast<v8f*>(s + j) = v8f{};
  float sum = 0;
  for (int c = 0; c < 8; ++c) sum += acc[c];
  return {m, sum};
}

inline void exp_sub(double* s, int64_t n, double m) {
  for (int64_t j = 0; j < n; ++j) s[j] = std::exp(s[j] - m);
}

template <typename T>
inline T row_max(const T* s, int64_t n) {
  T m = s[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 1; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

template <typename T>
inline T row_sum(const T* s, int64_t n) {
  T a = 0;
#pragma omp simd reduction(+ : a)
  for (int64_t j = 0; j < n; ++j) a += s[j];
  return a;
}

template <typename T>
struct View {  // a [B, L, H, d] tensor with strides (sB, sL, d, 1)
  T* ptr;
  int64_t sB, sL, d;
  T* row(int64_t b, int64_t l, int64_t h) const { return ptr + b * sB + l * sL + h * d; }
};

template <typename T>
View<T> view(const torch::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.size(3)};
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be [B, L, H, d]");
  TORCH_CHECK(t.stride(3) == 1 && t.stride(2) == t.size(3), name, ": heads must be contiguous [H, d] rows");
}

constexpr int64_t W = 16;  // tile width: every buffer's rows are padded to a multiple of 16
inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
inline int64_t pad(int64_t n) { return round_up(n, W); }

// One head's row of d <= 16 values. D = 8, 12 or 16: d at compile time, as whole AVX2 vectors
// (float; a libc memcpy call per 48-byte row was ~20% of the kernel's samples in perf); D = 0:
// any d, plain loops. with_d picks D once per row loop (a d branch per row costs as much again).
template <typename T, typename F>
inline void with_d(int64_t d, F&& f) {
#ifdef __AVX2__
  if constexpr (std::is_same_v<T, float>) {
    if (d == 8) return f(std::integral_constant<int64_t, 8>{});
    if (d == 12) return f(std::integral_constant<int64_t, 12>{});
    if (d == 16) return f(std::integral_constant<int64_t, 16>{});
  }
#endif
  f(std::integral_constant<int64_t, 0>{});
}

template <int64_t D, typename T>
inline void row_copy(T* o, const T* a, int64_t d) {  // o = a
#ifdef __AVX2__
  if constexpr (D != 0) {
    _mm256_storeu_ps(o, _mm256_loadu_ps(a));
    if constexpr (D == 12) _mm_storeu_ps(o + 8, _mm_loadu_ps(a + 8));
    if constexpr (D == 16) _mm256_storeu_ps(o + 8, _mm256_loadu_ps(a + 8));
    return;
  }
#endif
  std::memcpy(o, a, d * sizeof(T));
}

template <int64_t D, typename T>
inline void row_add(T* o, const T* a, const T* b, int64_t d) {  // o = a + b (o may be a)
#ifdef __AVX2__
  if constexpr (D != 0) {
    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(b)));
    if constexpr (D == 12) _mm_storeu_ps(o + 8, _mm_add_ps(_mm_loadu_ps(a + 8), _mm_loadu_ps(b + 8)));
    if constexpr (D == 16) _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(a + 8), _mm256_loadu_ps(b + 8)));
    return;
  }
#endif
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) o[c] = a[c] + b[c];
}

// rows [0, n) of buf [rows, W] into a [B, L, H, d] view, rows [n, L) zeroed
template <typename T>
inline void store(const View<T>& dst, int64_t b, int64_t h, const T* buf, int64_t n, int64_t L) {
  with_d<T>(dst.d, [&](auto D) {
    T* r = dst.row(b, 0, h);
    for (int64_t j = 0; j < L; ++j, r += dst.sL) {
      if (j < n) row_copy<D.value>(r, buf + j * W, dst.d);
      else std::memset(r, 0, dst.d * sizeof(T));
    }
  });
}

// Where q, k, v come from. Dense: rows of a [B, L, H, d] view. Table: layer 0's packed projections
// x_0 [W_Q | W_K | W_V] as a token table and a position table (models/multipos.py, _Embed): row j
// of example b is TE[tok[b, j]] + TP[(b / N) * P + j] (TE [R, C], TP [E * P, C], C = 3 H d; the
// head's d columns at off + h d), added as it is loaded, so the gathered rows are never stored.
template <typename T>
struct Dense {
  View<T> v;
  void rows(int64_t b, int64_t h, int64_t n, T* buf) const {
    with_d<T>(v.d, [&](auto D) {
      const T* src = v.row(b, 0, h);
      for (int64_t j = 0; j < n; ++j, src += v.sL) row_copy<D.value>(buf + j * W, src, v.d);
    });
  }
};

template <typename T>
struct Table {
  const T* TE;
  const T* TP;
  const int64_t* tok;  // [B, L] rows of TE (member offsets included)
  int64_t C, L, N, P, off, d;
  void rows(int64_t b, int64_t h, int64_t n, T* buf) const {
    const T* tp = TP + (b / N) * P * C + off + h * d;
    const int64_t* tk = tok + b * L;
    with_d<T>(d, [&](auto D) {
      for (int64_t j = 0; j < n; ++j) row_add<D.value>(buf + j * W, TE + tk[j] * C + off + h * d, tp + j * C, d);
    });
  }
};

// Folded: a Table row plus a Dense row. Layer 1's k | v of a 2-layer attention-only model are
// x_1 W = c x_0 W + z_0 (W_O W) (models/multipos.py): the table part from layer 0's token and
// position tables, the dense part one product of layer 0's head outputs, so x_1 is never formed.
template <typename T>
struct Folded {
  Table<T> tab;
  View<T> dense;
  void rows(int64_t b, int64_t h, int64_t n, T* buf) const {
    const T* tp = tab.TP + (b / tab.N) * tab.P * tab.C + tab.off + h * tab.d;
    const int64_t* tk = tab.tok + b * tab.L;
    const T* src = dense.row(b, 0, h);
    with_d<T>(tab.d, [&](auto D) {
      for (int64_t j = 0; j < n; ++j, src += dense.sL) {
        T* o = buf + j * W;
        row_add<D.value>(o, tab.TE + tk[j] * tab.C + tab.off + h * tab.d, tp + j * tab.C, tab.d);
        row_add<D.value>(o, o, src, tab.d);
      }
    });
  }
};

// Where dq, dk, dv (which = 0, 1, 2) go. DenseSink: into [B, L, H, d] views, rows [n, L) zeroed.
// TableSink: added into chunk-local gradients of TE and TP (the scatter of the gather's
// backward), which finish() sums in chunk order, so the result does not depend on the threads'
// timing.
template <typename T>
struct DenseSink {
  View<T> out[3];
  struct Local {};
  Local local() const { return {}; }
  void put(Local&, int which, int64_t b, int64_t h, const T* buf, int64_t n, int64_t L) const {
    store(out[which], b, h, buf, n, L);
  }
  void commit(int64_t, Local&) {}
  void finish() {}
};

template <typename T>
struct TableSink {
  Table<T> tab;  // the layout (tok, C, L, N, P, d); q, k, v at column offsets 0, H d, 2 H d
  int64_t H, R, EP;
  T* dTE;  // [R, C], zeroed by the caller
  T* dTP;  // [EP, C], zeroed by the caller
  struct Local {
    std::vector<T> te, tp;
  };
  std::mutex mu;
  std::vector<std::pair<int64_t, Local>> parts;
  Local local() const { return {std::vector<T>(R * tab.C, 0), std::vector<T>(EP * tab.C, 0)}; }
  void put(Local& l, int which, int64_t b, int64_t h, const T* buf, int64_t n, int64_t) const {
    const int64_t o = (which * H + h) * tab.d, C = tab.C, d = tab.d;
    T* tp = l.tp.data() + (b / tab.N) * tab.P * C + o;
    const int64_t* tk = tab.tok + b * tab.L;
    with_d<T>(d, [&](auto D) {
      for (int64_t j = 0; j < n; ++j) {
        T* e = l.te.data() + tk[j] * C + o;
        row_add<D.value>(e, e, buf + j * W, d);
        row_add<D.value>(tp + j * C, tp + j * C, buf + j * W, d);
      }
    });
  }
  void commit(int64_t lo, Local& l) {
    std::lock_guard<std::mutex> lock(mu);
    parts.emplace_back(lo, std::move(l));
  }
  void finish() {
    std::sort(parts.begin(), parts.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [lo, l] : parts) {
      for (int64_t i = 0; i < R * tab.C; ++i) dTE[i] += l.te[i];
      for (int64_t i = 0; i < EP * tab.C; ++i) dTP[i] += l.tp[i];
    }
  }
};

// FoldSink: dq into a dense view; dk and dv into dense views (the gradient of Folded's dense
// part) and, the same rows, scattered into the k | v tables (TableSink, which 1 -> 0, 2 -> 1).
template <typename T>
struct FoldSink {
  DenseSink<T> dense;
  TableSink<T> table;
  using Local = typename TableSink<T>::Local;
  Local local() const { return table.local(); }
  void put(Local& l, int which, int64_t b, int64_t h, const T* buf, int64_t n, int64_t L) const {
    typename DenseSink<T>::Local none;
    dense.put(none, which, b, h, buf, n, L);
    if (which > 0) table.put(l, which - 1, b, h, buf, n, L);
  }
  void commit(int64_t lo, Local& l) { table.commit(lo, l); }
  void finish() { table.finish(); }
};

// v stays in a register from here: without this, GCC folded B's row into every FMA as a memory
// operand, loading it MR times (12 loads per 8 FMAs, load-bound; kernel 1.10x faster without)
template <typename V>
inline void in_register(V& v) {
#ifdef __AVX__
  __asm__("" : "+x"(v));
#else
  (void)v;
#endif
}

// The register tile: C[i, 0:16] (+)= sum_{r0 <= r < r1} A(i, r) * B[r, 0:16] for MR rows i, with
// A(i, r) = A[i * sai + r * sar] (any strides: transposes are free) and B row-major (ld ldb).
template <typename T, int MR>
inline void tile(const T* A, int64_t sai, int64_t sar, const T* B, int64_t ldb, T* C, int64_t ldc,
                 int64_t r0, int64_t r1, bool accumulate) {
  typedef T vec __attribute__((vector_size(32), aligned(sizeof(T))));  // unaligned loads and stores
  constexpr int NV = W * sizeof(T) / 32;
  vec acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = vec{};
  for (int64_t r = r0; r < r1; ++r) {
    const vec* bp = reinterpret_cast<const vec*>(B + r * ldb);
    vec b[NV];
    for (int v = 0; v < NV; ++v) in_register(b[v] = bp[v]);
    for (int m = 0; m < MR; ++m) {
      const T a = A[m * sai + r * sar];
      for (int v = 0; v < NV; ++v) acc[m][v] += a * b[v];
    }
  }
  for (int m = 0; m < MR; ++m) {
    vec* c = reinterpret_cast<vec*>(C + m * ldc);
    for (int v = 0; v < NV; ++v) c[v] = accumulate ? c[v] + acc[m][v] : acc[m][v];
  }
}

// C[i, j] = sum_r A(i, r) B[r, j] for i < M (M a multiple of MR), j < N (a multiple of 16);
// row block i0 reduces over r in [rlo(i0), rhi(i0)) and writes columns [0, ncol(i0)).
template <typename T, typename Lo, typename Hi, typename Ncol>
inline void gemm(const T* A, int64_t sai, int64_t sar, const T* B, int64_t ldb, T* C, int64_t ldc,
                 int64_t M, Lo rlo, Hi rhi, Ncol ncol) {
  constexpr int MR = sizeof(T) == 4 ? 4 : 2;
  for (int64_t i0 = 0; i0 < M; i0 += MR) {
    const int64_t lo = rlo(i0), hi = rhi(i0), nc = ncol(i0);
    for (int64_t j0 = 0; j0 < nc; j0 += W)
      tile<T, MR>(A + i0 * sai, sai, sar, B + j0, ldb, C + i0 * ldc + j0, ldc, lo, hi, false);
  }
}

template <typename T>
struct Head {  // one (example, head)'s padded buffers; rows of Q-like [Mq, W], K-like [Nk, W]
  int64_t Lq, Lk, d, Mq, Nk;  // queries and keys padded to 16 (rows of a K-like buffer, columns of a scores row)
  std::vector<T> q, k, v, kt, vt, s, z, dz, g;
  Head(int64_t Lq_, int64_t Lk_, int64_t d_) : Lq(Lq_), Lk(Lk_), d(d_) {
    Mq = pad(Lq);
    Nk = pad(Lk);
    q.assign(Mq * W, 0); k.assign(Nk * W, 0); v.assign(Nk * W, 0); z.assign(Mq * W, 0); dz.assign(Mq * W, 0);
    kt.assign(W * Nk, 0); vt.assign(W * Nk, 0); s.assign(Mq * Nk, 0); g.assign(Nk * W, 0);
  }
  // rows [0, n) of head h of example b (a Dense or Table source) into buf [rows, W], and
  // optionally its transpose [W, Nk], made from the buffer (in L1)
  template <typename Src>
  void load(const Src& src, int64_t b, int64_t h, int64_t n, T* buf, T* tr) {
    src.rows(b, h, n, buf);
    if (tr) transpose(buf, n, tr);
  }
  // tr[c, j] = buf[j, c] for c < d and j < n (columns j in [n, pad8(n)) may get stale rows of buf:
  // every user zeroes or ignores the columns past its row's key count)
  void transpose(const T* buf, int64_t n, T* tr) const {
#ifdef __AVX2__
    if constexpr (std::is_same_v<T, float>) {
      for (int64_t j0 = 0; j0 < n; j0 += 8)
        for (int64_t c0 = 0; c0 < d; c0 += 8)
          transpose8(buf + j0 * W + c0, tr + c0 * Nk + j0, std::min<int64_t>(8, d - c0));
      return;
    }
#endif
    for (int64_t c = 0; c < d; ++c) {
      T* t = tr + c * Nk;
      const T* col = buf + c;
      for (int64_t j = 0; j < n; ++j) t[j] = col[j * W];
    }
  }
#ifdef __AVX2__
  // the 8x8 block src[r * W + c] (r, c < 8) into dst[c * Nk + r] for the first `rows` c
  void transpose8(const float* src, float* dst, int64_t rows) const {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + W), r2 = _mm256_loadu_ps(src + 2 * W),
           r3 = _mm256_loadu_ps(src + 3 * W), r4 = _mm256_loadu_ps(src + 4 * W), r5 = _mm256_loadu_ps(src + 5 * W),
           r6 = _mm256_loadu_ps(src + 6 * W), r7 = _mm256_loadu_ps(src + 7 * W);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
           u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
           u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    const __m256 c[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                         _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                         _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                         _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
    for (int64_t k = 0; k < rows; ++k) _mm256_storeu_ps(dst + k * Nk, c[k]);
  }
#endif
};

// Live rows of one example: Lq less its trailing queries with no keys (lim 0: z = 0, no
// gradient, no work), and that count rounded up to whole row tiles of MR.
template <int MR>
inline std::pair<int64_t, int64_t> live_rows(const int32_t* li, int64_t Lq) {
  int64_t n = Lq;
  while (n > 0 && li[n - 1] == 0) --n;
  return {n, round_up(n, MR)};
}

// Row tiles' key counts for one example: tl[t] = the most keys any query of row tile t sees;
// returns the most keys any query sees.
template <int MR>
int64_t tile_limits(const int32_t* li, int64_t Lq, int64_t Mq, std::vector<int64_t>& tl) {
  int64_t nmax = 0;
  for (int64_t t = 0; t * MR < Mq; ++t) {
    int64_t n = 0;
    for (int64_t i = t * MR; i < std::min(Lq, (t + 1) * MR); ++i) n = std::max<int64_t>(n, li[i]);
    tl[t] = n;
    nmax = std::max(nmax, n);
  }
  return nmax;
}

// The saved pattern (the forward's softmax, kept for the backward when asked for): query i of
// example b keeps round_up(lim[b, i], 8) values (p, then zeros), its rows one after another,
// head after head, example after example. base[b] = the values of examples before b per head
// (example b's block starts at H base[b] and holds H rows of base[b + 1] - base[b] values).
inline int64_t pattern_row(int32_t n) { return round_up(n, 8); }

std::vector<int64_t> pattern_base(const torch::Tensor& lim, int64_t B, int64_t Lq) {
  const int32_t* lm = lim.data_ptr<int32_t>();
  std::vector<int64_t> base(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0;
    for (int64_t i = 0; i < Lq; ++i) n += pattern_row(lm[b * Lq + i]);
    base[b + 1] = base[b] + n;
  }
  return base;
}

// Head h of example b's first row in the saved pattern ps (nullptr when there is none)
template <typename T>
inline T* pattern_rows(T* ps, const std::vector<int64_t>& base, int64_t b, int64_t h, int64_t H) {
  return ps ? ps + H * base[b] + h * (base[b + 1] - base[b]) : nullptr;
}

// z [B, Lq, H, d] and lse [B, H, Lq] of sources Q, K, V (Dense, Table or Folded) with Lq and Lk rows, and
// pat: with save, the saved pattern (H base[B] values, pattern_base), else empty
template <typename T, typename SQ, typename SKV>
void forward_impl(const SQ& Q, const SKV& K, const SKV& V, int64_t B, int64_t Lq, int64_t Lk, int64_t H,
                  int64_t d, const torch::Tensor& lim, torch::Tensor& z, torch::Tensor& lse, bool save,
                  torch::Tensor& pat) {
  TORCH_CHECK(d <= W, "d_head must be at most 16");
  const View<T> Z = view<T>(z);
  const int32_t* lm = lim.data_ptr<int32_t>();
  T* ls = lse.data_ptr<T>();
  const std::vector<int64_t> base = save ? pattern_base(lim, B, Lq) : std::vector<int64_t>();
  pat = torch::empty({save ? H * base[B] : 0}, z.options());
  T* ps = pat.numel() ? pat.data_ptr<T>() : nullptr;
  constexpr int MR = sizeof(T) == 4 ? 4 : 2;
  auto zero = [](int64_t) { return int64_t(0); };
  auto width = [](int64_t) { return W; };
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    Head<T> hd(Lq, Lk, d);
    std::vector<int64_t> tl(hd.Mq / MR + 1);
    std::vector<T> inv(Lq), sums(Lq);
    auto dd = [&](int64_t) { return d; };
    auto keys = [&](int64_t i0) { return tl[i0 / MR]; };
    auto cols = [&](int64_t i0) { return pad(tl[i0 / MR]); };
    for (int64_t b = lo; b < hi; ++b) {  // one example's heads in turn: its rows are read once, in order
      const int32_t* li = lm + b * Lq;
      const int64_t nmax = tile_limits<MR>(li, Lq, hd.Mq, tl);
      const auto [Le, Me] = live_rows<MR>(li, Lq);  // rows past Le: z = 0, lse = -inf
      const int64_t Nk = hd.Nk;
      T* S = hd.s.data();
      for (int64_t h = 0; h < H; ++h) {
        hd.load(Q, b, h, Le, hd.q.data(), nullptr);  // rows [Le, Me) may hold stale rows: never used
        hd.load(K, b, h, nmax, hd.k.data(), hd.kt.data());
        hd.load(V, b, h, nmax, hd.v.data(), nullptr);
        gemm(hd.q.data(), W, int64_t(1), hd.kt.data(), Nk, S, Nk, Me, zero, dd, cols);  // scores
        for (int64_t i = Le; i < Lq; ++i) ls[(b * H + h) * Lq + i] = -INFINITY;
        T* pr = pattern_rows(ps, base, b, h, H);
        for (int64_t i = 0; i < Le; ++i) {
          T* s = S + i * Nk;
          const int64_t n = li[i], nc = pad(tl[i / MR]);
          if (n == 0) {  // no visible keys: z = 0 (the row of a fully masked query)
            for (int64_t j = 0; j < nc; ++j) s[j] = 0;
            inv[i] = 0;
            sums[i] = 1;
            ls[(b * H + h) * Lq + i] = -INFINITY;
            continue;
          }
          T m, sum;
          if constexpr (std::is_same_v<T, float>) {
            std::tie(m, sum) = exp_row(s, n, nc);
          } else {
            m = row_max(s, n);
            exp_sub(s, n, m);
            sum = row_sum(s, n);
            for (int64_t j = n; j < nc; ++j) s[j] = 0;
          }
          inv[i] = T(1) / sum;  // p = s / sum: applied to z's row, not to the n scores
          sums[i] = sum;
          ls[(b * H + h) * Lq + i] = m;
          if (pr) {  // the pattern row, p = s / sum (zeros past n)
            const T c = inv[i];
#pragma omp simd
            for (int64_t j = 0; j < pattern_row(n); ++j) pr[j] = s[j] * c;
            pr += pattern_row(n);
          }
        }
        if constexpr (std::is_same_v<T, float>) {  // lse = max + log(sum), 8 rows at a time
          add_log(ls + (b * H + h) * Lq, sums.data(), Le);
        } else {
          for (int64_t i = 0; i < Le; ++i) ls[(b * H + h) * Lq + i] += std::log(sums[i]);
        }
        gemm(S, Nk, int64_t(1), hd.v.data(), W, hd.z.data(), W, Me, zero, keys, width);  // z = exp(s - m) v, then times 1 / sum
        for (int64_t i = 0; i < Le; ++i) {
          T* zr = hd.z.data() + i * W;
#pragma omp simd
          for (int64_t c = 0; c < W; ++c) zr[c] *= inv[i];
        }
        store(Z, b, h, hd.z.data(), Le, Lq);
      }
    }
  });
}

// dq, dk, dv into `sink` (DenseSink or TableSink) from sources Q, K, V, the forward's z and lse,
// and its saved pattern pat when that is not empty (else p is recomputed from the scores and lse)
template <typename T, typename SQ, typename SKV, typename Sink>
void backward_impl(const SQ& Q, const SKV& K, const SKV& V, int64_t B, int64_t Lq, int64_t Lk, int64_t H,
                   int64_t d, const torch::Tensor& lim, const torch::Tensor& z, const torch::Tensor& lse,
                   const torch::Tensor& pat, const torch::Tensor& dz, Sink& sink) {
  TORCH_CHECK(d <= W, "d_head must be at most 16");
  const View<T> Z = view<T>(z);
  const Dense<T> DZ{view<T>(dz)};
  const int32_t* lm = lim.data_ptr<int32_t>();
  const T* ls = lse.data_ptr<T>();
  const T* ps = pat.numel() ? pat.data_ptr<T>() : nullptr;
  const std::vector<int64_t> base = ps ? pattern_base(lim, B, Lq) : std::vector<int64_t>();
  TORCH_CHECK(!ps || pat.numel() == H * base[B], "the saved pattern does not match lim");
  constexpr int MR = sizeof(T) == 4 ? 4 : 2;
  auto zero = [](int64_t) { return int64_t(0); };
  auto width = [](int64_t) { return W; };
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    Head<T> hd(Lq, Lk, d);
    std::vector<T> P(hd.Mq * hd.Nk, 0);
    std::vector<int64_t> tl(hd.Mq / MR + 1), first(hd.Nk / MR + 1);
    auto dd = [&](int64_t) { return d; };
    auto keys = [&](int64_t i0) { return tl[i0 / MR]; };
    auto cols = [&](int64_t i0) { return pad(tl[i0 / MR]); };
    int64_t Le = Lq, Me = hd.Mq;
    auto from = [&](int64_t j0) { return first[j0 / MR]; };
    auto upto = [&](int64_t) { return Le; };  // query rows past Le: no gradient (and stale buffers)
    auto out = sink.local();
    for (int64_t b = lo; b < hi; ++b) {
      const int32_t* li = lm + b * Lq;
      const int64_t nmax = tile_limits<MR>(li, Lq, hd.Mq, tl), Mk = round_up(nmax, MR);
      std::tie(Le, Me) = live_rows<MR>(li, Lq);
      bool mono = true;
      for (int64_t i = 1; i < Le; ++i) mono = mono && li[i] >= li[i - 1];
      for (int64_t t = 0, f = 0; t * MR < hd.Nk; ++t) {  // key tile t: gradient from queries >= first[t]
        if (mono) while (f < Le && li[f] <= t * MR) ++f;
        first[t] = f;
      }
      const int64_t Nk = hd.Nk;
      T* S = hd.s.data();
      for (int64_t h = 0; h < H; ++h) {
        hd.load(Q, b, h, Le, hd.q.data(), nullptr);
        hd.load(K, b, h, nmax, hd.k.data(), ps ? nullptr : hd.kt.data());
        hd.load(V, b, h, nmax, hd.v.data(), hd.vt.data());
        hd.load(DZ, b, h, Le, hd.dz.data(), nullptr);
        if (!ps) gemm(hd.q.data(), W, int64_t(1), hd.kt.data(), Nk, P.data(), Nk, Me, zero, dd, cols);  // scores
        gemm(hd.dz.data(), W, int64_t(1), hd.vt.data(), Nk, S, Nk, Me, zero, dd, cols);       // dp
        const T* pr = pattern_rows(ps, base, b, h, H);
        for (int64_t i = 0; i < Le; ++i) {  // a row with no keys (n 0) ends all zero
          const T* zr = Z.row(b, i, h);
          T Di = 0;
          for (int64_t c = 0; c < d; ++c) Di += hd.dz[i * W + c] * zr[c];
          T* p = P.data() + i * Nk;
          T* s = S + i * Nk;
          const int64_t n = li[i];
          if (pr) {  // the forward's pattern row
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) p[j] = pr[j];
            pr += pattern_row(n);
          } else {
            exp_sub(p, n, ls[(b * H + h) * Lq + i]);  // p from the saved log-sum-exp
          }
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) s[j] = p[j] * (s[j] - Di);  // ds
          for (int64_t j = n; j < Nk; ++j) p[j] = s[j] = 0;  // also stale columns of an earlier head
        }
        gemm(S, Nk, int64_t(1), hd.k.data(), W, hd.z.data(), W, Me, zero, keys, width);  // dq = ds k
        sink.put(out, 0, b, h, hd.z.data(), Le, Lq);
        gemm(S, int64_t(1), Nk, hd.q.data(), W, hd.g.data(), W, Mk, from, upto, width);  // dk = ds^T q
        sink.put(out, 1, b, h, hd.g.data(), nmax, Lk);
        gemm(P.data(), int64_t(1), Nk, hd.dz.data(), W, hd.g.data(), W, Mk, from, upto, width);  // dv = p^T dz
        sink.put(out, 2, b, h, hd.g.data(), nmax, Lk);
      }
    }
    sink.commit(lo, out);
  });
  sink.finish();
}

void check_all(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& lim) {
  check(q, "q");
  check(k, "k");
  check(v, "v");
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v must have the same shape");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3), "q, k: shapes differ");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "q, k, v: dtypes differ");
  TORCH_CHECK(lim.scalar_type() == torch::kInt32 && lim.is_contiguous(), "lim must be contiguous int32");
  TORCH_CHECK(lim.numel() == q.size(0) * q.size(1), "lim must be [B, Lq]");
}

}  // namespace

template <typename T>
void dense_forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& lim,
                   torch::Tensor& z, torch::Tensor& lse, bool save, torch::Tensor& pat) {
  forward_impl<T>(Dense<T>{view<T>(q)}, Dense<T>{view<T>(k)}, Dense<T>{view<T>(v)}, q.size(0), q.size(1), k.size(1),
                  q.size(2), q.size(3), lim, z, lse, save, pat);
}

template <typename T>
void dense_backward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& lim,
                    const torch::Tensor& z, const torch::Tensor& lse, const torch::Tensor& pat,
                    const torch::Tensor& dz, torch::Tensor& dq, torch::Tensor& dk, torch::Tensor& dv) {
  DenseSink<T> sink{{view<T>(dq), view<T>(dk), view<T>(dv)}};
  backward_impl<T>(Dense<T>{view<T>(q)}, Dense<T>{view<T>(k)}, Dense<T>{view<T>(v)}, q.size(0), q.size(1),
                   k.size(1), q.size(2), q.size(3), lim, z, lse, pat, dz, sink);
}

std::vector<torch::Tensor> attn_forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor lim,
                                        bool save) {
  check_all(q, k, v, lim);
  auto z = torch::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options());
  auto lse = torch::empty({q.size(0), q.size(2), q.size(1)}, q.options());
  torch::Tensor pat;  // empty, or the saved pattern
  if (q.scalar_type() == torch::kFloat32) {
    dense_forward<float>(q, k, v, lim, z, lse, save, pat);
  } else {
    TORCH_CHECK(q.scalar_type() == torch::kFloat64, "float32 or float64 only");
    dense_forward<double>(q, k, v, lim, z, lse, save, pat);
  }
  return {z, lse, pat};
}

void attn_backward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor lim, torch::Tensor z,
                   torch::Tensor lse, torch::Tensor pat, torch::Tensor dz, torch::Tensor dq, torch::Tensor dk,
                   torch::Tensor dv) {
  check_all(q, k, v, lim);
  check(dz, "dz");
  check(dq, "dq");
  check(dk, "dk");
  check(dv, "dv");
  if (q.scalar_type() == torch::kFloat32) {
    dense_backward<float>(q, k, v, lim, z, lse, pat, dz, dq, dk, dv);
  } else {
    dense_backward<double>(q, k, v, lim, z, lse, pat, dz, dq, dk, dv);
  }
}

// The Table sources of n packed projections (q | k | v: n 3; a last layer's k | v: n 2):
// TE [R, n H d], TP [E * P, n H d], tok [B, P] int64 rows of TE
template <typename T>
std::vector<Table<T>> tables(const torch::Tensor& TE, const torch::Tensor& TP, const torch::Tensor& tok, int64_t H,
                             int64_t N, int64_t n = 3) {
  const int64_t P = tok.size(1), C = TE.size(1), d = C / (n * H);
  std::vector<Table<T>> t;
  for (int64_t i = 0; i < n; ++i)
    t.push_back({TE.data_ptr<T>(), TP.data_ptr<T>(), tok.data_ptr<int64_t>(), C, P, N, P, i * H * d, d});
  return t;
}

// The layout tables<T> reads: TE, TP contiguous [rows, n H d] of one dtype, tok [B, P] int64,
// B a multiple of N, TP one block of P rows per member
void check_table_layout(const torch::Tensor& TE, const torch::Tensor& TP, const torch::Tensor& tok, int64_t n,
                        int64_t H, int64_t N) {
  TORCH_CHECK(TE.dim() == 2 && TP.dim() == 2 && TE.is_contiguous() && TP.is_contiguous(),
              "TE and TP must be contiguous [rows, ", n, " H d]");
  TORCH_CHECK(TE.size(1) == TP.size(1) && TE.size(1) % (n * H) == 0, "TE, TP: ", n, " H d columns each");
  TORCH_CHECK(TE.scalar_type() == TP.scalar_type(), "TE, TP: dtypes differ");
  TORCH_CHECK(tok.dim() == 2 && tok.scalar_type() == torch::kInt64 && tok.is_contiguous(), "tok must be [B, P] int64");
  TORCH_CHECK(N >= 1 && tok.size(0) % N == 0, "B must be a multiple of N");
  TORCH_CHECK(TP.size(0) == (tok.size(0) / N) * tok.size(1), "TP must have (B / N) * P rows");
}

void check_tables(const torch::Tensor& TE, const torch::Tensor& TP, const torch::Tensor& tok, const torch::Tensor& lim,
                  int64_t H, int64_t N) {
  check_table_layout(TE, TP, tok, 3, H, N);
  TORCH_CHECK(TE.size(1) / (3 * H) <= W, "d_head must be at most 16");
  TORCH_CHECK(lim.scalar_type() == torch::kInt32 && lim.is_contiguous() && lim.numel() == tok.numel(),
              "lim must be contiguous int32 [B, P]");
}

std::vector<torch::Tensor> attn_forward_tables(torch::Tensor TE, torch::Tensor TP, torch::Tensor tok,
                                               torch::Tensor lim, int64_t H, int64_t N, bool save) {
  check_tables(TE, TP, tok, lim, H, N);
  const int64_t B = tok.size(0), P = tok.size(1), d = TE.size(1) / (3 * H);
  auto z = torch::empty({B, P, H, d}, TE.options());
  auto lse = torch::empty({B, H, P}, TE.options());
  torch::Tensor pat;  // empty, or the saved pattern
  if (TE.scalar_type() == torch::kFloat32) {
    auto t = tables<float>(TE, TP, tok, H, N);
    forward_impl<float>(t[0], t[1], t[2], B, P, P, H, d, lim, z, lse, save, pat);
  } else {
    TORCH_CHECK(TE.scalar_type() == torch::kFloat64, "float32 or float64 only");
    auto t = tables<double>(TE, TP, tok, H, N);
    forward_impl<double>(t[0], t[1], t[2], B, P, P, H, d, lim, z, lse, save, pat);
  }
  return {z, lse, pat};
}

template <typename T>
void tables_backward(const torch::Tensor& TE, const torch::Tensor& TP, const torch::Tensor& tok,
                     const torch::Tensor& lim, const torch::Tensor& z, const torch::Tensor& lse,
                     const torch::Tensor& pat, const torch::Tensor& dz, int64_t H, int64_t N, torch::Tensor& dTE,
                     torch::Tensor& dTP) {
  const int64_t B = tok.size(0), P = tok.size(1), d = TE.size(1) / (3 * H);
  auto t = tables<T>(TE, TP, tok, H, N);
  TableSink<T> sink{t[0], H, TE.size(0), TP.size(0), dTE.data_ptr<T>(), dTP.data_ptr<T>()};
  backward_impl<T>(t[0], t[1], t[2], B, P, P, H, d, lim, z, lse, pat, dz, sink);
}

std::vector<torch::Tensor> attn_backward_tables(torch::Tensor TE, torch::Tensor TP, torch::Tensor tok,
                                                torch::Tensor lim, torch::Tensor z, torch::Tensor lse,
                                                torch::Tensor pat, torch::Tensor dz, int64_t H, int64_t N) {
  check_tables(TE, TP, tok, lim, H, N);
  check(z, "z");
  check(dz, "dz");
  auto dTE = torch::zeros_like(TE), dTP = torch::zeros_like(TP);
  if (TE.scalar_type() == torch::kFloat32) {
    tables_backward<float>(TE, TP, tok, lim, z, lse, pat, dz, H, N, dTE, dTP);
  } else {
    tables_backward<double>(TE, TP, tok, lim, z, lse, pat, dz, H, N, dTE, dTP);
  }
  return {dTE, dTP};
}

// The folded k | v sources of a last layer: tables TE [R, 2 H d], TP [E * Lk, 2 H d], tok [B, Lk]
// int64 rows of TE, and the dense parts Dk, Dv [B, Lk, H, d]
template <typename T>
std::vector<Folded<T>> folded(const torch::Tensor& Dk, const torch::Tensor& Dv, const torch::Tensor& TE,
                              const torch::Tensor& TP, const torch::Tensor& tok, int64_t H, int64_t N) {
  auto t = tables<T>(TE, TP, tok, H, N, 2);
  return {{t[0], view<T>(Dk)}, {t[1], view<T>(Dv)}};
}

void check_folded(const torch::Tensor& q, const torch::Tensor& Dk, const torch::Tensor& Dv, const torch::Tensor& TE,
                  const torch::Tensor& TP, const torch::Tensor& tok, const torch::Tensor& lim, int64_t H, int64_t N) {
  check_all(q, Dk, Dv, lim);
  check_table_layout(TE, TP, tok, 2, H, N);
  TORCH_CHECK(TE.size(1) == 2 * H * q.size(3), "TE, TP: 2 H d columns each");
  TORCH_CHECK(TE.scalar_type() == q.scalar_type(), "TE, TP, q: dtypes differ");
  TORCH_CHECK(tok.size(0) == q.size(0) && tok.size(1) == Dk.size(1), "tok must be [B, Lk]");
}

std::vector<torch::Tensor> attn_forward_folded(torch::Tensor q, torch::Tensor Dk, torch::Tensor Dv, torch::Tensor TE,
                                               torch::Tensor TP, torch::Tensor tok, torch::Tensor lim, int64_t H,
                                               int64_t N, bool save) {
  check_folded(q, Dk, Dv, TE, TP, tok, lim, H, N);
  auto z = torch::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options());
  auto lse = torch::empty({q.size(0), q.size(2), q.size(1)}, q.options());
  torch::Tensor pat;
  auto run = [&](auto t) {
    using T = decltype(t);
    auto f = folded<T>(Dk, Dv, TE, TP, tok, H, N);
    forward_impl<T>(Dense<T>{view<T>(q)}, f[0], f[1], q.size(0), q.size(1), Dk.size(1), q.size(2), q.size(3), lim, z,
                    lse, save, pat);
  };
  if (q.scalar_type() == torch::kFloat32) {
    run(float{});
  } else {
    TORCH_CHECK(q.scalar_type() == torch::kFloat64, "float32 or float64 only");
    run(double{});
  }
  return {z, lse, pat};
}

// its backward: dq, dDk, dDv into the given views; returns (dTE, dTP), the tables' gradients
std::vector<torch::Tensor> attn_backward_folded(torch::Tensor q, torch::Tensor Dk, torch::Tensor Dv, torch::Tensor TE,
                                                torch::Tensor TP, torch::Tensor tok, torch::Tensor lim,
                                                torch::Tensor z, torch::Tensor lse, torch::Tensor pat,
                                                torch::Tensor dz, torch::Tensor dq, torch::Tensor dDk,
                                                torch::Tensor dDv, int64_t H, int64_t N) {
  check_folded(q, Dk, Dv, TE, TP, tok, lim, H, N);
  check(dz, "dz");
  check(dq, "dq");
  check(dDk, "dDk");
  check(dDv, "dDv");
  auto dTE = torch::zeros_like(TE), dTP = torch::zeros_like(TP);
  auto run = [&](auto t) {
    using T = decltype(t);
    auto f = folded<T>(Dk, Dv, TE, TP, tok, H, N);
    FoldSink<T> sink{{{view<T>(dq), view<T>(dDk), view<T>(dDv)}},
                     {f[0].tab, H, TE.size(0), TP.size(0), dTE.data_ptr<T>(), dTP.data_ptr<T>()}};
    backward_impl<T>(Dense<T>{view<T>(q)}, f[0], f[1], q.size(0), q.size(1), Dk.size(1), q.size(2), q.size(3), lim,
                     z, lse, pat, dz, sink);
  };
  if (q.scalar_type() == torch::kFloat32) {
    run(float{});
  } else {
    run(double{});
  }
  return {dTE, dTP};
}

// Cross-entropy of float32 rows lg [R, C] (contiguous) with labels lab [R] (int64), and its
// gradient, in the cancellation-free form of models/softmax_ce.py (softmax_ce_exact): with
// e_j = exp(lg_j - max), R = sum_{j != y} e_j and S = R + e_y, loss = log1p(R) when the label is
// the max, else log(S) - (lg_y - max) (both in double); g_j = e_j / (S N), g_y = -R / (S N).
// One pass per row (max and exps by exp_row, in a row buffer padded to 8), rows split over threads.
std::vector<torch::Tensor> softmax_ce_exact(torch::Tensor lg, torch::Tensor lab, double N) {
  TORCH_CHECK(lg.dim() == 2 && lg.is_contiguous() && lg.scalar_type() == torch::kFloat32 &&
                  lg.device().is_cpu(), "softmax_ce_exact: logits must be contiguous float32 [R, C] on the CPU");
  TORCH_CHECK(lab.dim() == 1 && lab.is_contiguous() && lab.scalar_type() == torch::kInt64 &&
                  lab.size(0) == lg.size(0), "softmax_ce_exact: labels must be contiguous int64 [R]");
  const int64_t R = lg.size(0), C = lg.size(1);
  TORCH_CHECK(C >= 1, "softmax_ce_exact: no classes");
  auto g = torch::empty_like(lg);
  auto loss = torch::empty({R}, lg.options());
  const float* x = lg.data_ptr<float>();
  const int64_t* y = lab.data_ptr<int64_t>();
  float *go = g.data_ptr<float>(), *lo = loss.data_ptr<float>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(round_up(C, 8));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = y[r];
      if (t < 0 || t >= C) {
        bad = true;
        continue;
      }
      std::memcpy(buf.data(), x + r * C, C * sizeof(float));
      const float m = exp_row(buf.data(), C, buf.size()).first;
      const float e_y = buf[t];
      buf[t] = 0.0f;
      const float rest = row_sum(buf.data(), C);
      const double S = double(rest) + double(e_y);
      const float z_y = x[r * C + t] - m;
      lo[r] = float(z_y == 0.0f ? std::log1p(double(rest)) : std::log(S) - double(z_y));
      const float inv = float(1.0 / (S * N));
      float* o = go + r * C;
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) o[j] = buf[j] * inv;
      o[t] = -(rest * inv);
    }
  });
  TORCH_CHECK(!bad, "softmax_ce_exact: a label is outside [0, ", C, ")");
  return {loss, g};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &attn_forward, "fused prefix-masked attention: (z, lse, saved pattern or empty)");
  m.def("backward", &attn_backward, "its backward, into dq, dk, dv");
  m.def("forward_tables", &attn_forward_tables,
        "the same with q | k | v = TE[tok] + TP[position]: (z, lse, saved pattern or empty)");
  m.def("backward_tables", &attn_backward_tables, "its backward: (dTE, dTP)");
  m.def("forward_folded", &attn_forward_folded,
        "the same with queries q and k | v = D + TE[tok] + TP[position]: (z, lse, saved pattern or empty)");
  m.def("backward_folded", &attn_backward_folded, "its backward: dq, dDk, dDv into the views; (dTE, dTP)");
  m.def("softmax_ce_exact", &softmax_ce_exact, "cancellation-free cross-entropy of float32 rows: (loss, grad)");
}
