// Vector types and the vectorised exp, log and tanh of the kernels, for one SIMD target.
//
// This header is compiled once per target (baseline, AVX2+FMA, AVX-512), each time inside the
// namespace `lk::LK_TARGET`, so that no inline function compiled for a wider instruction set
// can be merged by the linker into the code of a narrower one (every symbol here is distinct
// per target).  The vectors are GCC/Clang vector extensions whose width follows the target:
// the same source becomes SSE2, AVX2 or AVX-512 code.  No fast-math: NaN and inf keep their
// meaning, sums are vectorised by explicit lanes (never by letting the compiler reassociate),
// and the rounding tricks below (the magic-number round, Cody–Waite's split) rely on it.
#pragma once

#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifndef LK_TARGET
#error "LK_TARGET must name the SIMD target this file is compiled for"
#endif
#if !defined(__GNUC__)
#error "logitkit's kernels need GCC or Clang vector extensions"
#endif

namespace lk {
namespace LK_TARGET {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX2__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

#define LK_INLINE inline __attribute__((always_inline))

template <class T> struct Lanes;
template <> struct Lanes<float> {
    typedef float F __attribute__((vector_size(kVectorBytes)));
    typedef int32_t I __attribute__((vector_size(kVectorBytes)));
    typedef uint8_t B __attribute__((vector_size(kVectorBytes / 4)));
    using Int = int32_t;
    static constexpr int n = kVectorBytes / 4;
};
template <> struct Lanes<double> {
    typedef double F __attribute__((vector_size(kVectorBytes)));
    typedef int64_t I __attribute__((vector_size(kVectorBytes)));
    typedef uint8_t B __attribute__((vector_size(kVectorBytes / 8)));
    using Int = int64_t;
    static constexpr int n = kVectorBytes / 8;
};

template <class T> using VF = typename Lanes<T>::F;  // lanes of T
template <class T> using VI = typename Lanes<T>::I;  // same-width integer lanes (and masks)
template <class T> constexpr int kL = Lanes<T>::n;

template <class T> LK_INLINE VF<T> splat(T v) {
    return VF<T>{} + v;
}
template <class T> LK_INLINE VF<T> load(const T* p) {
    VF<T> v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
template <class T> LK_INLINE void store(T* p, VF<T> v) {
    std::memcpy(p, &v, sizeof v);
}
// The first n (< lanes) entries from p, the others `fill`: row tails run through the same
// vector code as full vectors, so every entry is computed by the same instructions.  Masked
// loads and stores where the target has them (they never touch the entries past n).
template <class T> LK_INLINE VF<T> load_part(const T* p, int64_t n, T fill) {
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4) {
        __m512 r = _mm512_mask_loadu_ps(_mm512_set1_ps(fill), static_cast<__mmask16>((1u << n) - 1), p);
        return reinterpret_cast<VF<T>&>(r);
    } else {
        __m512d r = _mm512_mask_loadu_pd(_mm512_set1_pd(fill), static_cast<__mmask8>((1u << n) - 1), p);
        return reinterpret_cast<VF<T>&>(r);
    }
#else
    T buf[kL<T>];
    for (int i = 0; i < kL<T>; ++i) buf[i] = i < n ? p[i] : fill;
    return load<T>(buf);
#endif
}
template <class T> LK_INLINE void store_part(T* p, VF<T> v, int64_t n) {
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4) {
        _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), reinterpret_cast<__m512&>(v));
    } else {
        _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1), reinterpret_cast<__m512d&>(v));
    }
#else
    T buf[kL<T>];
    store<T>(buf, v);
    for (int i = 0; i < kL<T>; ++i)
        if (i < n) p[i] = buf[i];
