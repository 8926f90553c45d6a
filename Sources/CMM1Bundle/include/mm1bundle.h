/*
 * mm1bundle.h - the one parser of the mm1pack bundle header (formats/bundle.md, version 1).
 *
 * A bundle is opened read-only (mmap of the whole file, or a caller-owned memory buffer), and every check of
 * bundle.md section 5 steps 1-3 is done before mm1b_open returns: prefix, header digest, strict JSON (RFC 8259,
 * strict UTF-8, no duplicate keys, bounded depth and size), header members, and every tensor and section entry.
 * Tensor digests (step 4) are checked on demand with mm1b_check_tensor.
 *
 * Thread safety: an opened bundle is immutable; every accessor and check function may be called concurrently.
 * Pointers returned by accessors (names, data, JSON text) are valid until mm1b_close.
 *
 * C99, depends on json-c and (for mm1b_section_read) libzstd.
 */
#ifndef MM1BUNDLE_H
#define MM1BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MM1B_FORMAT_VERSION 1u
#define MM1B_PREFIX_SIZE 96u
#define MM1B_MAX_HEADER_LENGTH 67108864u /* 64 MiB */
#define MM1B_DATA_ALIGNMENT 4096u        /* data_offset is a multiple of this */
#define MM1B_MAX_RANK 8
#define MM1B_MAX_NAME 255
#define MM1B_JSON_MAX_DEPTH 24           /* nesting limit of the header JSON */
#define MM1B_JSON_MAX_VALUES 2097152u    /* limit on the number of JSON values in the header */

/* Return codes. */
#define MM1B_OK 0
#define MM1B_EIO 1      /* the file could not be opened, stat'ed or mapped */
#define MM1B_EFORMAT 2  /* the bytes are not a valid bundle (the message says why) */
#define MM1B_ENOMEM 3   /* allocation failed */
#define MM1B_EINVAL 4   /* bad argument (NULL pointer, wrong kind of section, ...) */
#define MM1B_EDIGEST 5  /* a SHA-256 digest does not match */

typedef enum mm1b_dtype {
    MM1B_DTYPE_F32 = 1,
    MM1B_DTYPE_F16 = 2,
    MM1B_DTYPE_BF16 = 3,
    MM1B_DTYPE_I8 = 4, /* quantized, 8-bit symmetric codes (bundle.md section 2.2) */
    MM1B_DTYPE_Q4 = 5  /* quantized, 4-bit codes, two per byte, symmetric or asymmetric */
} mm1b_dtype;

/* Sub-blocks of a quantized tensor start at multiples of this many bytes from the tensor's start. */
#define MM1B_QUANT_SUBBLOCK_ALIGNMENT 64u

typedef enum mm1b_encoding {
    MM1B_ENCODING_RAW = 0,
    MM1B_ENCODING_ZSTD = 1
} mm1b_encoding;

typedef struct mm1b_tensor {
    const char *name;        /* NUL-terminated, 1-255 bytes of [A-Za-z0-9_.] */
    size_t name_len;
    mm1b_dtype dtype;
    const char *dtype_name;  /* "f32", "f16", "bf16", "i8", "q4" */
    uint32_t element_size;   /* 4, 2, 2 for float dtypes; 0 for quantized dtypes */
    uint32_t rank;           /* 0..8 */
    uint64_t shape[MM1B_MAX_RANK]; /* shape[0..rank), each >= 1; unused entries are 0 */
    uint64_t numel;          /* product of shape (1 for rank 0), at most 2^63 - 1 */
    uint64_t offset;         /* absolute file offset of the first byte */
    uint64_t rel_offset;     /* offset relative to data_offset, as stored in the header */
    uint64_t length;         /* bytes */
    uint8_t sha256[32];      /* stored digest of the bytes */
    const void *data;        /* pointer into the mapping: length bytes */
    const char *quant_json;  /* the 'quant' object serialized by json-c, or NULL for float dtypes */
    size_t index;            /* position in the tensor table */

    /* Quantized tensors only (all zero for float dtypes), validated against bundle.md section 2.2 at open: the
     * logical shape is [R, K] with K = shape[rank - 1] and R the product of the other dimensions; groups of
     * quant_group_size consecutive elements of a row share a scale (and zero point). Sub-block offsets are relative
     * to the tensor's first byte (`data`), and are the canonical ones, so codes_offset is always 0. */
    uint32_t quant_bits;       /* 8 (i8) or 4 (q4) */
    int quant_asym;            /* 1 when the scheme is "asym" (q4 only): zero points present */
    uint64_t quant_group_size; /* even, >= 2, divides K */
    uint64_t quant_rows;       /* R */
    uint64_t quant_cols;       /* K */
    uint64_t codes_offset, codes_length;   /* R*K bytes (i8) or R*K/2 (q4) */
    uint64_t scales_offset, scales_length; /* R*(K/G) binary16 values */
    uint64_t zeros_offset, zeros_length;   /* same size as scales when quant_asym, else 0 and 0 */
} mm1b_tensor;

