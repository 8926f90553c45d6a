"""The header's JSON rules (formats/bundle.md section 1.2), enforced on top of the standard json module.

The C parser and this reader must never read a header differently, so everything the standard module tolerates
and the format forbids is refused here: NaN/Infinity, integers outside int64, numbers outside a double, duplicate
keys (also when spelled with escapes: they compare equal once decoded), NUL in keys, lone surrogates, a byte-order
mark, invalid UTF-8, nesting deeper than 24 and more than 2,097,152 values.
"""
import json
import math

MAX_DEPTH = 24
MAX_VALUES = 2097152
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class HeaderJSONError(ValueError):
    pass


def _pairs(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise HeaderJSONError("a JSON object has a duplicate key %r" % k)
        if "\x00" in k:
            raise HeaderJSONError("a key contains \\u0000")
        obj[k] = v
    return obj


def _int(s):
    v = int(s)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise HeaderJSONError("integer out of the int64 range: %s" % s[:40])
    return v


def _float(s):
    v = float(s)
    if not math.isfinite(v):
        raise HeaderJSONError("a number is out of the range of a double: %s" % s[:40])
    return v


def _constant(s):
    raise HeaderJSONError("%s is not JSON" % s)


def _has_surrogate(s):
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in s)


def _walk(root):
    """Depth as the C validator counts it (the top-level value is at depth 1, every value inside a container one
    deeper, scalars included), the value count, and lone surrogates, without recursion."""
    values = 0
    stack = [(root, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise HeaderJSONError("nesting too deep (more than %d levels)" % MAX_DEPTH)
        values += 1
        if values > MAX_VALUES:
            raise HeaderJSONError("too many JSON values (more than %d)" % MAX_VALUES)
        if isinstance(v, dict):
            for k, x in v.items():
                if _has_surrogate(k):
                    raise HeaderJSONError("a key contains a lone surrogate")
                stack.append((x, depth + 1))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, str) and _has_surrogate(v):
            raise HeaderJSONError("a string contains a lone surrogate")


def loads(data):
    """Parses header bytes; raises HeaderJSONError with the reason."""
    if data[:3] == b"\xef\xbb\xbf":
        raise HeaderJSONError("starts with a UTF-8 byte-order mark")
    try:
        text = bytes(data).decode("utf-8")  # strict: no overlong forms, no encoded surrogates
    except UnicodeDecodeError as e:
        raise HeaderJSONError("invalid UTF-8 at byte %d" % e.start) from None
    try:
        root = json.loads(text, object_pairs_hook=_pairs, parse_int=_int, parse_float=_float,
                          parse_constant=_constant)
    except HeaderJSONError:
        raise
    except RecursionError:
        raise HeaderJSONError("nesting too deep (more than %d levels)" % MAX_DEPTH) from None
    except ValueError as e:  # json.JSONDecodeError
        raise HeaderJSONError("invalid JSON: %s" % e) from None
    if not isinstance(root, dict):
        raise HeaderJSONError("not a JSON object")
    _walk(root)
    return root
