import CZstd

/// One-shot zstd frames for small non-tensor payloads (tokenizer, configs) and bounded decoding of untrusted ones.
public enum Zstd {
    public static func compress(_ input: [UInt8], level: Int32) throws -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = input.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                ZSTD_compress(dst.baseAddress, bound, src.baseAddress, input.count, level)
            }
        }
        if ZSTD_isError(n) != 0 { throw MM1Error("zstd compression failed: \(String(cString: ZSTD_getErrorName(n)))") }
        out.removeSubrange(n...)
        return out
    }

    /// Decodes input that must be exactly one zstd frame of exactly `expectedSize` decoded bytes (a declared
    /// content size, when present, must agree); never allocates more than `expectedSize`.
    public static func decompress(_ input: UnsafeRawBufferPointer, expectedSize: Int) throws -> [UInt8] {
        guard let src = input.baseAddress, input.count > 0 else { throw MM1Error("empty zstd data") }
        let frame = ZSTD_findFrameCompressedSize(src, input.count)
        if ZSTD_isError(frame) != 0 { throw MM1Error("not a zstd frame: \(String(cString: ZSTD_getErrorName(frame)))") }
        guard frame == input.count else {
            throw MM1Error("holds \(input.count) bytes but its zstd frame is \(frame) bytes (must be exactly one frame)")
        }
        let declared = ZSTD_getFrameContentSize(src, input.count)
        if declared == ZSTD_CONTENTSIZE_ERROR { throw MM1Error("invalid zstd frame header") }
        if declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != UInt64(expectedSize) {
            throw MM1Error("zstd frame declares \(declared) bytes, expected \(expectedSize) (raw_length)")
        }
        var out = [UInt8](repeating: 0, count: max(expectedSize, 1))
        let n = out.withUnsafeMutableBytes { dst in ZSTD_decompress(dst.baseAddress, expectedSize, src, input.count) }
        if ZSTD_isError(n) != 0 {
            let why = String(cString: ZSTD_getErrorName(n))
            if why.lowercased().contains("too small") { throw MM1Error("decodes to more than the expected \(expectedSize) bytes (raw_length)") }
            throw MM1Error("zstd data is corrupt: \(why)")
        }
        guard n == expectedSize else { throw MM1Error("decodes to \(n) bytes, expected \(expectedSize) (raw_length)") }
        out.removeLast(out.count - expectedSize)
        return out
    }
}
