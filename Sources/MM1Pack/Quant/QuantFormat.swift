import CKernels
import CMM1Bundle
import Foundation

/// A quantized tensor's parameters as the C parser validated them (formats/bundle.md §2.2). Byte ranges are relative
/// to the tensor's first byte and are always the canonical ones of `QuantFormat.layout`.
public struct BundleQuantParameters: Sendable, Equatable {
    public let spec: QuantSpec
    /// R: the product of every dimension but the last.
    public let rows: Int
    /// K: the last dimension.
    public let cols: Int
    public let codes: Range<Int>
    public let scales: Range<Int>
    /// Present exactly for the asym scheme.
    public let zeros: Range<Int>?

    /// From a tensor the C parser accepted, so every value fits an `Int` (the parser bounds each by the file size or
    /// by the element count, itself at most 2⁶³ − 1).
    init(_ t: mm1b_tensor) {
        spec = QuantSpec(bits: Int(t.quant_bits), groupSize: Int(t.quant_group_size),
                         scheme: t.quant_asym != 0 ? .asym : .sym)
        rows = Int(t.quant_rows)
        cols = Int(t.quant_cols)
        codes = Int(t.codes_offset) ..< Int(t.codes_offset) + Int(t.codes_length)
        scales = Int(t.scales_offset) ..< Int(t.scales_offset) + Int(t.scales_length)
        zeros = t.quant_asym != 0 ? Int(t.zeros_offset) ..< Int(t.zeros_offset) + Int(t.zeros_length) : nil
    }
}

/// The bundle encoding of quantized tensors (formats/bundle.md §2.2): placement of the sub-blocks, packing of a
/// `QuantizedTensor` into a tensor payload and its `quant` header object.
public enum QuantFormat {
    /// Sub-blocks start at multiples of this many bytes from the tensor's start, so that with the bundle's 64-byte
    /// tensor alignment the scales are as aligned as the codes.
    public static let subBlockAlignment = 64
    /// The only scale (and zero-point) encoding of format version 1.
    public static let scaleDType = "f16"

    /// The canonical placement of a tensor of logical shape `shape` quantized with `spec`: codes at 0, scales and
    /// then (asym only) zeros each at the next multiple of 64, and the tensor's length is the end of the last one.
    public static func layout(spec: QuantSpec, shape: [Int]) throws
        -> (codes: Range<Int>, scales: Range<Int>, zeros: Range<Int>?, length: Int)
    {
        guard shape.count >= 2 else {
            throw MM1Error("a quantized tensor needs rank ≥ 2 (groups run along the last dimension), not shape \(shape)")
        }
        guard shape.allSatisfy({ $0 >= 1 }) else { throw MM1Error("shape \(shape) has a dimension < 1") }
        let cols = shape[shape.count - 1]
        try spec.validate(cols: cols)
        guard spec.bits == 8 || spec.bits == 4 else { throw MM1Error("quantization bits must be 4 or 8") }
        guard let numel = checkedElementCount(shape) else {
            throw MM1Error("the element count of shape \(shape) overflows")
        }
        // cols is even (the group size is), so numel / 2 is exact; the group count times 2 is at most numel.
        let codesLength = spec.bits == 8 ? numel : numel / 2
        let scalesLength = numel / spec.groupSize * 2
        func aligned(_ x: Int) throws -> Int {
            let (s, o) = x.addingReportingOverflow(subBlockAlignment - 1)
            guard !o else { throw MM1Error("quantized shape \(shape) is too large") }
            return s / subBlockAlignment * subBlockAlignment
        }
        func end(_ start: Int, _ length: Int) throws -> Int {
            let (s, o) = start.addingReportingOverflow(length)
            guard !o else { throw MM1Error("quantized shape \(shape) is too large") }
            return s
        }
        let codes = 0 ..< codesLength
        let scalesStart = try aligned(codes.upperBound)
        let scales = scalesStart ..< (try end(scalesStart, scalesLength))
        guard spec.scheme == .asym else { return (codes, scales, nil, scales.upperBound) }
        let zerosStart = try aligned(scales.upperBound)
        let zeros = zerosStart ..< (try end(zerosStart, scalesLength))
        return (codes, scales, zeros, zeros.upperBound)
    }

    /// The `quant` header object for `spec` and `shape`, members exactly as §2.2 lists them.
    public static func quantObject(spec: QuantSpec, shape: [Int]) throws -> [String: Any] {
        let l = try layout(spec: spec, shape: shape)
        func block(_ r: Range<Int>) -> [String: Any] { ["offset": r.lowerBound, "length": r.count] }
        var q: [String: Any] = [
            "scheme": spec.scheme.rawValue, "group_size": spec.groupSize, "scale_dtype": scaleDType,
            "codes": block(l.codes), "scales": block(l.scales),
        ]
        if let z = l.zeros { q["zeros"] = block(z) }
        return q
    }