typedef struct mm1b_section {
    const char *name;        /* NUL-terminated, 1-255 bytes of [A-Za-z0-9_.-], not starting with '.' */
    size_t name_len;
    mm1b_encoding encoding;
    const char *encoding_name; /* "raw" or "zstd" */
    uint64_t offset;         /* absolute file offset of the stored bytes */
    uint64_t rel_offset;     /* relative to data_offset */
    uint64_t length;         /* stored bytes */
    uint64_t raw_length;     /* bytes after decoding (== length for raw) */
    uint8_t sha256[32];      /* digest of the decoded bytes */
    const void *data;        /* pointer into the mapping: length stored bytes */
    size_t index;
} mm1b_section;

typedef struct mm1b_bundle mm1b_bundle;

/* Detailed error, filled by the _ex functions. */
typedef struct mm1b_error {
    int code;              /* one of MM1B_E* */
    char tensor[MM1B_MAX_NAME + 1]; /* name of the tensor involved, "" if none (or if the name itself is invalid) */
    char message[1024];    /* the problem alone (for a section it starts with "section '<name>': ") */
    char full[2048];       /* "<file>: tensor '<name>': <message>" */
} mm1b_error;

/* Opens and maps `path`, validating the whole header. On success returns MM1B_OK and stores the bundle in *out.
 * On failure returns an MM1B_E* code, *out is NULL, and err (if not NULL) holds a NUL-terminated message that
 * names the file, the tensor (if any) and the problem. */
int mm1b_open(const char *path, mm1b_bundle **out, char *err, size_t errlen);
int mm1b_open_ex(const char *path, mm1b_bundle **out, mm1b_error *err);

/* Same on a caller-owned buffer, which is not copied and must outlive the bundle. `name` is used in messages
 * (NULL gives "<memory>"). */
int mm1b_open_memory(const void *data, size_t len, const char *name, mm1b_bundle **out, char *err, size_t errlen);
int mm1b_open_memory_ex(const void *data, size_t len, const char *name, mm1b_bundle **out, mm1b_error *err);

void mm1b_close(mm1b_bundle *b);

/* The name given at open (path or memory name). */
const char *mm1b_file_name(const mm1b_bundle *b);
uint32_t mm1b_format_version(const mm1b_bundle *b);
uint64_t mm1b_data_offset(const mm1b_bundle *b);
uint64_t mm1b_data_length(const mm1b_bundle *b);
uint64_t mm1b_file_size(const mm1b_bundle *b);
uint64_t mm1b_alignment(const mm1b_bundle *b);
const uint8_t *mm1b_header_sha256(const mm1b_bundle *b); /* 32 bytes */
/* The whole file (mapping or memory buffer). */
const void *mm1b_file_data(const mm1b_bundle *b);

/* The raw header text (exactly header_length bytes of UTF-8 JSON, not NUL-terminated). */
const char *mm1b_header_json(const mm1b_bundle *b, size_t *len);
/* The 'config', 'provenance' and 'metadata' objects serialized by json-c (NUL-terminated, no whitespace). */
const char *mm1b_config_json(const mm1b_bundle *b, size_t *len);
const char *mm1b_provenance_json(const mm1b_bundle *b, size_t *len);
const char *mm1b_metadata_json(const mm1b_bundle *b, size_t *len);

size_t mm1b_tensor_count(const mm1b_bundle *b);
const mm1b_tensor *mm1b_tensor_at(const mm1b_bundle *b, size_t i);       /* NULL if i out of range */
const mm1b_tensor *mm1b_find_tensor(const mm1b_bundle *b, const char *name); /* NULL if absent */

