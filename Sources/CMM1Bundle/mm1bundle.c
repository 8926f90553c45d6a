/*
 * mm1bundle.c - reader of mm1pack bundles (formats/bundle.md, version 1).
 *
 * Every byte read is bounded by the size of the file; every sum and product of values taken from the file is
 * overflow-checked. The header JSON is first checked by a strict RFC 8259 validator (strict UTF-8, no NaN/Infinity,
 * integers within int64, bounded depth and number of values), then parsed by json-c, whose tree is checked for
 * duplicate keys (json-c silently keeps the last one) and non-finite numbers.
 */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE) && !defined(__APPLE__)
#define _POSIX_C_SOURCE 200809L
#endif

#include "mm1b_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

struct mm1b_bundle {
    char *file_name;
    const uint8_t *base;
    size_t size;
    int mapped;

    uint32_t version;
    uint64_t header_length;
    uint64_t data_offset;
    uint64_t data_length;
    uint64_t alignment;
    uint8_t header_sha256[32];

    json_object *root;
    char *config_json;
    size_t config_len;
    char *provenance_json;
    size_t provenance_len;
    char *metadata_json;
    size_t metadata_len;

    mm1b_tensor *tensors;
    size_t ntensors;
    size_t *tensor_by_name; /* indices sorted by name */

    mm1b_section *sections;
    size_t nsections;
    size_t *section_by_name;
};

/* ------------------------------------------------------------------------------------------------------------ */
/* Errors */

typedef struct ectx {
    const char *file;
    mm1b_error *e;
} ectx;

static void set_error(ectx *x, int code, const char *tensor, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static void set_error(ectx *x, int code, const char *tensor, const char *fmt, ...) {
    mm1b_error *e = x->e;
    if (!e) return;
    e->code = code;
    e->tensor[0] = '\0';
    if (tensor) snprintf(e->tensor, sizeof e->tensor, "%s", tensor);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    if (e->tensor[0])
        snprintf(e->full, sizeof e->full, "%s: tensor '%s': %s", x->file, e->tensor, e->message);
    else
        snprintf(e->full, sizeof e->full, "%s: %s", x->file, e->message);
}

/* Printable rendering of untrusted bytes for messages: printable ASCII as is, the rest as \xHH, at most 64 bytes. */
static const char *show(const char *s, size_t len, char *out, size_t outlen) {
    static const char hexd[] = "0123456789abcdef";
    size_t o = 0;
    size_t lim = len > 64 ? 64 : len;
    if (outlen == 0) return out;
    for (size_t i = 0; i < lim; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
            if (o + 2 > outlen) break;
            out[o++] = (char)c;
        } else {
            if (o + 5 > outlen) break;
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hexd[c >> 4];
            out[o++] = hexd[c & 15];
        }
    }
    if (len > lim && o + 4 <= outlen) {
        out[o++] = '.';
        out[o++] = '.';
        out[o++] = '.';
    }
    out[o] = '\0';
    return out;
}

const char *mm1b_strerror(int code) {
    switch (code) {
    case MM1B_OK: return "success";
    case MM1B_EIO: return "I/O error";
    case MM1B_EFORMAT: return "invalid bundle";
    case MM1B_ENOMEM: return "out of memory";
    case MM1B_EINVAL: return "invalid argument";
    case MM1B_EDIGEST: return "SHA-256 digest mismatch";
    default: return "unknown error";
    }
}

const char *mm1b_dtype_name(mm1b_dtype d) {
    switch (d) {
    case MM1B_DTYPE_F32: return "f32";
    case MM1B_DTYPE_F16: return "f16";
    case MM1B_DTYPE_BF16: return "bf16";
    case MM1B_DTYPE_I8: return "i8";
    case MM1B_DTYPE_Q4: return "q4";
    }
    return "?";
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Little helpers */

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

static int add_u64(uint64_t a, uint64_t b, uint64_t *r) {
    if (a > UINT64_MAX - b) return 0;
    *r = a + b;
    return 1;
}

static int mul_u64(uint64_t a, uint64_t b, uint64_t *r) {
    if (a != 0 && b > UINT64_MAX / a) return 0;
    *r = a * b;
    return 1;
}

/* Index of the first nonzero byte of p[0..n), or n. */
static size_t first_nonzero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return i;
    return n;
}

static char *dup_str(const char *s, size_t *len) {
    size_t n = strlen(s);
    char *d = (char *)malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n + 1);
    if (len) *len = n;
    return d;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Strict JSON validator (RFC 8259) */

typedef struct jv {
    const uint8_t *p;
    size_t n;
    size_t i;
    size_t values;
    size_t members;
    const char *why;
} jv;

static int jv_fail(jv *v, const char *why) {
    if (!v->why) v->why = why;
    return 0;
}

static void jv_ws(jv *v) {
    while (v->i < v->n) {
        uint8_t c = v->p[v->i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            v->i++;
        else
            break;
    }
}

static int hexval(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int jv_u4(jv *v, unsigned *out) {
    /* v->i is just after "\u" */
    if (v->n - v->i < 4) return jv_fail(v, "truncated \\u escape");
    unsigned x = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(v->p[v->i + (size_t)k]);
        if (h < 0) return jv_fail(v, "invalid \\u escape");
        x = (x << 4) | (unsigned)h;
    }
    v->i += 4;
    *out = x;
    return 1;
}

/* One UTF-8 sequence starting at v->i (first byte >= 0x80), per Unicode Table 3-7 (no overlongs, no surrogates,
 * nothing above U+10FFFF). */
static int jv_utf8(jv *v) {
    const uint8_t *p = v->p + v->i;
    size_t left = v->n - v->i;
    uint8_t c = p[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return jv_fail(v, "invalid UTF-8");
    }
    if (left < need + 1) return jv_fail(v, "invalid UTF-8 (truncated sequence)");
    if (p[1] < lo || p[1] > hi) return jv_fail(v, "invalid UTF-8");
    for (size_t k = 2; k <= need; k++)
        if (p[k] < 0x80 || p[k] > 0xBF) return jv_fail(v, "invalid UTF-8");
    v->i += need + 1;
    return 1;
}

static int jv_string(jv *v, int is_key) {
    /* v->p[v->i] == '"' */
    v->i++;
    for (;;) {
        if (v->i >= v->n) return jv_fail(v, "unterminated string");
        uint8_t c = v->p[v->i];
        if (c == '"') {
            v->i++;
            return 1;
        }
        if (c < 0x20) return jv_fail(v, "control character in string");
        if (c == '\\') {
            v->i++;
            if (v->i >= v->n) return jv_fail(v, "unterminated string");
            uint8_t e = v->p[v->i++];
            switch (e) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                break;
            case 'u': {
                unsigned u;
                if (!jv_u4(v, &u)) return 0;
                /* json-c keeps keys as C strings: a NUL would silently truncate the key. */
                if (u == 0 && is_key) return jv_fail(v, "\\u0000 in an object key");
                if (u >= 0xDC00 && u <= 0xDFFF) return jv_fail(v, "unpaired low surrogate in \\u escape");
                if (u >= 0xD800 && u <= 0xDBFF) {
                    if (v->n - v->i < 2 || v->p[v->i] != '\\' || v->p[v->i + 1] != 'u')
                        return jv_fail(v, "unpaired high surrogate in \\u escape");
                    v->i += 2;
                    unsigned u2;
                    if (!jv_u4(v, &u2)) return 0;
                    if (u2 < 0xDC00 || u2 > 0xDFFF) return jv_fail(v, "unpaired high surrogate in \\u escape");
                }
                break;
            }
            default:
                return jv_fail(v, "invalid escape in string");
            }
            continue;
        }
        if (c >= 0x80) {
            if (!jv_utf8(v)) return 0;
            continue;
        }
        v->i++;
    }
}

