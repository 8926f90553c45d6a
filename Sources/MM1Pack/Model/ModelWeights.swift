import Foundation

/// Read access to a bundle's canonical tensors for the forward pass. Tensors stay in the memory map and are read
/// as f32 one tensor (or one range of rows) at a time, so memory holds only the layer being computed:
/// - float tensors (f32/f16/bf16) are widened (`Widen`);
/// - quantized tensors (i8/q4, formats/bundle.md §2.2) are dequantized by the exact formula of the format;
/// - `overrides` replace tensors by f32 values held in memory: the quantizer uses them to run a block with its
///   weights already quantized (or rescaled by AWQ) before anything is written.
/// Every read of a weight by the model goes through `withF32` / `f32`, so these three cases are handled once.
public final class ModelWeights: @unchecked Sendable {
    public let bundle: BundleReader
    public let config: [String: Any]
    /// A tensor replaced in memory: f32 values (row-major, the bundle's shape) or a quantized tensor, which is
    /// dequantized when read exactly as its packed form would be.
    public enum Override: Sendable {
        case values([Float])
        case quantized(QuantizedTensor)

        var count: Int {
            switch self {
            case .values(let v): return v.count
            case .quantized(let q): return q.rows * q.cols
            }
        }
    }

    /// Tensors replaced in memory (by the quantizer, to run a block as it will be stored).
    public var overrides: [String: Override] = [:]
    private var quantViews: [String: QuantizedView] = [:]
    private let lock = NSLock()

    public init(bundle: BundleReader) {
        self.bundle = bundle
        self.config = bundle.config
    }

    public convenience init(path: String) throws {
        self.init(bundle: try BundleReader(path: path))
    }

    public func has(_ name: String) -> Bool { bundle.tensor(named: name) != nil }

    public func shape(_ name: String) throws -> [Int] { try tensor(name).shape }

    func tensor(_ name: String) throws -> BundleTensor {
        guard let t = bundle.tensor(named: name) else {
            throw MM1Error(file: bundle.path, tensor: name, "is not in the bundle")
        }
        return t
    }

    /// The tensor, checked to be one the forward pass can read (f32, f16, bf16, or a quantized i8/q4 weight).
    func readableTensor(_ name: String) throws -> BundleTensor {
        let t = try tensor(name)
        if t.isQuantized {
            _ = try quantView(t)
            return t
        }
        guard let dtype = t.dtype, dtype.isConvertibleFloat else {
            throw MM1Error(file: bundle.path, tensor: name, "has dtype \(t.dtypeName), which the forward pass cannot read")
        }
        return t
    }

    func quantView(_ t: BundleTensor) throws -> QuantizedView {
        lock.lock()
        defer { lock.unlock() }
        if let v = quantViews[t.name] { return v }
        let v = try QuantizedView(t, file: bundle.path)
        quantViews[t.name] = v
        return v
    }

    /// Runs `body` on `count` values of the tensor from element `offset` (default: all of it) as f32, row-major.
    /// The pointer is valid only during `body`: it points into an override, into the memory map (aligned f32), or
    /// into a pooled scratch buffer. Quantized tensors are read in whole rows (`offset` and `count` multiples of
    /// the last dimension), which is how the model reads them (whole tensors, one expert, chunks of vocabulary).
    public func withF32<R>(_ name: String, offset: Int = 0, count: Int? = nil,
                           _ body: (UnsafePointer<Float>) throws -> R) throws -> R {
        if let o = overrides[name] {
            let n = count ?? o.count
            precondition(offset >= 0 && offset + n <= o.count, "withF32: range outside override of \(name)")
            switch o {
            case .values(let v):
                return try v.withUnsafeBufferPointer { try body($0.baseAddress! + offset) }
            case .quantized(let q):
                precondition(offset % q.cols == 0 && n % q.cols == 0, "withF32: quantized override read off a row boundary")
                return try ScratchPool.shared.with(max(1, n)) { buf in
                    q.dequantize(rows: (offset / q.cols)..<((offset + n) / q.cols), into: buf)
                    return try body(buf)
                }
            }
        }
        let t = try readableTensor(name)
        let n = count ?? t.elementCount
        precondition(offset >= 0 && offset + n <= t.elementCount, "withF32: range outside tensor \(name)")
        if t.isQuantized {
            let v = try quantView(t)
            guard offset % v.cols == 0, n % v.cols == 0 else {
                throw MM1Error(file: bundle.path, tensor: name, "quantized tensor read at element \(offset) (+\(n)), not on a row boundary")
            }
            let rows = (offset / v.cols)..<((offset + n) / v.cols)
            return try ScratchPool.shared.with(max(1, n)) { buf in
                v.dequantize(rows: rows, into: buf)
                v.releasePages(rows: rows)
                return try body(buf)
            }
        }
        return try Widen.with(t, offset: offset, count: n, body)
    }

    /// `count` values of the tensor from element `offset` (default: all of it) as a fresh f32 array.
    public func f32(_ name: String, offset: Int = 0, count: Int? = nil) throws -> [Float] {
        let n = try count ?? (overrides[name]?.count ?? tensor(name).elementCount)
        if overrides[name] == nil {
            let t = try readableTensor(name)
            if !t.isQuantized {
                precondition(offset >= 0 && offset + n <= t.elementCount, "f32: range outside tensor")
                return Widen.array(t, offset: offset, count: n)
            }
        }
        return try withF32(name, offset: offset, count: n) { Array(UnsafeBufferPointer(start: $0, count: n)) }
    }

    /// `f32(name)` when present, nil when the tensor is absent (optional biases).
    public func f32IfPresent(_ name: String) throws -> [Float]? {
        has(name) ? try f32(name) : nil
    }
}
