import Crypto
import Foundation

/// A probe set and the reference model's captures on it, as a bundle carries them in its `verify.*` sections
/// (formats/verify.md §2), so that `mm1pack verify` needs nothing but the bundle.
public struct VerifyReference {
    public var probes: [CalibrationSample]
    public var captures: [ProbeCapture]
    /// Where the probes came from: a file path, "built-in", or "calibration file (held out)".
    public var source: String
    /// SHA-256 over the probes' ids and pixels as stored (§2.1), so two bundles can be seen to share probes.
    public var probesDigest: String
    /// The reference model: the bundle or checkpoint it ran from and that file's header digest.
    public var model: [String: Any]
    /// Keep each row's k largest logits (nil: all logits).
    public var logitsTopK: Int?
    /// Rows kept of the sampled tensors (nil: all).
    public var maxRows: Int?

    public static let manifestSection = "verify.json"
    public static let formatVersion = 1
    /// Defaults: all logits up to this vocabulary size, else the top `defaultTopK`; 16 rows per sampled tensor.
    public static let fullLogitsMaxVocab = 4096
    public static let defaultTopK = 64
    public static let defaultMaxRows = 16

    /// The number of logits to keep for a vocabulary: nil (all) for small vocabularies.
    public static func defaultTopK(vocab: Int) -> Int? { vocab <= fullLogitsMaxVocab ? nil : defaultTopK }

    /// Runs `model` (the reference, computed in f32) on every probe.
    public static func compute(model: MultimodalModel, probes: [CalibrationSample], source: String,
                               logitsTopK: Int?, maxRows: Int?, progress: Progress? = nil) throws -> VerifyReference {
        var caps: [ProbeCapture] = []
        for (i, p) in probes.enumerated() {
            progress?.update(item: i + 1, bytes: i, detail: p.id, force: true)
            caps.append(try ProbeRunner.run(model, probe: p, maxRows: maxRows, logitsTopK: logitsTopK))
        }
        progress?.done()
        let b = model.weights.bundle
        let desc: [String: Any] = ["bundle": (b.path as NSString).lastPathComponent,
                                   "header_sha256": hex(SHA256.hash(data: Array(b.headerText.utf8))),
                                   "compute": "f32"]
        return VerifyReference(probes: probes, captures: caps, source: source, probesDigest: digest(probes),
                               model: desc, logitsTopK: logitsTopK, maxRows: maxRows)
    }

    /// SHA-256 over each probe's id, ids (int64 little-endian) and images (width, height, pixels).
    public static func digest(_ probes: [CalibrationSample]) -> String {
        var h = SHA256()
        func put(_ v: Int) { withUnsafeBytes(of: Int64(v).littleEndian) { h.update(bufferPointer: $0) } }
        for p in probes {
            h.update(data: Array(p.id.utf8)); put(p.ids.count)
            for id in p.ids { put(id) }
            put(p.images.count)
            for img in p.images { put(img.width); put(img.height); h.update(data: img.pixels) }
        }
        return hex(h.finalize())
    }

    // MARK: sections

    static func arrayName(_ probe: Int, _ name: String) -> String { "verify.\(probe).\(name).npy" }

