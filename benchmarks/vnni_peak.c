/* vpdpbusd throughput of one core (benchmarks/cpu_speed.py runs one copy per core at once):
   12 independent accumulator chains, enough to cover its latency on every port that executes it.
   Prints {"vpdpbusd_per_ns": r}; int8 peak = r x 64 MAC x 2 op GOP/s per core. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#define D(a) a = _mm512_dpbusd_epi32(a, x, w)
int main(void) {
    __m512i x = _mm512_set1_epi8(1), w = _mm512_set1_epi8(1);
    __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2), a3 = _mm512_set1_epi32(3), a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5), a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7),
            a8 = _mm512_set1_epi32(8), a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
    const long iters = 50000000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long n = 0; n < iters; n++) {
        D(a0); D(a1); D(a2); D(a3); D(a4); D(a5); D(a6); D(a7); D(a8); D(a9); D(a10); D(a11);
        __asm__ volatile("" : "+v"(x));
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                 _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)));
    double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    printf("{\"vpdpbusd_per_ns\": %.4f, \"check\": %d}\n", iters * 12 / ns, _mm512_reduce_add_epi32(s) != 0);
    return 0;
}
