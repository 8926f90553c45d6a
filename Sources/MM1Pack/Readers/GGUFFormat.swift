import Foundation

// The GGUF vocabulary shared by the reader (`GGUFReader`, `mm1pack convert model.gguf`) and the writer
// (`GGUFWriter`, `mm1pack export --format gguf`): tensor types and metadata values, as the GGUF specification
// numbers them.

/// The ggml tensor types mm1pack reads or writes (`ggml_type` numbers, as stored in a GGUF tensor info).
public enum GGMLType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q8_0 = 8
    case q4_K = 12
    case q6_K = 14
    case bf16 = 30

    /// Elements per block (1 for the float types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q4_0, .q4_1, .q8_0: return 32
        case .q4_K, .q6_K: return 256
        }
    }

    /// Bytes per block: Q4_0 `f16 d; u8 qs[16]`, Q4_1 `f16 d; f16 m; u8 qs[16]`, Q8_0 `f16 d; i8 qs[32]`,
    /// Q4_K `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]`, Q6_K `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d`.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0: return 18
        case .q4_1: return 20
        case .q8_0: return 34
        case .q4_K: return 144
        case .q6_K: return 210
        }
    }

    public var isQuantized: Bool { blockSize > 1 }

    public var description: String { GGMLType.name(rawValue) }

    /// Bytes of one row of `cols` elements; `cols` must be a multiple of `blockSize`.
    public func rowBytes(_ cols: Int) -> Int { cols / blockSize * blockBytes }

    /// Every type number of the GGUF specification, for messages about types mm1pack does not handle.
    static let names: [UInt32: String] = [
        0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
        11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
        19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
        27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
    ]

    public static func name(_ t: UInt32) -> String { names[t] ?? "unknown type \(t)" }
}

/// A GGUF metadata value, with the value type it is stored as (GGUF version 3). The common large arrays (the
/// vocabulary, merges, token types, scores) have their own cases so that they are not boxed element by element;
/// `array` holds any other array.
public indirect enum GGUFValue: Sendable, Equatable {
    case u8(UInt8), i8(Int8), u16(UInt16), i16(Int16), u32(UInt32), i32(Int32), f32(Float), bool(Bool)
    case string(String)
    case u64(UInt64), i64(Int64), f64(Double)
    case stringArray([String])
    case i32Array([Int32])
    case f32Array([Float])
    case array([GGUFValue])

    /// GGUF value type numbers.
    var typeCode: UInt32 {
        switch self {
        case .u8: return 0
        case .i8: return 1
        case .u16: return 2
        case .i16: return 3
        case .u32: return 4
        case .i32: return 5
        case .f32: return 6
        case .bool: return 7
        case .string: return 8
        case .stringArray, .i32Array, .f32Array, .array: return 9
        case .u64: return 10
        case .i64: return 11
        case .f64: return 12
        }
    }

    /// An integer value of any integer type that fits an `Int`.
    public var intValue: Int? {
        switch self {
        case .u8(let v): return Int(v)
        case .i8(let v): return Int(v)
        case .u16(let v): return Int(v)
        case .i16(let v): return Int(v)
        case .u32(let v): return Int(v)
        case .i32(let v): return Int(v)
        case .u64(let v): return Int(exactly: v)
        case .i64(let v): return Int(exactly: v)
        default: return nil
        }
    }

    /// A float or integer value as a `Double`.
    public var doubleValue: Double? {
        switch self {
        case .f32(let v): return Double(v)
        case .f64(let v): return v
        default: return intValue.map(Double.init)
        }
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }

    /// The elements of any array value.
    public var arrayValue: [GGUFValue]? {
        switch self {
        case .array(let a): return a
        case .stringArray(let a): return a.map { .string($0) }
        case .i32Array(let a): return a.map { .i32($0) }
        case .f32Array(let a): return a.map { .f32($0) }
        default: return nil
        }
    }

    /// The number of elements of an array value.
    var count: Int? {
        switch self {
        case .array(let a): return a.count
        case .stringArray(let a): return a.count
        case .i32Array(let a): return a.count
        case .f32Array(let a): return a.count
        default: return nil
        }
    }

    /// A short JSON-compatible rendering (arrays longer than `maxArray` become their length), for the bundle's
    /// metadata.
    func json(maxArray: Int) -> Any {
        if let n = count {
            if n > maxArray { return ["array_length": n] }
            return arrayValue!.map { $0.json(maxArray: maxArray) }
        }
        switch self {
        case .bool(let b): return b
        case .string(let s): return s
        case .f32, .f64:
            let v = doubleValue!
            return v.isFinite ? v : String(v)
        case .u64(let v): return v <= UInt64(Int.max) ? Int(v) : Double(v)
        default: return intValue!
        }
    }
}