    public func sections() throws -> [BundleWriter.Section] {
        var out: [BundleWriter.Section] = []
        var details: [[String: Any]] = []
        for (i, (p, c)) in zip(probes, captures).enumerated() {
            func add<T: NPY.Storable & BitwiseCopyable>(_ name: String, _ shape: [Int], _ data: [T]) throws {
                out.append(.init(name: VerifyReference.arrayName(i, name), raw: try NPY.encode(shape: shape, data)))
            }
            for (j, img) in p.images.enumerated() { try add("image\(j)", [img.height, img.width, 3], img.pixels) }
            switch c.logits {
            case .full(let v)?:
                try add("logits", [c.tokens, c.vocab], v)
            case .topK(let k, let ids, let vals, let lse)?:
                try add("topk_ids", [c.tokens, k], ids)
                try add("topk_logits", [c.tokens, k], vals)
                try add("lse", [c.tokens], lse)
            case nil:
                break
            }
            let layers = c.hidden.keys.sorted()
            let rows = ProbeCapture.sampledRows(c.tokens, max: c.maxRows).count
            if !layers.isEmpty { try add("hidden", [layers.count, rows, c.hiddenWidth], layers.flatMap { c.hidden[$0]! }) }
            let moe = c.experts.keys.sorted()
            if !moe.isEmpty { try add("experts", [moe.count, c.tokens, c.expertsPerToken], moe.flatMap { c.experts[$0]!.map(Int32.init) }) }
            let blocks = c.vitBlocks.keys.sorted()
            if c.pieces > 0 {
                let sv = ProbeCapture.sampledRows(c.vitTokens, max: c.maxRows).count
                let sf = ProbeCapture.sampledRows(c.featureTokens, max: c.maxRows).count
                if !blocks.isEmpty { try add("vit_blocks", [blocks.count, c.pieces, sv, c.vitWidth], blocks.flatMap { c.vitBlocks[$0]! }) }
                try add("features", [c.pieces, sf, c.featureWidth], c.features)
                if c.connectorTokens > 0 {
                    let sc = ProbeCapture.sampledRows(c.connectorTokens, max: c.maxRows).count
                    try add("connector", [c.pieces, sc, c.connectorWidth], c.connector)
                }
            }
            var d: [String: Any] = [
                "id": p.id, "input_ids": p.ids, "images": p.images.map { ["width": $0.width, "height": $0.height] },
                "tokens": c.tokens, "vocab": c.vocab, "llm_layers": layers, "moe_layers": moe,
                "experts_per_token": c.expertsPerToken, "pieces": c.pieces, "vit_blocks": blocks,
                "vit_tokens": c.vitTokens, "feature_tokens": c.featureTokens, "connector_tokens": c.connectorTokens,
                "hidden_width": c.hiddenWidth, "vit_width": c.vitWidth, "feature_width": c.featureWidth,
                "connector_width": c.connectorWidth,
            ]
            if let f = c.firstImageRow { d["first_image_row"] = f }
            details.append(d)
        }
        var manifest: [String: Any] = [
            "format_version": VerifyReference.formatVersion,
            "probes": ["source": source, "sha256": probesDigest, "count": probes.count],
            "reference_model": model,
            "logits": logitsTopK.map { ["kind": "top_k", "k": $0] as [String: Any] } ?? ["kind": "full"],
            "items": details,
        ]
        manifest["max_rows"] = maxRows ?? 0
        return [.init(name: VerifyReference.manifestSection, raw: try CanonicalJSON.bytes(manifest))] + out
    }

