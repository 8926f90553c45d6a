import Foundation

extension BundleWriter {
    /// Writes a copy of `bundle` to `path` with the same tensors, configuration, provenance and metadata, and its
    /// sections replaced by `sections` (each given section replaces the one of the same name; the others are
    /// kept). Tensor bytes are copied as stored and their digests recomputed on the way, so a bundle damaged in
    /// place is not silently made valid: every tensor is checked against its old digest first.
    public static func rewrite(_ bundle: BundleReader, to path: String, sections: [Section]) throws {
        let failed = bundle.checkAll()
        guard failed.isEmpty else {
            throw MM1Error(file: bundle.path, "checksum mismatch in \(failed.joined(separator: ", ")); not rewriting a damaged bundle")
        }
        let replaced = Set(sections.map(\.name))
        let all = try Section.all(of: bundle).filter { !replaced.contains($0.name) } + sections
        let writer = try BundleWriter(path: path, tensors: bundle.tensors.map(TensorEntry.init), sections: all, config: bundle.config,
                                      provenance: bundle.provenance, metadata: bundle.metadata)
        do {
            for t in bundle.tensors {
                try writer.beginTensor(t.name)
                try writer.write(t.data)
                bundle.dropPages(t)
            }
            try writer.finish()
        } catch {
            writer.abort()
            throw error
        }
    }
}

extension BundleWriter.TensorEntry {
    /// The table entry of a tensor as another bundle stores it (same name, dtype, shape, length, quant object).
    public init(_ t: BundleTensor) {
        let q = t.quantJSON.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        self.init(name: t.name, dtype: t.dtypeName, shape: t.shape, length: t.length, quant: q)
    }
}

extension BundleWriter.Section {
    /// Every section of a bundle, decoded (and digest-checked), in table order.
    public static func all(of bundle: BundleReader) throws -> [BundleWriter.Section] {
        try bundle.sections.map { BundleWriter.Section(name: $0.name, raw: try bundle.sectionData(named: $0.name)) }
    }
}
