import Foundation

/// Encoders of ggml's 32-element blocks, one row at a time (formats/gguf-export.md §3).
///
/// Two kinds:
/// - **exact** re-packing of a bundle's int8/int4 codes and f16 scales (formats/bundle.md §2.2) into Q8_0, Q4_0 or
///   Q4_1 blocks, when the bundle's group size is a multiple of 32: every block gets its group's scale, so ggml's
///   dequantization gives the bundle's values bit for bit;
/// - **reference quantizers** (ggml's `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref` rounding, written from
///   the GGUF block definitions), used only by `--requantize` for tensors that have no exact equivalent.
public enum GGUFBlocks {
    public static let block = 32

    @inline(__always) static func putU16(_ v: UInt16, _ out: UnsafeMutablePointer<UInt8>) {
        out[0] = UInt8(truncatingIfNeeded: v)
        out[1] = UInt8(truncatingIfNeeded: v >> 8)
    }

    @inline(__always) static func getU16(_ p: UnsafeRawPointer, _ i: Int) -> UInt16 {
        UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
    }

    /// One row of bundle `i8` codes (`cols` bytes) and its f16 scales (`cols / group` of them) as Q8_0 blocks
    /// (`f16 d; i8 qs[32]`): d is the group's scale bits unchanged, qs the codes unchanged. `group % 32 == 0`.
    public static func q8_0(codes: UnsafePointer<UInt8>, scales: UnsafeRawPointer, cols: Int, group: Int,
                            out: UnsafeMutablePointer<UInt8>) {
        for b in 0 ..< cols / block {
            let o = out + 34 * b
            putU16(getU16(scales, b * block / group), o)
            (o + 2).update(from: codes + b * block, count: block)
        }
    }

    /// The 16 `qs` bytes of a 4-bit ggml block from the bundle's packed nibbles (element 2j in the low nibble of
    /// byte j): ggml puts block element j in the low nibble of qs[j] and element j + 16 in the high nibble.
    @inline(__always) static func nibbles(_ codes: UnsafePointer<UInt8>, first: Int, _ o: UnsafeMutablePointer<UInt8>) {
        @inline(__always) func u(_ e: Int) -> UInt8 { (codes[e >> 1] >> UInt8((e & 1) * 4)) & 15 }
        for j in 0 ..< 16 {
            o[j] = u(first + j) | u(first + j + 16) << 4
        }
    }

    /// One row of bundle `q4` `sym` codes (`cols / 2` bytes) and f16 scales as Q4_0 blocks (`f16 d; u8 qs[16]`,
    /// value (nibble − 8)·d): d is the group's scale bits unchanged (a negative scale stays negative), the nibbles
    /// are the codes unchanged, re-ordered. `group % 32 == 0`.
    public static func q4_0(codes: UnsafePointer<UInt8>, scales: UnsafeRawPointer, cols: Int, group: Int,
                            out: UnsafeMutablePointer<UInt8>) {
        for b in 0 ..< cols / block {
            let o = out + 18 * b
            putU16(getU16(scales, b * block / group), o)
            nibbles(codes, first: b * block, o + 2)
        }
    }

    /// One row of bundle `q4` `asym` codes as Q4_1 blocks (`f16 d; f16 m; u8 qs[16]`, value d·q + m). With d = s
    /// and m = −s·z the value is s·u − s·z = s·(u − z) exactly, with no rounding anywhere, provided m is an f16: it
    /// is exact only then. Returns the index of the first group whose −s·z is not exactly an f16 (or not finite),
    /// and writes nothing useful in that case.
    public static func q4_1(codes: UnsafePointer<UInt8>, scales: UnsafeRawPointer, zeros: UnsafeRawPointer,
                            cols: Int, group: Int, out: UnsafeMutablePointer<UInt8>) -> Int? {
        for b in 0 ..< cols / block {
            let g = b * block / group
            let sBits = getU16(scales, g)
            guard let m = q4_1Min(scale: sBits, zero: getU16(zeros, g)) else { return g }
            let o = out + 20 * b
            putU16(sBits, o)
            putU16(m, o + 2)
            nibbles(codes, first: b * block, o + 4)
        }
        return nil
    }

    /// The f16 bits of −s·z when that product is exactly an f16 (+0 for a zero product), else nil. s·z is exact in
    /// f32 (an 11-bit significand times an integer below 16).
    public static func q4_1Min(scale: UInt16, zero: UInt16) -> UInt16? {
        let s = Float(Float16(bitPattern: scale)), z = Float(Float16(bitPattern: zero))
        let m = -(s * z)
        guard m.isFinite else { return nil }
        if m == 0 { return 0 }
        let h = Float16(m)
        guard h.isFinite, Float(h) == m else { return nil }
        return h.bitPattern
    }

    // MARK: reference quantizers (--requantize)

    /// ggml's reference Q8_0 rounding of 32 values: d = max|x| / 127, q = round-half-away(x / d) via x · (1/d),
    /// d stored as f16 (round to nearest even).
    public static func quantizeQ8_0(_ x: UnsafePointer<Float>, cols: Int, out: UnsafeMutablePointer<UInt8>) {
        for b in 0 ..< cols / block {
            let v = x + b * block
            var amax: Float = 0
            for j in 0 ..< block { amax = max(amax, abs(v[j])) }
            let d = amax / 127
            let id: Float = d != 0 ? 1 / d : 0
            let o = out + 34 * b
            putU16(Float16(d).bitPattern, o)
            for j in 0 ..< block {
                let q = (v[j] * id).rounded(.toNearestOrAwayFromZero)
                o[2 + j] = UInt8(bitPattern: Int8(max(-128, min(127, q))))
            }
        }
    }

    /// ggml's reference Q4_0 rounding of 32 values: m is the first value of largest magnitude, d = m / −8,
    /// q = min(15, trunc(x · (1/d) + 8.5)), d stored as f16.
    public static func quantizeQ4_0(_ x: UnsafePointer<Float>, cols: Int, out: UnsafeMutablePointer<UInt8>) {
        for b in 0 ..< cols / block {
            let v = x + b * block
            var amax: Float = 0, mx: Float = 0
            for j in 0 ..< block where amax < abs(v[j]) {
                amax = abs(v[j])
                mx = v[j]
            }
            let d = mx / -8
            let id: Float = d != 0 ? 1 / d : 0
            let o = out + 18 * b
            putU16(Float16(d).bitPattern, o)
            @inline(__always) func q(_ j: Int) -> UInt8 {
                let t = (v[j] * id + 8.5).rounded(.towardZero)
                return UInt8(max(0, min(15, t)))
            }
            for j in 0 ..< 16 { o[2 + j] = q(j) | q(j + 16) << 4 }
        }
    }

    /// f32 → f16 (round to nearest even), little-endian.
    public static func toF16(_ x: UnsafePointer<Float>, cols: Int, out: UnsafeMutablePointer<UInt8>) {
        for j in 0 ..< cols { putU16(Float16(x[j]).bitPattern, out + 2 * j) }
    }

    /// f32, little-endian.
    public static func toF32(_ x: UnsafePointer<Float>, cols: Int, out: UnsafeMutablePointer<UInt8>) {
        for j in 0 ..< cols {
            let v = x[j].bitPattern
            for k in 0 ..< 4 { out[4 * j + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
        }
    }
}
