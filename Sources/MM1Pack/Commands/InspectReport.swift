import Foundation

/// What `mm1pack inspect` shows: the configuration in brief, parameters per component, bytes per dtype, and
/// optionally the tensor table with digests.
public enum InspectReport {
    public static func component(_ name: String) -> String {
        if name.hasPrefix("vit.") { return "vision" }
        if name.hasPrefix("conn.") { return "connector" }
        return "llm"
    }

    public static func json(_ b: BundleReader, tensors: Bool, checked: [String]?) throws -> [UInt8] {
        var params: [String: Int] = [:]
        var bytesByType: [String: Int] = [:]
        for t in b.tensors {
            params[component(t.name), default: 0] += t.shape.reduce(1, *)
            bytesByType[t.dtypeName, default: 0] += t.length
        }
        var out: [String: Any] = [
            "file": b.path,
            "format_version": b.formatVersion,
            "config": b.config,
            "provenance": b.provenance,
            "parameters": params,
            "bytes_by_dtype": bytesByType,
            "tensor_count": b.tensors.count,
            "sections": b.sections.map { ["name": $0.name, "encoding": $0.encoding.rawValue, "raw_length": $0.rawLength] as [String: Any] },
        ]
        if tensors {
            out["tensors"] = b.tensors.map {
                ["name": $0.name, "dtype": $0.dtypeName, "shape": $0.shape, "offset": $0.offset, "length": $0.length,
                 "sha256": $0.sha256] as [String: Any]
            }
        }
        if let checked { out["checksum_failures"] = checked }
        return try CanonicalJSON.bytes(out)
    }

    public static func text(_ b: BundleReader, tensors: Bool, checked: [String]?) -> String {
        var lines: [String] = []
        let cfg = b.config
        lines.append("\(b.path): mm1pack bundle v\(b.formatVersion), \(b.tensors.count) tensors")
        if let p = b.provenance["source_layout"] as? String { lines.append("source layout: \(p)") }
        if let v = cfg["vision"] as? [String: Any] {
            lines.append("vision:    \(v["kind"] ?? "?") \(v["num_layers"] ?? "?") layers, width \(v["hidden_size"] ?? "?"), \(v["num_heads"] ?? "?") heads, patch \(v["patch_size"] ?? "?"), image \(v["image_size"] ?? "?")")
        }
        if let c = cfg["connector"] as? [String: Any] {
            var s = "connector: \(c["kind"] ?? "?") \(c["input_size"] ?? "?") → \(c["output_size"] ?? "?")"
            if let q = c["num_queries"] { s += ", \(q) tokens per image" }
            lines.append(s)
        }
        if let l = cfg["llm"] as? [String: Any] {
            var s = "llm:       \(l["num_layers"] ?? "?") layers, width \(l["hidden_size"] ?? "?"), \(l["num_heads"] ?? "?")/\(l["num_kv_heads"] ?? "?") heads, vocab \(l["vocab_size"] ?? "?")"
            if let m = l["moe"] as? [String: Any] {
                s += ", MoE \(m["num_experts"] ?? "?") experts top-\(m["top_k"] ?? "?") in \((m["layers"] as? [Any])?.count ?? 0) layers"
            }
            lines.append(s)
        }
        var params: [String: Int] = [:]
        var bytesByType: [String: Int] = [:]
        for t in b.tensors {
            params[component(t.name), default: 0] += t.shape.reduce(1, *)
            bytesByType[t.dtypeName, default: 0] += t.length
        }
        lines.append("parameters: " + ["vision", "connector", "llm"].compactMap { k in params[k].map { "\(k) \(format($0))" } }.joined(separator: ", ") + ", total \(format(params.values.reduce(0, +)))")
        lines.append("bytes: " + bytesByType.keys.sorted().map { "\($0) \(Progress.bytes(bytesByType[$0]!))" }.joined(separator: ", "))
        if !b.sections.isEmpty { lines.append("sections: " + b.sections.map(\.name).joined(separator: ", ")) }
        if let checked {
            lines.append(checked.isEmpty ? "checksums: all \(b.tensors.count) tensors OK" : "checksums: \(checked.count) FAILED: \(checked.joined(separator: ", "))")
        }
        if tensors {
            let w = b.tensors.map(\.name.count).max() ?? 10
            for t in b.tensors {
                let shape = "[" + t.shape.map(String.init).joined(separator: ", ") + "]"
                lines.append(t.name.padding(toLength: w, withPad: " ", startingAt: 0) + "  " + t.dtypeName.padding(toLength: 5, withPad: " ", startingAt: 0) + shape.padding(toLength: 18, withPad: " ", startingAt: 0) + " " + t.sha256)
            }
        }
        return lines.joined(separator: "\n")
    }

    static func format(_ n: Int) -> String {
        if n >= 1_000_000_000 { return String(format: "%.2fB", Double(n) / 1e9) }
        if n >= 1_000_000 { return String(format: "%.2fM", Double(n) / 1e6) }
        if n >= 1_000 { return String(format: "%.1fK", Double(n) / 1e3) }
        return "\(n)"
    }
}
