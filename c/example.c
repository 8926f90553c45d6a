/* Prints each tensor of a bundle with its first value as float32 (quantized tensors dequantized). Built and run by
 * `make check` against the installed library through pkg-config, shared and static. */
#include <mm1bundle.h>

#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: example BUNDLE\n");
        return 2;
    }
    mm1b_bundle *b;
    char err[2048];
    if (mm1b_open(argv[1], &b, err, sizeof err) != MM1B_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    for (size_t i = 0; i < mm1b_tensor_count(b); i++) {
        const mm1b_tensor *t = mm1b_tensor_at(b, i);
        float first;
        if (mm1b_check_tensor(b, t) != MM1B_OK) {
            fprintf(stderr, "%s: tensor '%s': sha256 mismatch\n", argv[1], t->name);
            mm1b_close(b);
            return 1;
        }
        mm1b_tensor_read_f32(t, 0, 1, &first);
        printf("%s %s %g\n", t->name, t->dtype_name, (double)first);
    }
    mm1b_close(b);
    return 0;
}
