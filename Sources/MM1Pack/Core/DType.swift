/// Element types met in sources and bundles. Integer types are recognised so that they are reported by name
/// (position ids and similar buffers), never reinterpreted as floats.
public enum DType: String, Sendable, CaseIterable, Codable {
    case f32, f16, bf16, f64
    case i64, i32, i16, i8, u8, bool
    case u16, u32, u64

    public var byteSize: Int {
        switch self {
        case .f64, .i64, .u64: return 8
        case .f32, .i32, .u32: return 4
        case .f16, .bf16, .i16, .u16: return 2
        case .i8, .u8, .bool: return 1
        }
    }

    /// Floating types that can become canonical tensors.
    public var isConvertibleFloat: Bool { self == .f32 || self == .f16 || self == .bf16 }

    /// Name as safetensors spells it.
    public init?(safetensors name: String) {
        switch name {
        case "F32": self = .f32
        case "F16": self = .f16
        case "BF16": self = .bf16
        case "F64": self = .f64
        case "I64": self = .i64
        case "I32": self = .i32
        case "I16": self = .i16
        case "I8": self = .i8
        case "U8": self = .u8
        case "U16": self = .u16
        case "U32": self = .u32
        case "U64": self = .u64
        case "BOOL": self = .bool
        default: return nil
        }
    }
}

/// Product of dimensions, refusing negative dimensions and overflow instead of trapping.
public func checkedElementCount(_ shape: [Int]) -> Int? {
    var n = 1
    for d in shape {
        guard d >= 0 else { return nil }
        let (m, o) = n.multipliedReportingOverflow(by: d)
        if o { return nil }
        n = m
    }
    return n
}