    /// The complete tensor payload (codes, zero padding, f16 scales, zero padding, f16 zeros) with its dtype and
    /// `quant` object, ready for `BundleWriter.TensorEntry(name:dtype:shape:length:quant:)`. Refuses what a writer
    /// must never store: codes outside the format's range (q4 > 15, i8 −128), scales that are not finite or not
    /// exactly an f16, zero points that are not integers in [0, 15], and arrays of the wrong size. The caller adds
    /// the tensor's name (`MM1Error.forTensor`).
    public static func pack(_ q: QuantizedTensor) throws -> (dtype: String, quant: [String: Any], bytes: [UInt8]) {
        let spec = q.spec
        let l = try layout(spec: spec, shape: q.shape)
        let rows = q.rows, cols = q.cols, groups = q.groupsPerRow
        guard q.codes.count == rows * cols else {
            throw MM1Error("\(q.codes.count) codes for shape \(q.shape) (\(rows * cols) expected)")
        }
        guard q.scales.count == rows * groups else {
            throw MM1Error("\(q.scales.count) scales for shape \(q.shape) and group size \(spec.groupSize) (\(rows * groups) expected)")
        }
        switch (spec.scheme, q.zeros) {
        case (.sym, .some): throw MM1Error("zero points given for the sym scheme")
        case (.asym, .none): throw MM1Error("the asym scheme needs zero points")
        case (.asym, .some(let z)) where z.count != q.scales.count:
            throw MM1Error("\(z.count) zero points for \(q.scales.count) scales")
        default: break
        }
        func at(_ i: Int) -> String { "(row \(i / cols), column \(i % cols))" }
        func groupAt(_ g: Int) -> String { "(row \(g / groups), group \(g % groups))" }

        var bytes = [UInt8](repeating: 0, count: l.length)
        try q.codes.withUnsafeBufferPointer { c in
            try bytes.withUnsafeMutableBufferPointer { out in
                if spec.bits == 8 {
                    if let i = c.firstIndex(of: 0x80) {
                        throw MM1Error("int8 code −128 at \(at(i)): writers store only −127…127")
                    }
                    out.baseAddress!.update(from: c.baseAddress!, count: c.count)
                } else {
                    if let i = c.firstIndex(where: { $0 > 15 }) {
                        throw MM1Error("int4 code \(c[i]) at \(at(i)) is outside 0…15")
                    }
                    for j in 0 ..< c.count / 2 { out[j] = c[2 * j] | c[2 * j + 1] << 4 }
                }
            }
        }
        for (g, s) in q.scales.enumerated() {
            guard s.isFinite else { throw MM1Error("scale \(s) at \(groupAt(g)) is not finite") }
            let h = Float16(s)
            guard Float(h).bitPattern == s.bitPattern else {
                throw MM1Error("scale \(s) at \(groupAt(g)) is not exactly representable in f16 (nearest: \(Float(h)))")
            }
            store(h.bitPattern, &bytes, at: l.scales.lowerBound + 2 * g)
        }
        if let zeros = q.zeros, let zr = l.zeros {
            for (g, z) in zeros.enumerated() {
                guard z >= 0, z <= 15, z == z.rounded() else {
                    throw MM1Error("zero point \(z) at \(groupAt(g)) is not an integer in 0…15")
                }
                // +0 for −0, so equal tensors give equal bytes.
                store(Float16(z == 0 ? 0 : z).bitPattern, &bytes, at: zr.lowerBound + 2 * g)
            }
        }
        return (spec.dtypeName, try quantObject(spec: spec, shape: q.shape), bytes)
    }

