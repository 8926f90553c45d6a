#ifndef MM1_LAPACK_SHIM_H
#define MM1_LAPACK_SHIM_H
#include <stddef.h>

/* The few LAPACK routines the quantizer needs, from libopenblas (linked by the COpenBLAS module). Debian's
   OpenBLAS ships no lapack.h / lapacke.h, so the Fortran entry points are declared here. Arguments are passed by
   reference and matrices are column-major. The trailing lengths are the hidden CHARACTER lengths gfortran
   appends for each character argument. OpenBLAS's own C implementations ignore them, and passing them keeps
   Fortran-built variants correct. */

void spotrf_(const char *uplo, const int *n, float *a, const int *lda, int *info, size_t uplo_len);
void strtri_(const char *uplo, const char *diag, const int *n, float *a, const int *lda, int *info, size_t uplo_len,
             size_t diag_len);

#endif
