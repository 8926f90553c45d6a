import Foundation

/// One input of a probe file (formats/probes.md): token ids (or text for models with a tokenizer) with one image
/// token per image — an id equal to the config's `image_token_id`, or any negative id (Honeybee's convention) — and
/// the images as paths relative to the file. An image-encoder-only bundle takes probes with images alone.
public struct Probe: Sendable, Equatable {
    public var id: String
    public var inputIDs: [Int]?
    public var text: String?
    /// Absolute paths, resolved against the probe file's directory.
    public var images: [String]
}

public enum ProbeFile {
    /// Parses a JSON-lines probe file. Ids become output file names, so they are restricted to
    /// `[A-Za-z0-9_.-]`, may not start with '.', and must be unique.
    public static func load(_ path: String) throws -> [Probe] {
        guard let data = FileManager.default.contents(atPath: path) else { throw MM1Error(file: path, "cannot read") }
        guard let text = String(data: data, encoding: .utf8) else { throw MM1Error(file: path, "is not UTF-8") }
        let dir = (path as NSString).deletingLastPathComponent
        var probes: [Probe] = []
        var seen = Set<String>()
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            func fail(_ m: String) -> MM1Error { MM1Error(file: path, "line \(n + 1): \(m)") }
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw fail("is not a JSON object")
            }
            let allowed: Set<String> = ["id", "input_ids", "text", "images"]
            if let bad = obj.keys.first(where: { !allowed.contains($0) }) { throw fail("unknown member \"\(bad)\"") }
            guard let id = obj["id"] as? String, !id.isEmpty, id.count <= 128, !id.hasPrefix("."),
                  id.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) && $0.isASCII || "_.-".unicodeScalars.contains($0) })
            else { throw fail("\"id\" must be 1–128 characters of [A-Za-z0-9_.-], not starting with '.'") }
            guard seen.insert(id).inserted else { throw fail("id '\(id)' is used twice") }
            var ids: [Int]?
            if let v = obj["input_ids"] {
                guard let list = v as? [Any], let ints = list as? [Int], ints.count == list.count, !ints.isEmpty else {
                    throw fail("\"input_ids\" must be a non-empty list of integers")
                }
                ids = ints
            }
            let probeText = obj["text"] as? String
            if ids != nil && probeText != nil { throw fail("has both \"input_ids\" and \"text\"; give one") }
            var images: [String] = []
            if let v = obj["images"] {
                guard let list = v as? [String] else { throw fail("\"images\" must be a list of paths") }
                images = list.map { $0.hasPrefix("/") ? $0 : (dir as NSString).appendingPathComponent($0) }
            }
            if ids == nil && probeText == nil && images.isEmpty { throw fail("has no \"input_ids\", \"text\" or \"images\"") }
            probes.append(Probe(id: id, inputIDs: ids, text: probeText, images: images))
        }
        guard !probes.isEmpty else { throw MM1Error(file: path, "holds no probes") }
        return probes
    }
}
