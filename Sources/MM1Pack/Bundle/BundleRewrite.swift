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
        var all = try bundle.sections.filter { !replaced.contains($0.name) }.map {
            Section(name: $0.name, raw: try bundle.sectionData(named: $0.name))
        }
        all += sections
        let entries = bundle.tensors.map { t -> TensorEntry in
            let q = t.quantJSON.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            return TensorEntry(name: t.name, dtype: t.dtypeName, shape: t.shape, length: t.length, quant: q)
        }
        let writer = try BundleWriter(path: path, tensors: entries, sections: all, config: bundle.config,
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
