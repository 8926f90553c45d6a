import Foundation

/// Read access to a bundle's canonical tensors for the forward pass. Tensors stay in the memory map; `f32` widens
/// one tensor into a fresh buffer (f16/bf16 → f32), so memory holds only the layer being computed.
public final class ModelWeights: @unchecked Sendable {
    public let bundle: BundleReader
    public let config: [String: Any]

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

    /// The tensor, checked to be one the forward pass can read (f32, f16 or bf16).
    func readableTensor(_ name: String) throws -> BundleTensor {
        let t = try tensor(name)
        guard let dtype = t.dtype, dtype.isConvertibleFloat else {
            throw MM1Error(file: bundle.path, tensor: name, "has dtype \(t.dtypeName), which the forward pass cannot read yet")
        }
        return t
    }

    /// `count` values of the tensor from element `offset` (default: all of it) as f32, row-major. The widening is
    /// vectorised and the tensor's pages in the memory map are released afterwards (`Widen`).
    public func f32(_ name: String, offset: Int = 0, count: Int? = nil) throws -> [Float] {
        let t = try readableTensor(name)
        let n = count ?? t.elementCount
        precondition(offset >= 0 && offset + n <= t.elementCount, "f32: range outside tensor")
        return Widen.array(t, offset: offset, count: n)
    }

    /// `f32(name)` when present, nil when the tensor is absent (optional biases).
    public func f32IfPresent(_ name: String) throws -> [Float]? {
        has(name) ? try f32(name) : nil
    }
}
