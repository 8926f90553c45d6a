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

    /// The tensor's values as f32, row-major.
    public func f32(_ name: String) throws -> [Float] {
        let t = try tensor(name)
        guard let dtype = t.dtype, dtype.isConvertibleFloat else {
            throw MM1Error(file: bundle.path, tensor: name, "has dtype \(t.dtypeName), which the forward pass cannot read yet")
        }
        var out = [Float](repeating: 0, count: t.elementCount)
        out.withUnsafeMutableBytes { d in
            ElementCopy.gather(src: t.data.baseAddress!, from: dtype, base: 0, loops: [(t.elementCount, 1)],
                               dst: d.baseAddress!, to: .f32)
        }
        return out
    }

    /// `f32(name)` when present, nil when the tensor is absent (optional biases).
    public func f32IfPresent(_ name: String) throws -> [Float]? {
        has(name) ? try f32(name) : nil
    }
}