#endif
}
// A boolean mask (one byte per entry, NumPy's bool) as all-ones / all-zeros integer lanes.
template <class T> LK_INLINE VI<T> load_mask(const uint8_t* p) {
    typename Lanes<T>::B b;
    std::memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, VI<T>) != 0;
}
template <class T> LK_INLINE VI<T> load_mask_part(const uint8_t* p, int64_t n) {
    uint8_t buf[kL<T>];
    for (int i = 0; i < kL<T>; ++i) buf[i] = i < n ? p[i] : 0;
    typename Lanes<T>::B b;
    std::memcpy(&b, buf, sizeof b);
    return __builtin_convertvector(b, VI<T>) != 0;
}
template <class T> LK_INLINE VF<T> select(VI<T> m, VF<T> a, VF<T> b) {
    return m ? a : b;
}
template <class T> LK_INLINE VF<T> vmax(VF<T> a, VF<T> b) {
    return a > b ? a : b;  // a NaN in a is ignored: the caller's sum finds it
}
template <class T> LK_INLINE VF<T> vabs(VF<T> a) {
    return a < 0 ? -a : a;
}
template <class T> LK_INLINE VF<T> as_float(VI<T> i) {
    VF<T> f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
template <class T> LK_INLINE VI<T> as_int(VF<T> f) {
    VI<T> i;
    std::memcpy(&i, &f, sizeof i);
    return i;
}
// Horizontal reductions in a fixed order (a pairwise tree: lane i with lane i + n/2, and so
// on down to one lane), by halving the vector in registers: the result never depends on
// anything but the lanes' values.
template <class T, int B> struct Part {
    typedef T V __attribute__((vector_size(B)));
};
template <class T, int B> LK_INLINE void halves(const typename Part<T, B>::V& v, typename Part<T, B / 2>::V& lo,
                                                typename Part<T, B / 2>::V& hi) {
    std::memcpy(&lo, &v, B / 2);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + B / 2, B / 2);
}
struct AddLanes {
    template <class V> static LK_INLINE V of(V lo, V hi) { return lo + hi; }
};
struct MaxLanes {
    template <class V> static LK_INLINE V of(V lo, V hi) { return hi > lo ? hi : lo; }
};
template <class Op, class T, int B> LK_INLINE T tree(typename Part<T, B>::V v) {
    if constexpr (B == sizeof(T)) {
        return v[0];
    } else {
        typename Part<T, B / 2>::V lo, hi;
        halves<T, B>(v, lo, hi);
        return tree<Op, T, B / 2>(Op::of(lo, hi));
    }
}
template <class T> LK_INLINE T hsum(VF<T> v) {
    return tree<AddLanes, T, kVectorBytes>(v);
}
template <class T> LK_INLINE T hmax(VF<T> v) {
    return tree<MaxLanes, T, kVectorBytes>(v);
}
// The lanes of a vector in double (two registers' worth for float): sums of products that
// could overflow in float are formed there.
template <class T> struct WideOf;
template <> struct WideOf<float> {
    typedef double W __attribute__((vector_size(2 * kVectorBytes)));
};
template <> struct WideOf<double> {
    typedef double W __attribute__((vector_size(kVectorBytes)));
};
template <class T> using Wide = typename WideOf<T>::W;
template <class T> LK_INLINE Wide<T> widen(VF<T> v) {
    return __builtin_convertvector(v, Wide<T>);
}
template <class T> LK_INLINE double hsum_w(Wide<T> v) {
    return tree<AddLanes, double, sizeof(Wide<T>)>(v);
}

// Lane-wise float → double sum of a float vector (exact: every float is a double).
LK_INLINE double hsum_wide(VF<float> v) {
    return hsum_w<float>(widen<float>(v));
}
LK_INLINE double hsum_wide(VF<double> v) {
    return hsum<double>(v);
}

// ------------------------------------------------------------------------------------------
// exp(d) for d ≤ 0 (every kernel subtracts the row max first), NaN propagating.
//
// Cody–Waite: n = round(d / ln 2) by the magic-number trick (adding 1.5·2^p rounds to an
// integer without a float→int conversion, whose result is undefined for NaN); r = d − n·ln 2
// with ln 2 split in a short high part (n·C1 is exact) and a low part, so |r| ≤ ln 2 / 2 up to
// the rounding of the low product; exp(r) by a polynomial (float: degree-6 minimax; double:
// Taylor's degree 13, the first omitted term below 0.1 u on |r| ≤ 0.3466) by Horner's rule;
// 2^n by vscalef (AVX-512) or from its exponent bits, in two factors 2^(n>>1)·2^(n − n>>1), so
// that results in the subnormal range are rounded once, correctly, instead of being flushed
// to zero.  Arguments below the point where exp rounds to 0 give exactly 0 without being
// computed; exp(0) is exactly 1 (n = 0, r = 0).
// ------------------------------------------------------------------------------------------