    @inline(__always)
    private static func store(_ v: UInt16, _ bytes: inout [UInt8], at o: Int) {
        bytes[o] = UInt8(truncatingIfNeeded: v)
        bytes[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
}

/// A quantized tensor of an open bundle, read in place from the memory map: dequantization to f32 for the forward
/// pass, and `unpack` back to the `QuantizedTensor` that was packed.
///
/// `@unchecked Sendable`: the pointers are into the bundle's read-only mapping, valid while the `BundleReader` that
/// produced the tensor is alive, and never written.
public struct QuantizedView: @unchecked Sendable {
    public let name: String
    public let spec: QuantSpec
    /// The logical shape; `rows` is the product of all but the last dimension, `cols` the last.
    public let shape: [Int]
    public let rows: Int
    public let cols: Int
    private let codes: UnsafeRawPointer
    private let scales: UnsafeRawPointer
    private let zeros: UnsafeRawPointer?

    /// `file` names the bundle in errors. The C parser has already validated the parameters; they are checked again
    /// against `QuantFormat.layout` so that a `BundleTensor` built any other way cannot send the kernels out of
    /// bounds.
    public init(_ t: BundleTensor, file: String) throws {
        guard let p = t.quant else {
            throw MM1Error(file: file, tensor: t.name, "dtype \(t.dtypeName) is not a quantized dtype (i8, q4)")
        }
        let l: (codes: Range<Int>, scales: Range<Int>, zeros: Range<Int>?, length: Int)
        do {
            l = try QuantFormat.layout(spec: p.spec, shape: t.shape)
        } catch let e as MM1Error {
            throw MM1Error(file: file, tensor: t.name, e.message)
        }
        guard t.dtypeName == p.spec.dtypeName, l.codes == p.codes, l.scales == p.scales, l.zeros == p.zeros,
              l.length == t.length, t.data.count >= l.length, let base = t.data.baseAddress
        else {
            throw MM1Error(file: file, tensor: t.name, "quantization parameters do not match the canonical layout")
        }
        name = t.name
        spec = p.spec
        shape = t.shape
        cols = t.shape[t.shape.count - 1]
        rows = t.shape.dropLast().reduce(1, *)
        codes = base + l.codes.lowerBound
        scales = base + l.scales.lowerBound
        zeros = l.zeros.map { base + $0.lowerBound }
    }

    public var groupsPerRow: Int { cols / spec.groupSize }

    /// Writes rows `r` dequantized, `r.count × cols` floats, to `dst`: exactly `QuantizedTensor.value` for each
    /// element. Large ranges are split across the cores.
    public func dequantize(rows r: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
        precondition(r.lowerBound >= 0 && r.upperBound <= rows, "dequantize: rows \(r) outside 0..<\(rows)")
        guard !r.isEmpty else { return }
        let cols = cols, group = spec.groupSize, groups = groupsPerRow, bits = spec.bits
        let box = UnsafeSendableBox((codes, scales, zeros, dst))
        MM1Parallel.chunks(r.count, minPerChunk: max(1, (1 << 17) / cols)) { lo, hi in
            let (codes, scales, zeros, dst) = box.value
            let row = r.lowerBound + lo
            let out = dst + lo * cols
            let s = scales + row * groups * 2
            if bits == 8 {
                mm1_dequant_i8(codes + row * cols, s, hi - lo, cols, group, out)
            } else {
                mm1_dequant_q4(codes + row * cols / 2, s, zeros.map { $0 + row * groups * 2 }, hi - lo, cols, group, out)
            }
        }
    }

    /// Drops the pages holding rows `r` (codes, scales and zeros) from the resident set, as `Widen` does for float
    /// tensors once read: the mapping is read-only, so the next read faults them in again from the page cache.
    public func releasePages(rows r: Range<Int>) {
        guard !r.isEmpty else { return }
        let codeBytes = spec.bits == 8 ? cols : cols / 2, groupBytes = groupsPerRow * 2
        Widen.releasePages(codes + r.lowerBound * codeBytes, bytes: r.count * codeBytes)
        Widen.releasePages(scales + r.lowerBound * groupBytes, bytes: r.count * groupBytes)
        if let zeros { Widen.releasePages(zeros + r.lowerBound * groupBytes, bytes: r.count * groupBytes) }
    }

    /// All values as f32, [rows, cols] row-major.
    public func dequantized() -> [Float] {
        let n = rows * cols
        return [Float](unsafeUninitializedCapacity: n) { buf, initialized in
            dequantize(rows: 0 ..< rows, into: buf.baseAddress!)
            initialized = n
        }
    }

    /// The stored codes, scales and zeros as a `QuantizedTensor` (the exact inverse of `QuantFormat.pack`).
    public func unpack() -> QuantizedTensor {
        let n = rows * cols, ng = rows * groupsPerRow
        let codes = self.codes
        let unpacked = [UInt8](unsafeUninitializedCapacity: n) { buf, initialized in
            if spec.bits == 8 {
                buf.baseAddress!.initialize(from: codes.assumingMemoryBound(to: UInt8.self), count: n)
            } else {
                let c = codes.assumingMemoryBound(to: UInt8.self)
                for j in 0 ..< n / 2 {
                    buf[2 * j] = c[j] & 15
                    buf[2 * j + 1] = c[j] >> 4
                }
            }
            initialized = n
        }
        func halves(_ p: UnsafeRawPointer) -> [Float] {
            (0 ..< ng).map { Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)))) }
        }
        return QuantizedTensor(spec: spec, shape: shape, codes: unpacked, scales: halves(scales),
                               zeros: zeros.map(halves))
    }
}
