import Foundation

/// How a group of weights maps to integer codes (formats/bundle.md §2.2).
public enum QuantScheme: String, Sendable, Codable, CaseIterable {
    /// w = scale · q, no zero point (i8: q ∈ [-127, 127]; q4: q = u − 8 with u ∈ [0, 15]).
    case sym
    /// w = scale · (u − zero), u ∈ [0, 15], zero an integer in [0, 15] stored as f16 (q4 only).
    case asym
}

/// One quantized format: bits per code, the group of consecutive input-dimension values sharing a scale (and
/// zero), and the scheme. `groupSize` equal to the input dimension means one scale per output channel.
public struct QuantSpec: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var bits: Int
    public var groupSize: Int
    public var scheme: QuantScheme

    public init(bits: Int, groupSize: Int, scheme: QuantScheme) {
        self.bits = bits
        self.groupSize = groupSize
        self.scheme = scheme
    }

    /// The bundle dtype that stores this spec's codes.
    public var dtypeName: String { bits == 8 ? "i8" : "q4" }

    /// Checks the spec against a weight's input dimension `cols`; the message says what is wrong.
    public func validate(cols: Int) throws {
        guard bits == 4 || bits == 8 else { throw MM1Error("quantization bits must be 4 or 8, not \(bits)") }
        guard groupSize >= 2, groupSize % 2 == 0 else {
            throw MM1Error("group size must be an even number ≥ 2, not \(groupSize)")
        }
        guard cols % groupSize == 0 else {
            throw MM1Error("group size \(groupSize) does not divide the input dimension \(cols)")
        }
        if bits == 8 && scheme == .asym { throw MM1Error("int8 is symmetric only") }
    }

    public var description: String { "int\(bits) g\(groupSize) \(scheme.rawValue)" }
}

/// A quantized weight before packing: `rows` output rows (all leading dimensions flattened, e.g. experts ×
/// out) of `cols` inputs. Codes are one per element, row-major: for int8 the two's-complement byte of q, for
/// int4 the unsigned code u ∈ [0, 15]. Scales and zeros are [rows, cols / groupSize], row-major, each already
/// exactly representable in f16 (the value stored), so dequantizing from this struct and from the packed
/// bundle gives the same floats.
public struct QuantizedTensor: Sendable, Equatable {
    public var spec: QuantSpec
    /// The logical shape of the weight ([out, in] or [experts, out, in]); the last dimension is `cols`.
    public var shape: [Int]
    public var codes: [UInt8]
    public var scales: [Float]
    /// Zero points, asym only (integers in [0, 15] as floats).
    public var zeros: [Float]?

    public init(spec: QuantSpec, shape: [Int], codes: [UInt8], scales: [Float], zeros: [Float]?) {
        self.spec = spec
        self.shape = shape
        self.codes = codes
        self.scales = scales
        self.zeros = zeros
    }

    public var cols: Int { shape.last ?? 0 }
    public var rows: Int { shape.dropLast().reduce(1, *) }
    public var groupsPerRow: Int { cols / spec.groupSize }

    /// The exact float value of element (r, c), by the formula of formats/bundle.md §2.2.
    @inline(__always)
    public func value(row r: Int, col c: Int) -> Float {
        let g = r * groupsPerRow + c / spec.groupSize
        let code = codes[r * cols + c]
        switch (spec.bits, spec.scheme) {
        case (8, _): return scales[g] * Float(Int8(bitPattern: code))
        case (_, .sym): return scales[g] * (Float(code) - 8)
        case (_, .asym): return scales[g] * (Float(code) - zeros![g])
        }
    }

    /// Rows `r` as f32 into `dst` (`r.count · cols` values), by the same formula as `value`.
    public func dequantize(rows r: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
        let k = cols, g = spec.groupSize, gpr = groupsPerRow
        codes.withUnsafeBufferPointer { cp in
            scales.withUnsafeBufferPointer { sp in
                for row in r {
                    let out = dst + (row - r.lowerBound) * k
                    for j in 0..<gpr {
                        let s = sp[row * gpr + j]
                        let z: Float = spec.bits == 8 ? 0 : (spec.scheme == .asym ? zeros![row * gpr + j] : 8)
                        let base = row * k + j * g
                        if spec.bits == 8 {
                            for c in 0..<g { out[j * g + c] = s * Float(Int8(bitPattern: cp[base + c])) }
                        } else {
                            for c in 0..<g { out[j * g + c] = s * (Float(cp[base + c]) - z) }
                        }
                    }
                }
            }
        }
    }

    /// All values as f32, [rows, cols] row-major.
    public func dequantized() -> [Float] {
        var out = [Float](repeating: 0, count: rows * cols)
        out.withUnsafeMutableBufferPointer { dequantize(rows: 0..<rows, into: $0.baseAddress!) }
        return out
    }
}