template <class T> struct ExpConst;
template <> struct ExpConst<float> {
    static constexpr float zero = -104.0f;  // exp(d) < 2^−150 below: rounds to 0
    static constexpr float log2e = 1.4426950408889634f;
    static constexpr float magic = 12582912.0f;  // 1.5·2^23
    static constexpr int32_t magic_bits = 0x4B400000;
    static constexpr float c1 = 0.693359375f;  // 355/512: n·C1 exact for |n| < 2^15
    static constexpr float c2 = -2.12194440e-4f;
    static constexpr int32_t bias = 127;
    static constexpr int shift = 23;
};
template <> struct ExpConst<double> {
    static constexpr double zero = -746.0;  // exp(d) < 2^−1075 below: rounds to 0
    static constexpr double log2e = 1.4426950408889634;
    static constexpr double magic = 6755399441055744.0;  // 1.5·2^52
    static constexpr int64_t magic_bits = 0x4338000000000000LL;
    static constexpr double c1 = 6.93145751953125e-1;  // 22 bits: n·C1 exact for |n| < 2^31
    static constexpr double c2 = 1.42860682030941723212e-6;
    static constexpr int64_t bias = 1023;
    static constexpr int shift = 52;
};

template <class T> LK_INLINE VF<T> exp_poly(VF<T> r);
template <> LK_INLINE VF<float> exp_poly<float>(VF<float> r) {
    // Degree 6, minimax for the relative error on |r| ≤ 0.3468 (Remez: 2.6e-9, 0.04 u; with
    // its float coefficients and rounding, 1.4 u): a multiply-add less than Taylor's degree 7.
    VF<float> p = splat(1.4061422552913427e-3f);
    p = p * r + 8.379058912396431e-3f;
    p = p * r + 4.166477173566818e-2f;
    p = p * r + 0.16666364669799805f;
    p = p * r + 0.5000000596046448f;
    p = p * r + 1.0f;
    return p * r + 1.0f;
}
template <> LK_INLINE VF<double> exp_poly<double>(VF<double> r) {
    VF<double> p = splat(1.0 / 6227020800.0);
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    return p * r + 1.0;
}

template <class T> LK_INLINE VF<T> vexp(VF<T> d) {
    using C = ExpConst<T>;
    // Lanes below C::zero (−inf: masked entries and padded row tails; logits far below the max)
    // are 0 and never scaled: a 2^n that underflows costs x86 a microcode assist (~150 cycles
    // per instruction without flush-to-zero), which made a 100-wide row, its tail padded with
    // −inf, three times slower than a 96-wide one.  NaN lanes compute (and stay NaN).
#if defined(__AVX512F__)
    // n = round(d/ln 2) by the magic number (a multiply-add and a subtraction, exact wherever a
    // lane is kept); vscalef scales by 2^n in one instruction (p·2^n rounded once, subnormal
    // results included), only in the lanes kept.
    VF<T> t = d * C::log2e + C::magic;
    VF<T> n = t - C::magic;
    VF<T> r = d - n * C::c1;
    r = r - n * C::c2;
    VF<T> p = exp_poly<T>(r);
    if constexpr (sizeof(T) == 4) {
        __mmask16 keep = _mm512_cmp_ps_mask(reinterpret_cast<__m512&>(d), _mm512_set1_ps(C::zero), _CMP_NLT_UQ);
        __m512 out = _mm512_maskz_scalef_ps(keep, reinterpret_cast<__m512&>(p), reinterpret_cast<__m512&>(n));
        return reinterpret_cast<VF<T>&>(out);
    } else {
        __mmask8 keep = _mm512_cmp_pd_mask(reinterpret_cast<__m512d&>(d), _mm512_set1_pd(C::zero), _CMP_NLT_UQ);
        __m512d out = _mm512_maskz_scalef_pd(keep, reinterpret_cast<__m512d&>(p), reinterpret_cast<__m512d&>(n));
        return reinterpret_cast<VF<T>&>(out);
    }
#else
    VI<T> gone = d < C::zero;
    d = gone ? splat<T>(0) : d;
    VF<T> t = d * C::log2e + C::magic;
    VF<T> n = t - C::magic;
    VI<T> ni = as_int<T>(t) - C::magic_bits;
    VF<T> r = d - n * C::c1;
    r = r - n * C::c2;
    VF<T> p = exp_poly<T>(r);
    VI<T> n1 = ni >> 1;
    VI<T> n2 = ni - n1;
    VF<T> e = p * as_float<T>((n1 + C::bias) << C::shift) * as_float<T>((n2 + C::bias) << C::shift);
    return gone ? splat<T>(0) : e;
#endif
}