size_t mm1b_section_count(const mm1b_bundle *b);
const mm1b_section *mm1b_section_at(const mm1b_bundle *b, size_t i);
const mm1b_section *mm1b_find_section(const mm1b_bundle *b, const char *name);

/* Recomputes the SHA-256 of a tensor's bytes: MM1B_OK if it matches, MM1B_EDIGEST if not, MM1B_EINVAL for a
 * NULL argument. */
int mm1b_check_tensor(const mm1b_bundle *b, const mm1b_tensor *t);
/* For a raw section: digest of the stored bytes. For a zstd section returns MM1B_EINVAL (decode it and use
 * mm1b_check_decoded). */
int mm1b_check_section(const mm1b_bundle *b, const mm1b_section *s);
/* Checks a caller-decoded buffer against a section: len must equal raw_length (else MM1B_EFORMAT) and the digest
 * must match (else MM1B_EDIGEST). */
int mm1b_check_decoded(const mm1b_section *s, const void *decoded, size_t len);

/* ---- Values (bundle.md sections 2 and 2.2). None of these checks the tensor's digest: call mm1b_check_tensor
 * first when the file is not trusted. */

/* One binary16 / bfloat16 value widened to binary32. Exact: every such value is a binary32 (NaN payloads kept). */
float mm1b_f16_to_f32(uint16_t h);
float mm1b_bf16_to_f32(uint16_t h);

/* The tensor seen as a [R, K] row-major matrix: K is the last dimension (1 for a scalar), R the product of the
 * others. For quantized tensors these equal quant_rows and quant_cols. */
uint64_t mm1b_tensor_rows(const mm1b_tensor *t);
uint64_t mm1b_tensor_cols(const mm1b_tensor *t);

/* Writes elements [first, first + count) of t, in row-major order, to dst as float32: f32 copied, f16 and bf16
 * widened exactly, i8 and q4 dequantized exactly as bundle.md section 2.2 says (one f32 multiplication per element,
 * never fused), so the result is bit-identical to any conforming reader's. Returns MM1B_OK, or MM1B_EINVAL for a
 * NULL argument or a range outside the tensor. */
int mm1b_tensor_read_f32(const mm1b_tensor *t, uint64_t first, uint64_t count, float *dst);
/* Rows [row, row + nrows) of the [R, K] view: nrows * K floats, e.g. one expert of an [E, out, in] stack is rows
 * [e * out, (e + 1) * out). */
int mm1b_tensor_read_rows_f32(const mm1b_tensor *t, uint64_t row, uint64_t nrows, float *dst);

/* Decodes a section (raw: copies; zstd: exactly one frame, decoded into at most raw_length bytes) into dst, which
 * must hold at least raw_length bytes, and checks the SHA-256 of the decoded bytes. Returns MM1B_OK, MM1B_EINVAL
 * (bad argument, dst_len < raw_length), MM1B_EFORMAT (not one zstd frame, declared or decoded size other than
 * raw_length) or MM1B_EDIGEST; err (if not NULL) then says "<file>: section '<name>': <problem>". */
int mm1b_section_read(const mm1b_bundle *b, const mm1b_section *s, void *dst, size_t dst_len, char *err,
                      size_t errlen);

const char *mm1b_dtype_name(mm1b_dtype d);
const char *mm1b_strerror(int code);

/* SHA-256 (FIPS 180-4). Uses the SHA extensions of x86-64 when the CPU has them. */
typedef struct mm1b_sha256_ctx {
    uint32_t h[8];
    uint64_t total;      /* bytes hashed so far */
    uint8_t buf[64];
    size_t buflen;
} mm1b_sha256_ctx;

void mm1b_sha256_init(mm1b_sha256_ctx *c);
void mm1b_sha256_update(mm1b_sha256_ctx *c, const void *data, size_t len);
void mm1b_sha256_final(mm1b_sha256_ctx *c, uint8_t out[32]);
void mm1b_sha256(const void *data, size_t len, uint8_t out[32]);
/* Writes 64 lowercase hex digits and a NUL into hex[65]. */
void mm1b_hex32(const uint8_t digest[32], char hex[65]);
/* 1 if the accelerated (SHA-NI) path is in use, 0 otherwise. */
int mm1b_sha256_accelerated(void);
/* For tests: force the portable implementation (1) or allow acceleration again (0). Not thread-safe. */
void mm1b_sha256_force_portable(int on);

#ifdef __cplusplus
}
#endif

#endif /* MM1BUNDLE_H */