static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static int jv_number(jv *v) {
    size_t start = v->i;
    int neg = 0;
    if (v->p[v->i] == '-') {
        neg = 1;
        v->i++;
    }
    if (v->i >= v->n || !is_digit(v->p[v->i])) return jv_fail(v, "invalid number");
    size_t int_start = v->i;
    if (v->p[v->i] == '0') {
        v->i++;
        if (v->i < v->n && is_digit(v->p[v->i])) return jv_fail(v, "number with a leading zero");
    } else {
        while (v->i < v->n && is_digit(v->p[v->i])) v->i++;
    }
    size_t int_end = v->i;
    int is_int = 1;
    if (v->i < v->n && v->p[v->i] == '.') {
        is_int = 0;
        v->i++;
        if (v->i >= v->n || !is_digit(v->p[v->i])) return jv_fail(v, "invalid number (no digit after '.')");
        while (v->i < v->n && is_digit(v->p[v->i])) v->i++;
    }
    if (v->i < v->n && (v->p[v->i] == 'e' || v->p[v->i] == 'E')) {
        is_int = 0;
        v->i++;
        if (v->i < v->n && (v->p[v->i] == '+' || v->p[v->i] == '-')) v->i++;
        if (v->i >= v->n || !is_digit(v->p[v->i])) return jv_fail(v, "invalid number (bad exponent)");
        while (v->i < v->n && is_digit(v->p[v->i])) v->i++;
    }
    if (is_int) {
        /* Integers must fit int64 (json-c saturates silently otherwise). */
        uint64_t m = 0;
        const uint64_t lim = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
        for (size_t k = int_start; k < int_end; k++) {
            uint64_t d = (uint64_t)(v->p[k] - '0');
            if (m > (lim - d) / 10u) {
                v->i = start;
                return jv_fail(v, "integer out of the int64 range");
            }
            m = m * 10u + d;
        }
    }
    return 1;
}

static int jv_literal(jv *v, const char *lit) {
    size_t l = strlen(lit);
    if (v->n - v->i < l || memcmp(v->p + v->i, lit, l) != 0) return jv_fail(v, "unexpected character");
    v->i += l;
    return 1;
}

static int jv_value(jv *v, int depth) {
    if (depth > MM1B_JSON_MAX_DEPTH) return jv_fail(v, "nesting too deep");
    if (++v->values > MM1B_JSON_MAX_VALUES) return jv_fail(v, "too many JSON values");
    jv_ws(v);
    if (v->i >= v->n) return jv_fail(v, "unexpected end of JSON");
    uint8_t c = v->p[v->i];
    switch (c) {
    case '{':
        v->i++;
        jv_ws(v);
        if (v->i < v->n && v->p[v->i] == '}') {
            v->i++;
            return 1;
        }
        for (;;) {
            jv_ws(v);
            if (v->i >= v->n || v->p[v->i] != '"') return jv_fail(v, "expected a string key");
            if (!jv_string(v, 1)) return 0;
            jv_ws(v);
            if (v->i >= v->n || v->p[v->i] != ':') return jv_fail(v, "expected ':'");
            v->i++;
            v->members++;
            if (!jv_value(v, depth + 1)) return 0;
            jv_ws(v);
            if (v->i >= v->n) return jv_fail(v, "unterminated object");
            if (v->p[v->i] == ',') {
                v->i++;
                continue;
            }
            if (v->p[v->i] == '}') {
                v->i++;
                return 1;
            }
            return jv_fail(v, "expected ',' or '}'");
        }
    case '[':
        v->i++;
        jv_ws(v);
        if (v->i < v->n && v->p[v->i] == ']') {
            v->i++;
            return 1;
        }
        for (;;) {
            if (!jv_value(v, depth + 1)) return 0;
            jv_ws(v);
            if (v->i >= v->n) return jv_fail(v, "unterminated array");
            if (v->p[v->i] == ',') {
                v->i++;
                continue;
            }
            if (v->p[v->i] == ']') {
                v->i++;
                return 1;
            }
            return jv_fail(v, "expected ',' or ']'");
        }
    case '"':
        return jv_string(v, 0);
    case 't':
        return jv_literal(v, "true");
    case 'f':
        return jv_literal(v, "false");
    case 'n':
        return jv_literal(v, "null");
    default:
        if (c == '-' || is_digit(c)) return jv_number(v);
        return jv_fail(v, "unexpected character");
    }
}

/* Walks the json-c tree: counts object members and refuses non-finite numbers. Depth is bounded by the validator. */
static int tree_walk(json_object *o, size_t *members) {
    switch (json_object_get_type(o)) {
    case json_type_object: {
        *members += (size_t)json_object_object_length(o);
        struct json_object_iterator it = json_object_iter_begin(o), end = json_object_iter_end(o);
        while (!json_object_iter_equal(&it, &end)) {
            if (!tree_walk(json_object_iter_peek_value(&it), members)) return 0;
            json_object_iter_next(&it);
        }
        return 1;
    }
    case json_type_array: {
        size_t n = json_object_array_length(o);
        for (size_t i = 0; i < n; i++)
            if (!tree_walk(json_object_array_get_idx(o, i), members)) return 0;
        return 1;
    }
    case json_type_double:
        return isfinite(json_object_get_double(o)) ? 1 : 0;
    default:
        return 1;
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Header members */

static const char *type_name(json_type t) {
    switch (t) {
    case json_type_null: return "null";
    case json_type_boolean: return "a boolean";
    case json_type_double: return "a floating-point number";
    case json_type_int: return "an integer";
    case json_type_object: return "an object";
    case json_type_array: return "an array";
    case json_type_string: return "a string";
    }
    return "?";
}

/* Checks that `obj` has exactly the members listed in `names` (those marked optional may be absent), reporting the
 * first unknown or missing one. `what` prefixes messages ("header", "tensor", "section '...'"). */
typedef struct member_spec {
    const char *name;
    json_type type;
    int optional;
} member_spec;

static int check_members(ectx *x, const char *tensor, const char *what, json_object *obj, const member_spec *spec,
                         size_t nspec) {
    struct json_object_iterator it = json_object_iter_begin(obj), end = json_object_iter_end(obj);
    char buf[300];
    while (!json_object_iter_equal(&it, &end)) {
        const char *k = json_object_iter_peek_name(&it);
        size_t j;
        for (j = 0; j < nspec; j++)
            if (strcmp(k, spec[j].name) == 0) break;
        if (j == nspec) {
            set_error(x, MM1B_EFORMAT, tensor, "%sunknown member '%s'", what, show(k, strlen(k), buf, sizeof buf));
            return 0;
        }
        json_object *val = json_object_iter_peek_value(&it);
        json_type t = json_object_get_type(val);
        if (t != spec[j].type) {
            set_error(x, MM1B_EFORMAT, tensor, "%smember '%s' must be %s, not %s", what, k, type_name(spec[j].type),
                      type_name(t));
            return 0;
        }
        json_object_iter_next(&it);
    }
    for (size_t j = 0; j < nspec; j++) {
        if (spec[j].optional) continue;
        if (!json_object_object_get_ex(obj, spec[j].name, NULL)) {
            set_error(x, MM1B_EFORMAT, tensor, "%smissing member '%s'", what, spec[j].name);
            return 0;
        }
    }
    return 1;
}

static json_object *member(json_object *obj, const char *name) {
    json_object *v = NULL;
    json_object_object_get_ex(obj, name, &v);
    return v;
}

/* A non-negative integer member (type already checked). */
static int get_uint(ectx *x, const char *tensor, const char *what, json_object *obj, const char *name,
                    uint64_t *out) {
    int64_t v = json_object_get_int64(member(obj, name));
    if (v < 0) {
        set_error(x, MM1B_EFORMAT, tensor, "%s%s is negative (%lld)", what, name, (long long)v);
        return 0;
    }
    *out = (uint64_t)v;
    return 1;
}

static int parse_digest(ectx *x, const char *tensor, const char *what, json_object *s, uint8_t out[32]) {
    const char *p = json_object_get_string(s);
    int len = json_object_get_string_len(s);
    char buf[300];
    if (len != 64) {
        set_error(x, MM1B_EFORMAT, tensor, "%ssha256 must be 64 lowercase hex digits, got '%s'", what,
                  show(p, (size_t)(len < 0 ? 0 : len), buf, sizeof buf));
        return 0;
    }
    for (int i = 0; i < 32; i++) {
        int a = (unsigned char)p[2 * i], b = (unsigned char)p[2 * i + 1];
        int ha = ((a >= '0' && a <= '9') || (a >= 'a' && a <= 'f')) ? hexval((uint8_t)a) : -1;
        int hb = ((b >= '0' && b <= '9') || (b >= 'a' && b <= 'f')) ? hexval((uint8_t)b) : -1;
        if (ha < 0 || hb < 0) {
            set_error(x, MM1B_EFORMAT, tensor, "%ssha256 must be 64 lowercase hex digits, got '%s'", what,
                      show(p, 64, buf, sizeof buf));
            return 0;
        }
        out[i] = (uint8_t)((ha << 4) | hb);
    }
    return 1;
}

/* Name syntax: 1..255 bytes; tensors [A-Za-z0-9_.], sections also '-' and not starting with '.'. Returns NULL if
 * valid, else the problem. */
static const char *name_problem(const char *s, size_t len, int section, size_t *bad) {
    if (len == 0) return "is empty";
    if (len > MM1B_MAX_NAME) return "is longer than 255 bytes";
    if (section && s[0] == '.') {
        *bad = 0;
        return "starts with '.'";
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                 (section && c == '-');
        if (!ok) {
            *bad = i;
            return section ? "has a character outside [A-Za-z0-9_.-]" : "has a character outside [A-Za-z0-9_.]";
        }
    }
    return NULL;
}

typedef struct name_ref {
    const char *name;
    size_t len;
    size_t index;
} name_ref;

static int cmp_name_ref(const void *a, const void *b) {
    const name_ref *x = (const name_ref *)a, *y = (const name_ref *)b;
    size_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, m);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index ? 1 : 0);
}