    /// The reference a bundle carries, or nil when it has no `verify.json`. Every array is checked against the
    /// manifest; anything inconsistent is an error naming the bundle and the section.
    public static func load(from bundle: BundleReader) throws -> VerifyReference? {
        guard bundle.section(named: manifestSection) != nil else { return nil }
        let path = bundle.path
        func fail(_ section: String, _ m: String) -> MM1Error { MM1Error(file: path, "section '\(section)': \(m)") }
        guard let root = try? JSONSerialization.jsonObject(with: Data(try bundle.sectionData(named: manifestSection))) as? [String: Any] else {
            throw fail(manifestSection, "is not a JSON object")
        }
        guard root["format_version"] as? Int == formatVersion else {
            throw fail(manifestSection, "format_version \(root["format_version"] ?? "missing") is not \(formatVersion)")
        }
        guard let items = root["items"] as? [[String: Any]], let pr = root["probes"] as? [String: Any],
              let lg = root["logits"] as? [String: Any], let kind = lg["kind"] as? String, let maxRowsRaw = root["max_rows"] as? Int
        else { throw fail(manifestSection, "lacks items, probes, logits or max_rows") }
        let topK: Int?
        switch kind {
        case "full": topK = nil
        case "top_k":
            guard let k = lg["k"] as? Int, k >= 5 else { throw fail(manifestSection, "logits.k must be an integer ≥ 5") }
            topK = k
        default: throw fail(manifestSection, "logits.kind '\(kind)' is not full or top_k")
        }
        let maxRows = maxRowsRaw > 0 ? maxRowsRaw : nil

        func array(_ i: Int, _ name: String, _ shape: [Int]) throws -> NPY.Decoded {
            let s = arrayName(i, name)
            guard bundle.section(named: s) != nil else { throw fail(s, "is missing") }
            let a = try NPY.decode(try bundle.sectionData(named: s), name: "\(path): section '\(s)'")
            guard a.shape == shape else { throw fail(s, "has shape \(a.shape), expected \(shape) from \(manifestSection)") }
            return a
        }
        func ints(_ d: [String: Any], _ k: String, _ i: Int) throws -> Int {
            guard let v = d[k] as? Int, v >= 0 else { throw fail(manifestSection, "items[\(i)].\(k) must be an integer ≥ 0") }
            return v
        }

        var probes: [CalibrationSample] = []
        var caps: [ProbeCapture] = []
        for (i, d) in items.enumerated() {
            guard let id = d["id"] as? String, let ids = d["input_ids"] as? [Int], let imgs = d["images"] as? [[String: Any]],
                  let layers = d["llm_layers"] as? [Int], let moe = d["moe_layers"] as? [Int], let blocks = d["vit_blocks"] as? [Int]
            else { throw fail(manifestSection, "items[\(i)] lacks id, input_ids, images, llm_layers, moe_layers or vit_blocks") }
            var images: [RGBImage] = []
            for (j, im) in imgs.enumerated() {
                guard let w = im["width"] as? Int, let h = im["height"] as? Int, w > 0, h > 0 else {
                    throw fail(manifestSection, "items[\(i)].images[\(j)] needs width and height")
                }
                let a = try array(i, "image\(j)", [h, w, 3])
                guard a.isInteger else { throw fail(arrayName(i, "image\(j)"), "must hold uint8 pixels") }
                images.append(RGBImage(width: w, height: h, pixels: a.floats.map { UInt8(clamping: Int($0)) }))
            }
            probes.append(CalibrationSample(id: id, ids: ids, images: images))

            var c = ProbeCapture(id: id)
            c.maxRows = maxRows
            c.tokens = try ints(d, "tokens", i)
            c.vocab = try ints(d, "vocab", i)
            c.firstImageRow = d["first_image_row"] as? Int
            c.pieces = try ints(d, "pieces", i)
            c.vitTokens = try ints(d, "vit_tokens", i)
            c.featureTokens = try ints(d, "feature_tokens", i)
            c.connectorTokens = try ints(d, "connector_tokens", i)
            c.expertsPerToken = try ints(d, "experts_per_token", i)
            if c.tokens > 0 {
                if let k = topK {
                    let kk = min(k, c.vocab)
                    let idsA = try array(i, "topk_ids", [c.tokens, kk])
                    guard let iv = idsA.ints, iv.allSatisfy({ $0 >= 0 && $0 < c.vocab }) else {
                        throw fail(arrayName(i, "topk_ids"), "holds ids outside 0..<\(c.vocab)")
                    }
                    c.logits = .topK(k: kk, ids: iv.map { Int32($0) }, values: try array(i, "topk_logits", [c.tokens, kk]).floats,
                                     lse: try array(i, "lse", [c.tokens]).floats)
                } else {
                    c.logits = .full(try array(i, "logits", [c.tokens, c.vocab]).floats)
                }
            }
            c.hiddenWidth = try ints(d, "hidden_width", i)
            c.vitWidth = try ints(d, "vit_width", i)
            c.featureWidth = try ints(d, "feature_width", i)
            c.connectorWidth = try ints(d, "connector_width", i)
            let rows = ProbeCapture.sampledRows(c.tokens, max: maxRows).count
            if !layers.isEmpty {
                let h = try array(i, "hidden", [layers.count, rows, c.hiddenWidth]).floats
                let n = rows * c.hiddenWidth
                for (j, l) in layers.enumerated() { c.hidden[l] = Array(h[(j * n)..<((j + 1) * n)]) }
            }
            if !moe.isEmpty {
                guard let e = try array(i, "experts", [moe.count, c.tokens, c.expertsPerToken]).ints else {
                    throw fail(arrayName(i, "experts"), "must hold integers")
                }
                let n = c.tokens * c.expertsPerToken
                for (j, l) in moe.enumerated() { c.experts[l] = Array(e[(j * n)..<((j + 1) * n)]) }
            }
            if c.pieces > 0 {
                let sv = ProbeCapture.sampledRows(c.vitTokens, max: maxRows).count
                let sf = ProbeCapture.sampledRows(c.featureTokens, max: maxRows).count
                if !blocks.isEmpty {
                    let v = try array(i, "vit_blocks", [blocks.count, c.pieces, sv, c.vitWidth]).floats
                    let n = c.pieces * sv * c.vitWidth
                    for (j, b) in blocks.enumerated() { c.vitBlocks[b] = Array(v[(j * n)..<((j + 1) * n)]) }
                }
                c.features = try array(i, "features", [c.pieces, sf, c.featureWidth]).floats
                if c.connectorTokens > 0 {
                    let sc = ProbeCapture.sampledRows(c.connectorTokens, max: maxRows).count
                    c.connector = try array(i, "connector", [c.pieces, sc, c.connectorWidth]).floats
                }
            }
            caps.append(c)
        }
        guard let src = pr["source"] as? String, let dg = pr["sha256"] as? String else {
            throw fail(manifestSection, "probes needs source and sha256")
        }
        guard dg == digest(probes) else {
            throw fail(manifestSection, "the stored probes do not match probes.sha256")
        }
        return VerifyReference(probes: probes, captures: caps, source: src, probesDigest: dg,
                               model: root["reference_model"] as? [String: Any] ?? [:], logitsTopK: topK, maxRows: maxRows)
    }
}