// ------------------------------------------------------------------------------------------
// log(s) for positive normal doubles (row sums s ≥ 1), within two ulps: s = 2^e·f with f in
// [√½, √2) from the exponent bits; log f = 2·atanh(z), z = (f − 1)/(f + 1), |z| ≤ 0.1716, by
// its series to z^21 (the first omitted term is below 1e−18 of the result).  ln 2 is split as
// in fdlibm, so e·LN2_HI is exact.  log1p(a) for a > −1 is log(u) − ((u − 1) − a)/u with
// u = 1 + a, which keeps a tiny a (a dominant row's sum of the other terms).
// ------------------------------------------------------------------------------------------

LK_INLINE VF<double> vlog(VF<double> s) {
    using VD = VF<double>;
    using VL = VI<double>;
    VL b = as_int<double>(s);
    VL e = (b >> 52) - 1023;
    VD f = as_float<double>((b & 0x000FFFFFFFFFFFFFLL) | 0x3FF0000000000000LL);
    VL big = f > 1.4142135623730951;
    f = big ? f * 0.5 : f;
    e = big ? e + 1 : e;
    VD z = (f - 1.0) / (f + 1.0);
    VD z2 = z * z;
    VD p = splat(1.0 / 21.0);
    p = p * z2 + 1.0 / 19.0;
    p = p * z2 + 1.0 / 17.0;
    p = p * z2 + 1.0 / 15.0;
    p = p * z2 + 1.0 / 13.0;
    p = p * z2 + 1.0 / 11.0;
    p = p * z2 + 1.0 / 9.0;
    p = p * z2 + 1.0 / 7.0;
    p = p * z2 + 1.0 / 5.0;
    p = p * z2 + 1.0 / 3.0;
    VD fe = __builtin_convertvector(e, VD);
    return fe * 6.93147180369123816490e-01 +
           ((2.0 * z) * z2 * p + fe * 1.90821492927058770002e-10 + 2.0 * z);
}

LK_INLINE VF<double> vlog1p(VF<double> a) {
    VF<double> u = a + 1.0;
    return vlog(u) - ((u - 1.0) - a) / u;
}

// ------------------------------------------------------------------------------------------
// tanh(z), for the softcap: for |z| < 0.625 the odd expansions of Cephes (S. L. Moshier), a
// degree-11 polynomial in float and z + z·z²·P(z²)/Q(z²) in double; above, (1 − e)/(1 + e)
// with e = exp(−2|z|) ≤ 0.29, so that neither form cancels.  Both are computed and one
// selected (no branch in a vector loop).  tanh(±0) = ±0, tanh(±inf) = ±1, NaN propagates.
// ------------------------------------------------------------------------------------------

template <class T> LK_INLINE VF<T> tanh_small(VF<T> z, VF<T> s);
template <> LK_INLINE VF<float> tanh_small<float>(VF<float> z, VF<float> s) {
    VF<float> p = splat(-5.70498872745e-3f);
    p = p * s + 2.06390887954e-2f;
    p = p * s + -5.37397155531e-2f;
    p = p * s + 1.33314422036e-1f;
    p = p * s + -3.33332819422e-1f;
    return p * s * z + z;
}
template <> LK_INLINE VF<double> tanh_small<double>(VF<double> z, VF<double> s) {
    VF<double> num = (s * -9.64399179425052238628e-1 + -9.92877231001918586564e1) * s +
                     -1.61468768441708447952e3;
    VF<double> den = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s +
                     4.84406305325125486048e3;
    return z + z * s * (num / den);
}

template <class T> LK_INLINE VF<T> vtanh(VF<T> z) {
    VF<T> a = vabs<T>(z);
    VF<T> e = vexp<T>(a * T(-2));
    VF<T> big = (T(1) - e) / (T(1) + e);
    VF<T> small = tanh_small<T>(z, a * a);
    small = z == T(0) ? z : small;  // tanh(−0) = −0
    big = z >= T(0) ? big : -big;
    VF<T> r = a < T(0.625) ? small : big;
    return z != z ? z : r;
}

}  // namespace LK_TARGET
}  // namespace lk