/* Sorts indices by name; returns the index array, or NULL on allocation failure. If dup_a/dup_b are set, reports
 * the first duplicate pair (table order). */
static size_t *sort_names(const char *const *names, const size_t *lens, size_t n, int *dup, size_t *dup_a,
                          size_t *dup_b) {
    *dup = 0;
    name_ref *refs = (name_ref *)calloc(n ? n : 1, sizeof *refs);
    size_t *idx = (size_t *)calloc(n ? n : 1, sizeof *idx);
    if (!refs || !idx) {
        free(refs);
        free(idx);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        refs[i].name = names[i];
        refs[i].len = lens[i];
        refs[i].index = i;
    }
    qsort(refs, n, sizeof *refs, cmp_name_ref);
    for (size_t i = 0; i < n; i++) {
        idx[i] = refs[i].index;
        if (i > 0 && !*dup && refs[i].len == refs[i - 1].len && memcmp(refs[i].name, refs[i - 1].name, refs[i].len) == 0) {
            *dup = 1;
            *dup_a = refs[i - 1].index;
            *dup_b = refs[i].index;
        }
    }
    free(refs);
    return idx;
}

/* sort_names over an array of structs (tensors or sections) whose `name` and `name_len` members are at the given
   offsets. NULL when out of memory. */
