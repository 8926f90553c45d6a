#include "mm1_kernels.h"
#include <string.h>

/* A branch-free OR over blocks finds whether any element is non-finite at memory speed (the loop vectorises);
   only a block that has one is searched element by element. */
#define BLOCK 4096

#define DEFINE_SCAN(NAME, T, MASK)                                                     \
    int64_t NAME(const void *p, size_t count) {                                        \
        const unsigned char *b = (const unsigned char *)p;                             \
        for (size_t start = 0; start < count; start += BLOCK) {                        \
            size_t n = count - start < BLOCK ? count - start : BLOCK;                  \
            T hit = 0;                                                                 \
            for (size_t i = 0; i < n; i++) {                                           \
                T v;                                                                   \
                memcpy(&v, b + (start + i) * sizeof(T), sizeof(T));                    \
                hit |= (T)((v & (T)(MASK)) == (T)(MASK));                              \
            }                                                                          \
            if (hit) {                                                                 \
                for (size_t i = 0; i < n; i++) {                                       \
                    T v;                                                               \
                    memcpy(&v, b + (start + i) * sizeof(T), sizeof(T));                \
                    if ((v & (T)(MASK)) == (T)(MASK)) return (int64_t)(start + i);     \
                }                                                                      \
            }                                                                          \
        }                                                                              \
        return -1;                                                                     \
    }

DEFINE_SCAN(mm1_first_nonfinite_f32, uint32_t, 0x7F800000u)
DEFINE_SCAN(mm1_first_nonfinite_f16, uint16_t, 0x7C00u)
DEFINE_SCAN(mm1_first_nonfinite_bf16, uint16_t, 0x7F80u)
