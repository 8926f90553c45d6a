import Foundation

/// `mm1pack inspect BUNDLE --dump DIR`: every tensor's values as the Swift tool reads them, for comparison with other
/// readers (the C library, `python/mm1bundle`; `scripts/check_readers.py`).
public enum TensorDump {
    /// Writes each tensor of `bundle` as `dir/<name>.npy`, little-endian float32 in the tensor's logical shape: f32
    /// as stored, f16 and bf16 widened, i8 and q4 dequantized by `QuantizedView` (the path the forward pass uses).
    /// Tensor names are `[A-Za-z0-9_.]` (the parser enforces it), so a name cannot leave `dir`. Each tensor's digest
    /// is checked first, so a damaged file is reported rather than dumped. Returns the number of files written.
    @discardableResult
    public static func write(_ bundle: BundleReader, to dir: String) throws -> Int {
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } catch {
            throw MM1Error(file: dir, "cannot create the dump directory: \(error.localizedDescription)")
        }
        for t in bundle.tensors {
            guard bundle.checkTensor(t) else {
                throw MM1Error(file: bundle.path, tensor: t.name, "sha256 mismatch: not dumping a damaged tensor")
            }
            let values: [Float]
            if t.isQuantized {
                values = try QuantizedView(t, file: bundle.path).dequantized()
            } else {
                values = Widen.array(t, release: false)
            }
            try NPY.write(dir + "/" + t.name + ".npy", shape: t.shape, data: values)
        }
        return bundle.tensors.count
    }
}