static size_t *index_names(const void *items, size_t n, size_t stride, size_t name_off, size_t len_off, int *dup,
                           size_t *dup_a, size_t *dup_b) {
    const char **names = (const char **)calloc(n ? n : 1, sizeof *names);
    size_t *lens = (size_t *)calloc(n ? n : 1, sizeof *lens);
    size_t *index = NULL;
    if (names && lens) {
        const unsigned char *base = (const unsigned char *)items;
        for (size_t i = 0; i < n; i++) {
            memcpy(&names[i], base + i * stride + name_off, sizeof names[i]);
            memcpy(&lens[i], base + i * stride + len_off, sizeof lens[i]);
        }
        index = sort_names(names, lens, n, dup, dup_a, dup_b);
    }
    free(names);
    free(lens);
    return index;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Parsing */

static int parse_prefix(mm1b_bundle *b, ectx *x) {
    const uint8_t *p = b->base;
    static const uint8_t magic[8] = {0x4D, 0x4D, 0x31, 0x50, 0x41, 0x43, 0x4B, 0x00};
    if (b->size < MM1B_PREFIX_SIZE) {
        set_error(x, MM1B_EFORMAT, NULL, "file is %zu bytes, smaller than the 96-byte prefix of a bundle", b->size);
        return 0;
    }
    if (memcmp(p, magic, 8) != 0) {
        set_error(x, MM1B_EFORMAT, NULL, "bad magic: not an mm1pack bundle");
        return 0;
    }
    b->version = rd32(p + 8);
    if (b->version != MM1B_FORMAT_VERSION) {
        set_error(x, MM1B_EFORMAT, NULL, "unsupported format_version %u (this reader knows version 1)",
                  (unsigned)b->version);
        return 0;
    }
    uint32_t flags = rd32(p + 12);
    if (flags != 0) {
        set_error(x, MM1B_EFORMAT, NULL, "flags is 0x%08x, must be 0", (unsigned)flags);
        return 0;
    }
    b->header_length = rd64(p + 16);
    b->data_offset = rd64(p + 24);
    b->data_length = rd64(p + 32);
    memcpy(b->header_sha256, p + 40, 32);
    if (first_nonzero(p + 72, 24) != 24) {
        set_error(x, MM1B_EFORMAT, NULL, "reserved prefix bytes 72..95 are not zero");
        return 0;
    }
    if (b->header_length < 2 || b->header_length > MM1B_MAX_HEADER_LENGTH) {
        set_error(x, MM1B_EFORMAT, NULL, "header_length %llu is out of range (2 to 67108864 bytes)",
                  (unsigned long long)b->header_length);
        return 0;
    }
    if (b->data_offset % MM1B_DATA_ALIGNMENT != 0) {
        set_error(x, MM1B_EFORMAT, NULL, "data_offset %llu is not a multiple of 4096",
                  (unsigned long long)b->data_offset);
        return 0;
    }
    uint64_t header_end = MM1B_PREFIX_SIZE + b->header_length; /* no overflow: header_length <= 64 MiB */
    if (b->data_offset < header_end) {
        set_error(x, MM1B_EFORMAT, NULL, "data_offset %llu is inside the header (which ends at %llu)",
                  (unsigned long long)b->data_offset, (unsigned long long)header_end);
        return 0;
    }
    uint64_t end;
    if (!add_u64(b->data_offset, b->data_length, &end)) {
        set_error(x, MM1B_EFORMAT, NULL, "data_offset %llu + data_length %llu overflows",
                  (unsigned long long)b->data_offset, (unsigned long long)b->data_length);
        return 0;
    }
    if (end != (uint64_t)b->size) {
        set_error(x, MM1B_EFORMAT, NULL,
                  "file size is %llu bytes but data_offset + data_length is %llu (%s)", (unsigned long long)b->size,
                  (unsigned long long)end,
                  end > (uint64_t)b->size ? "the file is truncated" : "trailing bytes after the data section");
        return 0;
    }
    /* Now header_end <= data_offset <= size. */
    size_t pad = (size_t)(b->data_offset - header_end);
    size_t nz = first_nonzero(p + header_end, pad);
    if (nz != pad) {
        set_error(x, MM1B_EFORMAT, NULL, "padding between the header and data_offset is not zero (byte %llu)",
                  (unsigned long long)(header_end + nz));
        return 0;
    }
    return 1;
}

static int parse_header_json(mm1b_bundle *b, ectx *x) {
    const uint8_t *h = b->base + MM1B_PREFIX_SIZE;
    size_t hl = (size_t)b->header_length;
    uint8_t digest[32];
    mm1b_sha256(h, hl, digest);
    if (memcmp(digest, b->header_sha256, 32) != 0) {
        char want[65], got[65];
        mm1b_hex32(b->header_sha256, want);
        mm1b_hex32(digest, got);
        set_error(x, MM1B_EFORMAT, NULL, "header sha256 mismatch: the prefix says %s, the header hashes to %s", want,
                  got);
        return 0;
    }
    if (hl >= 3 && h[0] == 0xEF && h[1] == 0xBB && h[2] == 0xBF) {
        set_error(x, MM1B_EFORMAT, NULL, "header: starts with a UTF-8 byte-order mark");
        return 0;
    }
    jv v;
    memset(&v, 0, sizeof v);
    v.p = h;
    v.n = hl;
    jv_ws(&v);
    if (v.i < v.n && v.p[v.i] != '{') {
        set_error(x, MM1B_EFORMAT, NULL, "header: not a JSON object");
        return 0;
    }
    int ok = jv_value(&v, 1);
    if (ok) {
        jv_ws(&v);
        if (v.i != v.n) ok = jv_fail(&v, "trailing characters after the JSON object");
    }
    if (!ok) {
        set_error(x, MM1B_EFORMAT, NULL, "header: invalid JSON at byte %zu: %s", v.i, v.why ? v.why : "error");
        return 0;
    }

    struct json_tokener *tok = json_tokener_new_ex(MM1B_JSON_MAX_DEPTH + 8);
    if (!tok) {
        set_error(x, MM1B_ENOMEM, NULL, "out of memory parsing the header");
        return 0;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    json_object *root = json_tokener_parse_ex(tok, (const char *)h, (int)hl);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    json_tokener_free(tok);
    if (!root || jerr != json_tokener_success) {
        json_object_put(root);
        set_error(x, MM1B_EFORMAT, NULL, "header: JSON not accepted by json-c: %s", json_tokener_error_desc(jerr));
        return 0;
    }
    b->root = root;
    if (!json_object_is_type(root, json_type_object)) {
        set_error(x, MM1B_EFORMAT, NULL, "header: not a JSON object");
        return 0;
    }
    size_t members = 0;
    if (!tree_walk(root, &members)) {
        set_error(x, MM1B_EFORMAT, NULL, "header: a number is out of the range of a double");
        return 0;
    }
    if (members != v.members) {
        set_error(x, MM1B_EFORMAT, NULL, "header: a JSON object has a duplicate key");
        return 0;
    }
    return 1;
}

static char *serialize(json_object *o, size_t *len) {
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (!s) return NULL;
    return dup_str(s, len);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Quantized tensors (bundle.md section 2.2) */

static int align_u64(uint64_t v, uint64_t a, uint64_t *r) {
    uint64_t t;
    if (!add_u64(v, a - 1, &t)) return 0;
    *r = t / a * a;
    return 1;
}

/* One sub-block member ("codes", "scales", "zeros"): an object with exactly an int offset and an int length, which
 * must be the canonical ones. The placement is fixed so that two writers produce the same bytes and a reader never
 * has to handle overlapping or reordered blocks. */
static int check_subblock(ectx *x, const char *tensor, json_object *q, const char *which, uint64_t want_off,
                          uint64_t want_len, uint64_t *off, uint64_t *len) {
    static const member_spec spec[] = {
        {"offset", json_type_int, 0},
        {"length", json_type_int, 0},
    };
    char what[32];
    snprintf(what, sizeof what, "quant.%s: ", which);
    json_object *o = member(q, which);
    if (!check_members(x, tensor, what, o, spec, sizeof spec / sizeof spec[0])) return 0;
    if (!get_uint(x, tensor, what, o, "offset", off)) return 0;
    if (!get_uint(x, tensor, what, o, "length", len)) return 0;
    if (*off != want_off || *len != want_len) {
        set_error(x, MM1B_EFORMAT, tensor,
                  "quant.%s: offset %llu and length %llu are not the canonical offset %llu and length %llu", which,
                  (unsigned long long)*off, (unsigned long long)*len, (unsigned long long)want_off,
                  (unsigned long long)want_len);
        return 0;
    }
    return 1;
}

/* Validates the 'quant' object of tensor t (shape, numel and length already parsed) and fills the quant_* fields. */
static int parse_quant(ectx *x, mm1b_tensor *t, json_object *q) {
    static const member_spec spec[] = {
        {"scheme", json_type_string, 0}, {"group_size", json_type_int, 0}, {"scale_dtype", json_type_string, 0},
        {"codes", json_type_object, 0},  {"scales", json_type_object, 0},  {"zeros", json_type_object, 1},
    };
    const char *name = t->name;
    char buf[300];
    int i8 = t->dtype == MM1B_DTYPE_I8;
    if (t->rank < 2) {
        set_error(x, MM1B_EFORMAT, name, "a quantized tensor needs rank >= 2 (groups run along the last dimension), "
                  "not rank %u", (unsigned)t->rank);
        return 0;
    }
    if (!check_members(x, name, "quant: ", q, spec, sizeof spec / sizeof spec[0])) return 0;

    json_object *js = member(q, "scheme");
    const char *sch = json_object_get_string(js);
    size_t schl = (size_t)json_object_get_string_len(js);
    int asym;
    if (schl == 3 && memcmp(sch, "sym", 3) == 0) {
        asym = 0;
    } else if (schl == 4 && memcmp(sch, "asym", 4) == 0) {
        asym = 1;
    } else {
        set_error(x, MM1B_EFORMAT, name, "quant: unknown scheme '%s' (known: sym, asym)",
                  show(sch, schl, buf, sizeof buf));
        return 0;
    }
    if (asym && i8) {
        set_error(x, MM1B_EFORMAT, name, "quant: scheme 'asym' is not allowed with dtype i8 (int8 is symmetric only)");
        return 0;
    }
    int has_zeros = json_object_object_get_ex(q, "zeros", NULL);
    if (asym && !has_zeros) {
        set_error(x, MM1B_EFORMAT, name, "quant: missing member 'zeros' (required by scheme 'asym')");
        return 0;
    }
    if (!asym && has_zeros) {
        set_error(x, MM1B_EFORMAT, name, "quant: member 'zeros' is only allowed with scheme 'asym'");
        return 0;
    }
    json_object *jsd = member(q, "scale_dtype");
    const char *sd = json_object_get_string(jsd);
    size_t sdl = (size_t)json_object_get_string_len(jsd);
    if (!(sdl == 3 && memcmp(sd, "f16", 3) == 0)) {
        set_error(x, MM1B_EFORMAT, name, "quant: unknown scale_dtype '%s' (known: f16)", show(sd, sdl, buf, sizeof buf));
        return 0;
    }
    uint64_t g;
    if (!get_uint(x, name, "quant: ", q, "group_size", &g)) return 0;
    uint64_t k = t->shape[t->rank - 1];
    if (g < 2 || g % 2 != 0) {
        set_error(x, MM1B_EFORMAT, name, "quant: group_size %llu is not an even number >= 2", (unsigned long long)g);
        return 0;
    }
    if (k % g != 0) {
        set_error(x, MM1B_EFORMAT, name, "quant: group_size %llu does not divide the last dimension %llu",
                  (unsigned long long)g, (unsigned long long)k);
        return 0;
    }

    /* numel <= 2^63 - 1 and K is even (G is), so none of these can overflow; the checks keep that local. */
    uint64_t rows = t->numel / k;
    uint64_t codes_len = i8 ? t->numel : t->numel / 2;
    uint64_t scales_len, scales_off, scales_end, zeros_off = 0, zeros_len = 0, end;
    const uint64_t a = MM1B_QUANT_SUBBLOCK_ALIGNMENT;
    if (!mul_u64(t->numel / g, 2, &scales_len) || !align_u64(codes_len, a, &scales_off) ||
        !add_u64(scales_off, scales_len, &scales_end)) {
        set_error(x, MM1B_EFORMAT, name, "quant: sub-block sizes overflow 64 bits");
        return 0;
    }
    end = scales_end;
    if (asym) {
        zeros_len = scales_len;
        if (!align_u64(scales_end, a, &zeros_off) || !add_u64(zeros_off, zeros_len, &end)) {
            set_error(x, MM1B_EFORMAT, name, "quant: sub-block sizes overflow 64 bits");
            return 0;
        }
    }
    uint64_t off, len;
    if (!check_subblock(x, name, q, "codes", 0, codes_len, &off, &len)) return 0;
    if (!check_subblock(x, name, q, "scales", scales_off, scales_len, &off, &len)) return 0;
    if (asym && !check_subblock(x, name, q, "zeros", zeros_off, zeros_len, &off, &len)) return 0;
    if (t->length != end) {
        set_error(x, MM1B_EFORMAT, name, "length %llu is not %llu, the end of its last quant sub-block ('%s')",
                  (unsigned long long)t->length, (unsigned long long)end, asym ? "zeros" : "scales");
        return 0;
    }
    t->quant_bits = i8 ? 8u : 4u;
    t->quant_asym = asym;
    t->quant_group_size = g;
    t->quant_rows = rows;
    t->quant_cols = k;
    t->codes_offset = 0;
    t->codes_length = codes_len;
    t->scales_offset = scales_off;
    t->scales_length = scales_len;
    t->zeros_offset = zeros_off;
    t->zeros_length = zeros_len;
    return 1;
}

static int parse_tensors(mm1b_bundle *b, ectx *x, json_object *arr, uint64_t *cursor) {
    static const member_spec spec[] = {
        {"name", json_type_string, 0},  {"dtype", json_type_string, 0}, {"shape", json_type_array, 0},
        {"offset", json_type_int, 0},   {"length", json_type_int, 0},   {"sha256", json_type_string, 0},
        {"quant", json_type_object, 1},
    };
    size_t n = json_object_array_length(arr);
    b->tensors = (mm1b_tensor *)calloc(n ? n : 1, sizeof *b->tensors);
    if (!b->tensors) {
        set_error(x, MM1B_ENOMEM, NULL, "out of memory");
        return 0;
    }
    b->ntensors = n; /* zeroed entries: mm1b_close frees whatever was allocated */
    char buf[300], what[64];
    const mm1b_tensor *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        mm1b_tensor *t = &b->tensors[i];
        t->index = i;
        json_object *e = json_object_array_get_idx(arr, i);
        snprintf(what, sizeof what, "tensor #%zu: ", i);
        if (!json_object_is_type(e, json_type_object)) {
            set_error(x, MM1B_EFORMAT, NULL, "tensors[%zu] is not an object", i);
            return 0;
        }
        /* Name first, so that later messages can name the tensor. */
        json_object *jn = member(e, "name");
        if (!jn) {
            set_error(x, MM1B_EFORMAT, NULL, "%smissing member 'name'", what);
            return 0;
        }
        if (!json_object_is_type(jn, json_type_string)) {
            set_error(x, MM1B_EFORMAT, NULL, "%smember 'name' must be a string", what);
            return 0;
        }
        const char *name = json_object_get_string(jn);
        size_t nlen = (size_t)json_object_get_string_len(jn);
        size_t bad = 0;
        const char *prob = name_problem(name, nlen, 0, &bad);
        if (prob) {
            if (nlen > 0 && nlen <= MM1B_MAX_NAME && bad < nlen)
                set_error(x, MM1B_EFORMAT, NULL, "%sname '%s' %s (byte %zu)", what, show(name, nlen, buf, sizeof buf),
                          prob, bad);
            else
                set_error(x, MM1B_EFORMAT, NULL, "%sname '%s' %s", what, show(name, nlen, buf, sizeof buf), prob);
            return 0;
        }
        t->name = name;
        t->name_len = nlen;
        if (!check_members(x, name, "", e, spec, sizeof spec / sizeof spec[0])) return 0;

        const char *dt = json_object_get_string(member(e, "dtype"));
        size_t dtl = (size_t)json_object_get_string_len(member(e, "dtype"));
        int quantized = 0;
        if (dtl == 3 && memcmp(dt, "f32", 3) == 0) {
            t->dtype = MM1B_DTYPE_F32;
            t->element_size = 4;
        } else if (dtl == 3 && memcmp(dt, "f16", 3) == 0) {
            t->dtype = MM1B_DTYPE_F16;
            t->element_size = 2;
        } else if (dtl == 4 && memcmp(dt, "bf16", 4) == 0) {
            t->dtype = MM1B_DTYPE_BF16;
            t->element_size = 2;
        } else if (dtl == 2 && memcmp(dt, "i8", 2) == 0) {
            t->dtype = MM1B_DTYPE_I8;
            quantized = 1;
        } else if (dtl == 2 && memcmp(dt, "q4", 2) == 0) {
            t->dtype = MM1B_DTYPE_Q4;
            quantized = 1;
        } else {
            set_error(x, MM1B_EFORMAT, name, "unknown dtype '%s' (known: f32, f16, bf16; i8 and q4 with 'quant')",
                      show(dt, dtl, buf, sizeof buf));
            return 0;
        }
        t->dtype_name = mm1b_dtype_name(t->dtype);
        json_object *jq = member(e, "quant");
        if (quantized && !jq) {
            set_error(x, MM1B_EFORMAT, name, "quantized dtype '%s' without a 'quant' object", t->dtype_name);
            return 0;
        }
        if (!quantized && jq) {
            set_error(x, MM1B_EFORMAT, name, "'quant' is only allowed on quantized dtypes, not on '%s'",
                      t->dtype_name);
            return 0;
        }

        json_object *js = member(e, "shape");
        size_t rank = json_object_array_length(js);
        if (rank > MM1B_MAX_RANK) {
            set_error(x, MM1B_EFORMAT, name, "rank %zu is more than 8", rank);
            return 0;
        }
        t->rank = (uint32_t)rank;
        uint64_t numel = 1;
        for (size_t d = 0; d < rank; d++) {
            json_object *jd = json_object_array_get_idx(js, d);
            if (!json_object_is_type(jd, json_type_int)) {
                set_error(x, MM1B_EFORMAT, name, "shape[%zu] is not an integer", d);
                return 0;
            }
            int64_t dv = json_object_get_int64(jd);
            if (dv < 1) {
                set_error(x, MM1B_EFORMAT, name, "shape[%zu] is %lld, dimensions must be >= 1", d, (long long)dv);
                return 0;
            }
            t->shape[d] = (uint64_t)dv;
            if (!mul_u64(numel, (uint64_t)dv, &numel) || numel > (uint64_t)INT64_MAX) {
                set_error(x, MM1B_EFORMAT, name, "the number of elements of shape overflows (more than 2^63 - 1)");
                return 0;
            }
        }
        t->numel = numel;
        if (!get_uint(x, name, "", e, "offset", &t->rel_offset)) return 0;
        if (!get_uint(x, name, "", e, "length", &t->length)) return 0;
        if (!quantized) {
            uint64_t want;
            if (!mul_u64(numel, t->element_size, &want)) {
                set_error(x, MM1B_EFORMAT, name, "%llu elements of %s overflow 64 bits of bytes",
                          (unsigned long long)numel, t->dtype_name);
                return 0;
            }
            if (want != t->length) {
                set_error(x, MM1B_EFORMAT, name, "length %llu is not %llu (%llu elements of %s)",
                          (unsigned long long)t->length, (unsigned long long)want, (unsigned long long)numel,
                          t->dtype_name);
                return 0;
            }
        } else if (!parse_quant(x, t, jq)) {
            return 0;
        }
        if (!parse_digest(x, name, "", member(e, "sha256"), t->sha256)) return 0;
        if (t->rel_offset % b->alignment != 0) {
            set_error(x, MM1B_EFORMAT, name, "offset %llu is not a multiple of %llu", (unsigned long long)t->rel_offset,
                      (unsigned long long)b->alignment);
            return 0;
        }
        if (prev && t->rel_offset < prev->rel_offset) {
            set_error(x, MM1B_EFORMAT, name, "offset %llu is before the offset %llu of the previous tensor '%s' (the table must be in increasing offset order)",
                      (unsigned long long)t->rel_offset, (unsigned long long)prev->rel_offset, prev->name);
            return 0;
        }
        if (t->rel_offset < *cursor) {
            set_error(x, MM1B_EFORMAT, name, "offset %llu overlaps the previous tensor '%s' (which ends at %llu)",
                      (unsigned long long)t->rel_offset, prev ? prev->name : "?", (unsigned long long)*cursor);
            return 0;
        }
        uint64_t end;
        if (!add_u64(t->rel_offset, t->length, &end) || end > b->data_length) {
            set_error(x, MM1B_EFORMAT, name,
                      "bytes [%llu, %llu + %llu) are out of the data section (data_length %llu)",
                      (unsigned long long)t->rel_offset, (unsigned long long)t->rel_offset,
                      (unsigned long long)t->length, (unsigned long long)b->data_length);
            return 0;
        }
        /* Gap before this tensor: zero padding, less than the alignment. */
        uint64_t gap = t->rel_offset - *cursor;
        if (gap >= b->alignment) {
            set_error(x, MM1B_EFORMAT, name, "hole of %llu bytes before offset %llu (at most %llu bytes of padding)",
                      (unsigned long long)gap, (unsigned long long)t->rel_offset,
                      (unsigned long long)(b->alignment - 1));
            return 0;
        }
        const uint8_t *data0 = b->base + b->data_offset;
        size_t nz = first_nonzero(data0 + *cursor, (size_t)gap);
        if (nz != (size_t)gap) {
            set_error(x, MM1B_EFORMAT, name, "padding before offset %llu is not zero",
                      (unsigned long long)t->rel_offset);
            return 0;
        }
        t->offset = b->data_offset + t->rel_offset;
        t->data = data0 + t->rel_offset;
        if (quantized) {
            size_t ql;
            char *q = serialize(jq, &ql);
            if (!q) {
                set_error(x, MM1B_ENOMEM, name, "out of memory");
                return 0;
            }
            t->quant_json = q;
        }
        *cursor = end;
        prev = t;
    }

    int dup;
    size_t da = 0, db = 0;
    b->tensor_by_name = index_names(b->tensors, n, sizeof *b->tensors, offsetof(mm1b_tensor, name),
                                    offsetof(mm1b_tensor, name_len), &dup, &da, &db);
    if (!b->tensor_by_name) {
        set_error(x, MM1B_ENOMEM, NULL, "out of memory");
        return 0;
    }
    if (dup) {
        set_error(x, MM1B_EFORMAT, b->tensors[db].name, "duplicate tensor name (entries #%zu and #%zu)", da, db);
        return 0;
    }
    return 1;
}

static int parse_sections(mm1b_bundle *b, ectx *x, json_object *arr, uint64_t *cursor) {
    static const member_spec spec[] = {
        {"name", json_type_string, 0},   {"encoding", json_type_string, 0},   {"offset", json_type_int, 0},
        {"length", json_type_int, 0},    {"raw_length", json_type_int, 0},    {"sha256", json_type_string, 0},
    };
    size_t n = json_object_array_length(arr);
    b->sections = (mm1b_section *)calloc(n ? n : 1, sizeof *b->sections);
    if (!b->sections) {
        set_error(x, MM1B_ENOMEM, NULL, "out of memory");
        return 0;
    }
    char buf[300], what[320];
    const mm1b_section *prev = NULL;
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        mm1b_section *s = &b->sections[i];
        s->index = i;
        json_object *e = json_object_array_get_idx(arr, i);
        if (!json_object_is_type(e, json_type_object)) {
            set_error(x, MM1B_EFORMAT, NULL, "sections[%zu] is not an object", i);
            return 0;
        }
        json_object *jn = member(e, "name");
        if (!jn || !json_object_is_type(jn, json_type_string)) {
            set_error(x, MM1B_EFORMAT, NULL, "section #%zu: member 'name' is missing or not a string", i);
            return 0;
        }
        const char *name = json_object_get_string(jn);
        size_t nlen = (size_t)json_object_get_string_len(jn);
        size_t bad = 0;
        const char *prob = name_problem(name, nlen, 1, &bad);
        if (prob) {
            set_error(x, MM1B_EFORMAT, NULL, "section #%zu: name '%s' %s", i, show(name, nlen, buf, sizeof buf), prob);
            return 0;
        }
        s->name = name;
        s->name_len = nlen;
        snprintf(what, sizeof what, "section '%s': ", name);
        if (!check_members(x, NULL, what, e, spec, sizeof spec / sizeof spec[0])) return 0;
        const char *enc = json_object_get_string(member(e, "encoding"));
        size_t encl = (size_t)json_object_get_string_len(member(e, "encoding"));
        if (encl == 3 && memcmp(enc, "raw", 3) == 0) {
            s->encoding = MM1B_ENCODING_RAW;
            s->encoding_name = "raw";
        } else if (encl == 4 && memcmp(enc, "zstd", 4) == 0) {
            s->encoding = MM1B_ENCODING_ZSTD;
            s->encoding_name = "zstd";
        } else {
            set_error(x, MM1B_EFORMAT, NULL, "%sunknown encoding '%s' (known: raw, zstd)", what,
                      show(enc, encl, buf, sizeof buf));
            return 0;
        }
        if (!get_uint(x, NULL, what, e, "offset", &s->rel_offset)) return 0;
        if (!get_uint(x, NULL, what, e, "length", &s->length)) return 0;
        if (!get_uint(x, NULL, what, e, "raw_length", &s->raw_length)) return 0;
        if (!parse_digest(x, NULL, what, member(e, "sha256"), s->sha256)) return 0;
        if (s->encoding == MM1B_ENCODING_RAW && s->raw_length != s->length) {
            set_error(x, MM1B_EFORMAT, NULL, "%sraw_length %llu differs from length %llu of a raw section", what,
                      (unsigned long long)s->raw_length, (unsigned long long)s->length);
            return 0;
        }
        if (s->encoding == MM1B_ENCODING_ZSTD && s->length == 0) {
            set_error(x, MM1B_EFORMAT, NULL, "%sa zstd section cannot be empty", what);
            return 0;
        }
        if (s->rel_offset % b->alignment != 0) {
            set_error(x, MM1B_EFORMAT, NULL, "%soffset %llu is not a multiple of %llu", what,
                      (unsigned long long)s->rel_offset, (unsigned long long)b->alignment);
            return 0;
        }
        if (s->rel_offset < *cursor) {
            if (prev)
                set_error(x, MM1B_EFORMAT, NULL,
                          "%soffset %llu is before the end (%llu) of the previous section '%s' (sections are stored in "
                          "increasing order without overlap)",
                          what, (unsigned long long)s->rel_offset, (unsigned long long)*cursor, prev->name);
            else
                set_error(x, MM1B_EFORMAT, NULL,
                          "%soffset %llu is before the end (%llu) of the tensors (sections are stored after them)",
                          what, (unsigned long long)s->rel_offset, (unsigned long long)*cursor);
            return 0;
        }
        uint64_t end;
        if (!add_u64(s->rel_offset, s->length, &end) || end > b->data_length) {
            set_error(x, MM1B_EFORMAT, NULL, "%sbytes [%llu, %llu + %llu) are out of the data section (data_length %llu)",
                      what, (unsigned long long)s->rel_offset, (unsigned long long)s->rel_offset,
                      (unsigned long long)s->length, (unsigned long long)b->data_length);
            return 0;
        }
        uint64_t gap = s->rel_offset - *cursor;
        if (!first && gap >= b->alignment) {
            set_error(x, MM1B_EFORMAT, NULL, "%shole of %llu bytes before offset %llu (at most %llu bytes of padding)",
                      what, (unsigned long long)gap, (unsigned long long)s->rel_offset,
                      (unsigned long long)(b->alignment - 1));
            return 0;
        }
        const uint8_t *data0 = b->base + b->data_offset;
        size_t nz = first_nonzero(data0 + *cursor, (size_t)gap);
        if (nz != (size_t)gap) {
            set_error(x, MM1B_EFORMAT, NULL, "%spadding before offset %llu is not zero", what,
                      (unsigned long long)s->rel_offset);
            return 0;
        }
        s->offset = b->data_offset + s->rel_offset;
        s->data = data0 + s->rel_offset;
        *cursor = end;
        prev = s;
        first = 0;
    }
    b->nsections = n;

    int dup;
    size_t da = 0, db = 0;
    b->section_by_name = index_names(b->sections, n, sizeof *b->sections, offsetof(mm1b_section, name),
                                     offsetof(mm1b_section, name_len), &dup, &da, &db);
    if (!b->section_by_name) {
        set_error(x, MM1B_ENOMEM, NULL, "out of memory");
        return 0;
    }
    if (dup) {
        set_error(x, MM1B_EFORMAT, NULL, "section '%s': duplicate section name (entries #%zu and #%zu)",
                  b->sections[db].name, da, db);
        return 0;
    }
    return 1;
}

static int parse_header(mm1b_bundle *b, ectx *x) {
    static const member_spec spec[] = {
        {"format", json_type_string, 0},  {"format_version", json_type_int, 0}, {"alignment", json_type_int, 0},
        {"config", json_type_object, 0},  {"tensors", json_type_array, 0},      {"sections", json_type_array, 0},
        {"provenance", json_type_object, 0}, {"metadata", json_type_object, 0},
    };
    json_object *root = b->root;
    if (!check_members(x, NULL, "header: ", root, spec, sizeof spec / sizeof spec[0])) return 0;
    json_object *jf = member(root, "format");
    if (json_object_get_string_len(jf) != 7 || memcmp(json_object_get_string(jf), "mm1pack", 7) != 0) {
        char buf[300];
        set_error(x, MM1B_EFORMAT, NULL, "header: format is '%s', not 'mm1pack'",
                  show(json_object_get_string(jf), (size_t)json_object_get_string_len(jf), buf, sizeof buf));
        return 0;
    }
    int64_t fv = json_object_get_int64(member(root, "format_version"));
    if (fv != (int64_t)b->version) {
        set_error(x, MM1B_EFORMAT, NULL, "header: format_version %lld differs from the prefix's %u", (long long)fv,
                  (unsigned)b->version);
        return 0;
    }
    int64_t al = json_object_get_int64(member(root, "alignment"));
    if (al < 64 || al > (int64_t)MM1B_DATA_ALIGNMENT || (al & (al - 1)) != 0) {
        set_error(x, MM1B_EFORMAT, NULL, "header: alignment %lld is not a power of two between 64 and 4096",
                  (long long)al);
        return 0;
    }
    b->alignment = (uint64_t)al;

    uint64_t cursor = 0;
    if (!parse_tensors(b, x, member(root, "tensors"), &cursor)) return 0;
    if (!parse_sections(b, x, member(root, "sections"), &cursor)) return 0;
    /* Trailing bytes of the data section after the last payload: zero, less than the alignment. */
    uint64_t tail = b->data_length - cursor;
    if (tail >= b->alignment) {
        set_error(x, MM1B_EFORMAT, NULL, "the data section has %llu unused bytes after its last payload (at most %llu)",
                  (unsigned long long)tail, (unsigned long long)(b->alignment - 1));
        return 0;
    }
    size_t nz = first_nonzero(b->base + b->data_offset + cursor, (size_t)tail);
    if (nz != (size_t)tail) {
        set_error(x, MM1B_EFORMAT, NULL, "the padding at the end of the data section is not zero");
        return 0;
    }

    b->config_json = serialize(member(root, "config"), &b->config_len);
    b->provenance_json = serialize(member(root, "provenance"), &b->provenance_len);
    b->metadata_json = serialize(member(root, "metadata"), &b->metadata_len);
    if (!b->config_json || !b->provenance_json || !b->metadata_json) {
        set_error(x, MM1B_ENOMEM, NULL, "out of memory");
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Open / close */

void mm1b_close(mm1b_bundle *b) {
    if (!b) return;
    if (b->tensors) {
        for (size_t i = 0; i < b->ntensors; i++) free((void *)b->tensors[i].quant_json);
        free(b->tensors);
    }
    free(b->tensor_by_name);
    free(b->sections);
    free(b->section_by_name);
    free(b->config_json);
    free(b->provenance_json);
    free(b->metadata_json);
    if (b->root) json_object_put(b->root);
    if (b->mapped && b->base) munmap((void *)b->base, b->size);
    free(b->file_name);
    free(b);
}

static int finish_open(mm1b_bundle *b, ectx *x, mm1b_bundle **out) {
    if (!parse_prefix(b, x) || !parse_header_json(b, x) || !parse_header(b, x)) {
        mm1b_close(b);
        return x->e ? x->e->code : MM1B_EFORMAT;
    }
    *out = b;
    return MM1B_OK;
}

static void clear_error(mm1b_error *e) {
    if (!e) return;
    e->code = MM1B_OK;
    e->tensor[0] = e->message[0] = e->full[0] = '\0';
}

int mm1b_open_memory_ex(const void *data, size_t len, const char *name, mm1b_bundle **out, mm1b_error *err) {
    mm1b_error local;
    if (!err) err = &local;
    clear_error(err);
    ectx x = {name ? name : "<memory>", err};
    if (!out || (!data && len > 0)) {
        set_error(&x, MM1B_EINVAL, NULL, "invalid argument");
        return MM1B_EINVAL;
    }
    *out = NULL;
    mm1b_bundle *b = (mm1b_bundle *)calloc(1, sizeof *b);
    if (!b) {
        set_error(&x, MM1B_ENOMEM, NULL, "out of memory");
        return MM1B_ENOMEM;
    }
    b->file_name = dup_str(x.file, NULL);
    if (!b->file_name) {
        free(b);
        set_error(&x, MM1B_ENOMEM, NULL, "out of memory");
        return MM1B_ENOMEM;
    }
    b->base = (const uint8_t *)data;
    b->size = len;
    b->mapped = 0;
    return finish_open(b, &x, out);
}

int mm1b_open_ex(const char *path, mm1b_bundle **out, mm1b_error *err) {
    mm1b_error local;
    if (!err) err = &local;
    clear_error(err);
    ectx x = {path ? path : "<null>", err};
    if (!out || !path) {
        set_error(&x, MM1B_EINVAL, NULL, "invalid argument");
        return MM1B_EINVAL;
    }
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_error(&x, MM1B_EIO, NULL, "cannot open: %s", strerror(errno));
        return MM1B_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        set_error(&x, MM1B_EIO, NULL, "cannot stat: %s", strerror(errno));
        close(fd);
        return MM1B_EIO;
    }
    if (!S_ISREG(st.st_mode)) {
        set_error(&x, MM1B_EIO, NULL, "not a regular file");
        close(fd);
        return MM1B_EIO;
    }
    if (st.st_size < (off_t)MM1B_PREFIX_SIZE) {
        set_error(&x, MM1B_EFORMAT, NULL, "file is %lld bytes, smaller than the 96-byte prefix of a bundle",
                  (long long)st.st_size);
        close(fd);
        return MM1B_EFORMAT;
    }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        set_error(&x, MM1B_EIO, NULL, "file too large to map");
        close(fd);
        return MM1B_EIO;
    }
    size_t size = (size_t)st.st_size;
    void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int merr = errno;
    close(fd);
    if (m == MAP_FAILED) {
        set_error(&x, MM1B_EIO, NULL, "cannot mmap: %s", strerror(merr));
        return MM1B_EIO;
    }
    mm1b_bundle *b = (mm1b_bundle *)calloc(1, sizeof *b);
    char *fname = dup_str(path, NULL);
    if (!b || !fname) {
        free(b);
        free(fname);
        munmap(m, size);
        set_error(&x, MM1B_ENOMEM, NULL, "out of memory");
        return MM1B_ENOMEM;
    }
    b->file_name = fname;
    b->base = (const uint8_t *)m;
    b->size = size;
    b->mapped = 1;
    return finish_open(b, &x, out);
}

static void copy_err(const mm1b_error *e, char *err, size_t errlen) {
    if (err && errlen > 0) snprintf(err, errlen, "%s", e->full);
}

int mm1b_open(const char *path, mm1b_bundle **out, char *err, size_t errlen) {
    mm1b_error e;
    int rc = mm1b_open_ex(path, out, &e);
    if (rc != MM1B_OK) copy_err(&e, err, errlen);
    else if (err && errlen > 0) err[0] = '\0';
    return rc;
}

int mm1b_open_memory(const void *data, size_t len, const char *name, mm1b_bundle **out, char *err, size_t errlen) {
    mm1b_error e;
    int rc = mm1b_open_memory_ex(data, len, name, out, &e);
    if (rc != MM1B_OK) copy_err(&e, err, errlen);
    else if (err && errlen > 0) err[0] = '\0';
    return rc;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Accessors */

const char *mm1b_file_name(const mm1b_bundle *b) { return b ? b->file_name : NULL; }
uint32_t mm1b_format_version(const mm1b_bundle *b) { return b ? b->version : 0; }
uint64_t mm1b_data_offset(const mm1b_bundle *b) { return b ? b->data_offset : 0; }
uint64_t mm1b_data_length(const mm1b_bundle *b) { return b ? b->data_length : 0; }
uint64_t mm1b_file_size(const mm1b_bundle *b) { return b ? (uint64_t)b->size : 0; }
uint64_t mm1b_alignment(const mm1b_bundle *b) { return b ? b->alignment : 0; }
const uint8_t *mm1b_header_sha256(const mm1b_bundle *b) { return b ? b->header_sha256 : NULL; }
const void *mm1b_file_data(const mm1b_bundle *b) { return b ? b->base : NULL; }

const char *mm1b_header_json(const mm1b_bundle *b, size_t *len) {
    if (!b) return NULL;
    if (len) *len = (size_t)b->header_length;
    return (const char *)(b->base + MM1B_PREFIX_SIZE);
}

const char *mm1b_config_json(const mm1b_bundle *b, size_t *len) {
    if (!b) return NULL;
    if (len) *len = b->config_len;
    return b->config_json;
}

const char *mm1b_provenance_json(const mm1b_bundle *b, size_t *len) {
    if (!b) return NULL;
    if (len) *len = b->provenance_len;
    return b->provenance_json;
}

const char *mm1b_metadata_json(const mm1b_bundle *b, size_t *len) {
    if (!b) return NULL;
    if (len) *len = b->metadata_len;
    return b->metadata_json;
}

size_t mm1b_tensor_count(const mm1b_bundle *b) { return b ? b->ntensors : 0; }

const mm1b_tensor *mm1b_tensor_at(const mm1b_bundle *b, size_t i) {
    if (!b || i >= b->ntensors) return NULL;
    return &b->tensors[i];
}

static int cmp_key(const char *name, size_t nlen, const char *other, size_t olen) {
    size_t m = nlen < olen ? nlen : olen;
    int c = memcmp(name, other, m);
    if (c) return c;
    return nlen < olen ? -1 : (nlen > olen ? 1 : 0);
}

const mm1b_tensor *mm1b_find_tensor(const mm1b_bundle *b, const char *name) {
    if (!b || !name) return NULL;
    size_t nlen = strlen(name);
    size_t lo = 0, hi = b->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const mm1b_tensor *t = &b->tensors[b->tensor_by_name[mid]];
        int c = cmp_key(name, nlen, t->name, t->name_len);
        if (c == 0) return t;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

size_t mm1b_section_count(const mm1b_bundle *b) { return b ? b->nsections : 0; }

const mm1b_section *mm1b_section_at(const mm1b_bundle *b, size_t i) {
    if (!b || i >= b->nsections) return NULL;
    return &b->sections[i];
}

const mm1b_section *mm1b_find_section(const mm1b_bundle *b, const char *name) {
    if (!b || !name) return NULL;
    size_t nlen = strlen(name);
    size_t lo = 0, hi = b->nsections;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const mm1b_section *s = &b->sections[b->section_by_name[mid]];
        int c = cmp_key(name, nlen, s->name, s->name_len);
        if (c == 0) return s;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Digests */

int mm1b_check_tensor(const mm1b_bundle *b, const mm1b_tensor *t) {
    if (!b || !t) return MM1B_EINVAL;
    uint8_t d[32];
    mm1b_sha256(t->data, (size_t)t->length, d);
    return memcmp(d, t->sha256, 32) == 0 ? MM1B_OK : MM1B_EDIGEST;
}

int mm1b_check_section(const mm1b_bundle *b, const mm1b_section *s) {
    if (!b || !s) return MM1B_EINVAL;
    if (s->encoding != MM1B_ENCODING_RAW) return MM1B_EINVAL;
    uint8_t d[32];
    mm1b_sha256(s->data, (size_t)s->length, d);
    return memcmp(d, s->sha256, 32) == 0 ? MM1B_OK : MM1B_EDIGEST;
}

int mm1b_check_decoded(const mm1b_section *s, const void *decoded, size_t len) {
    if (!s || (!decoded && len > 0)) return MM1B_EINVAL;
    if ((uint64_t)len != s->raw_length) return MM1B_EFORMAT;
    uint8_t d[32];
    mm1b_sha256(decoded, len, d);
    return memcmp(d, s->sha256, 32) == 0 ? MM1B_OK : MM1B_EDIGEST;
}
