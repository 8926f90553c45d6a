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

    /// Decodes one frame whose decoded size must be exactly `expectedSize` (never allocates more than that).
    public static func decompress(_ input: UnsafeRawBufferPointer, expectedSize: Int) throws -> [UInt8] {
        let declared = ZSTD_getFrameContentSize(input.baseAddress, input.count)
        if declared == ZSTD_CONTENTSIZE_ERROR { throw MM1Error("not a zstd frame") }
        if declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != UInt64(expectedSize) {
            throw MM1Error("zstd frame declares \(declared) bytes, expected \(expectedSize)")
        }
        var out = [UInt8](repeating: 0, count: expectedSize)
        let n = out.withUnsafeMutableBytes { dst in
            ZSTD_decompress(dst.baseAddress, expectedSize, input.baseAddress, input.count)
        }
        if ZSTD_isError(n) != 0 { throw MM1Error("zstd data is corrupt: \(String(cString: ZSTD_getErrorName(n)))") }
        guard n == expectedSize else { throw MM1Error("zstd frame decoded to \(n) bytes, expected \(expectedSize)") }
        return out
    }
}
