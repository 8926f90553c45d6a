import Foundation

/// The logits of one probe as kept for verification: all of them, or each row's k largest (ids and values, in
/// descending order) plus the row's log-sum-exp, which is enough for the exact probability of every kept token
/// and for the mass of the rest (formats/verify.md §3).
public enum CapturedLogits: Sendable {
    case full([Float])
    case topK(k: Int, ids: [Int32], values: [Float], lse: [Float])
}

/// What one probe's run through a model leaves for verification: logits, and at a deterministic sample of rows
/// the ViT blocks' and features' outputs, the connector's output, every LLM layer's output, and each token's
/// chosen experts in every MoE layer (formats/verify.md §2).
public struct ProbeCapture: Sendable {
    public var id: String
    /// LLM sequence length after image expansion (0 for an image-encoder-only model).
    public var tokens = 0
    public var vocab = 0
    /// Rows at or after this one follow (or are) an image and are "image-conditioned"; nil for text-only probes.
    public var firstImageRow: Int?
    public var logits: CapturedLogits?
    /// Rows kept per sampled tensor; nil keeps all rows.
    public var maxRows: Int?
    /// Layer index → the layer's output at the sampled rows, [S, D].
    public var hidden: [Int: [Float]] = [:]
    public var hiddenWidth = 0
    /// MoE layer index → each token's chosen experts in rank order, [T, k].
    public var experts: [Int: [Int]] = [:]
    public var expertsPerToken = 0
    /// Image pieces encoded (whole images, or tiles and overviews with MM1.5 splitting).
    public var pieces = 0
    /// Rows of one piece at the ViT blocks, at the ViT output, and at the connector output (before sampling).
    public var vitTokens = 0, featureTokens = 0, connectorTokens = 0
    public var vitWidth = 0, featureWidth = 0, connectorWidth = 0
    /// Block index → [pieces, S, W] at the sampled rows.
    public var vitBlocks: [Int: [Float]] = [:]
    /// [pieces, S, E] and [pieces, S, D] at the sampled rows.
    public var features: [Float] = []
    public var connector: [Float] = []

    /// The rows kept of `count`: all when `max` is nil or count ≤ max, else `max` evenly spaced rows from the
    /// first to the last, row j = ⌊j·(count − 1) / (max − 1)⌋.
    public static func sampledRows(_ count: Int, max: Int?) -> [Int] {
        guard let m = max, count > m else { return Array(0..<count) }
        if m == 1 { return [0] }
        return (0..<m).map { $0 * (count - 1) / (m - 1) }
    }

    static func gather(_ data: [Float], width: Int, rows: [Int]) -> [Float] {
        var out = [Float]()
        out.reserveCapacity(rows.count * width)
        data.withUnsafeBufferPointer { p in
            for r in rows { out.append(contentsOf: UnsafeBufferPointer(rebasing: p[(r * width)..<((r + 1) * width)])) }
        }
        return out
    }
}

/// Runs a model on one probe and captures what verification compares.
public enum ProbeRunner {
    /// - Parameters:
    ///   - maxRows: rows kept per sampled tensor (nil: all).
    ///   - logitsTopK: keep each row's k largest logits and its log-sum-exp instead of all logits (nil: all).
    public static func run(_ model: MultimodalModel, probe: CalibrationSample, maxRows: Int?, logitsTopK: Int?) throws -> ProbeCapture {
        let hooks = CaptureHooks(maxRows: maxRows)
        var cap = ProbeCapture(id: probe.id)
        cap.maxRows = maxRows
        if let llm = model.llm {
            let pieces = try model.imagePieces(images: probe.images)
            let x = try model.inputEmbeddings(ids: probe.ids, images: pieces, hooks: hooks)
            if let first = probe.ids.firstIndex(where: { model.isImageToken($0) }) { cap.firstImageRow = first }
            let logits = try llm.forward(embeddings: x.data, count: x.rows, hooks: hooks)
            cap.tokens = x.rows
            cap.vocab = llm.config.vocabSize
            if let k = logitsTopK, k < cap.vocab {
                cap.logits = topK(logits, rows: x.rows, vocab: cap.vocab, k: k)
            } else {
                cap.logits = .full(logits)
            }
        } else {
            guard !probe.images.isEmpty else {
                throw MM1Error("probe '\(probe.id)' has no images, and the model is an image encoder only")
            }
            for piece in try model.imagePieces(images: probe.images).flatMap({ $0 }) {
                if case .pixels(let p, let size) = piece { _ = try model.visionFeatures(pixels: p, size: size, hooks: hooks) }
            }
        }
        hooks.fill(&cap)
        return cap
    }

    /// Each row's k largest logits (descending; ties keep the lower id) and its log-sum-exp.
    static func topK(_ logits: [Float], rows: Int, vocab v: Int, k: Int) -> CapturedLogits {
        var ids = [Int32](), vals = [Float](), lse = [Float]()
        ids.reserveCapacity(rows * k); vals.reserveCapacity(rows * k); lse.reserveCapacity(rows)
        logits.withUnsafeBufferPointer { lp in
            for r in 0..<rows {
                let row = UnsafeBufferPointer(rebasing: lp[(r * v)..<((r + 1) * v)])
                for j in VerifyMath.topIndices(row, k: k) { ids.append(Int32(j)); vals.append(row[j]) }
                lse.append(Float(VerifyMath.logSumExp(row)))
            }
        }
        return .topK(k: k, ids: ids, values: vals, lse: lse)
    }
}

/// Keeps the sampled rows of the points verification needs, in the order the model reports them (the ViT
/// points once per image piece).
final class CaptureHooks: ForwardHooks {
    let maxRows: Int?
    var hidden: [Int: [Float]] = [:]
    var hiddenWidth = 0
    var experts: [Int: [Int]] = [:]
    var expertsPerToken = 0
    var vitBlocks: [Int: [Float]] = [:]
    var features: [Float] = []
    var connector: [Float] = []
    var pieces = 0
    var vitTokens = 0, featureTokens = 0, connectorTokens = 0
    var vitWidth = 0, featureWidth = 0, connectorWidth = 0

    init(maxRows: Int?) { self.maxRows = maxRows }

    func wants(_ point: HookPoint) -> Bool {
        guard case .named(let n) = point else { return false }
        return n.hasSuffix(".output") || n.hasSuffix(".moe.experts") || n == "vit.features"
    }

    /// The index in `name` = prefix + index + suffix, or nil.
    static func index(_ name: String, _ prefix: String, _ suffix: String) -> Int? {
        guard name.hasPrefix(prefix), name.hasSuffix(suffix), name.count > prefix.count + suffix.count else { return nil }
        return Int(name.dropFirst(prefix.count).dropLast(suffix.count))
    }

    func observe(_ point: HookPoint, _ data: [Float], shape: [Int]) {
        guard case .named(let n) = point, shape.count == 2 else { return }
        let (rows, width) = (shape[0], shape[1])
        let kept = ProbeCapture.gather(data, width: width, rows: ProbeCapture.sampledRows(rows, max: maxRows))
        if let i = CaptureHooks.index(n, "llm.layers.", ".output") {
            hidden[i] = kept
            hiddenWidth = width
        } else if let i = CaptureHooks.index(n, "llm.layers.", ".moe.experts") {
            experts[i] = data.map { Int($0) }
            expertsPerToken = width
        } else if let i = CaptureHooks.index(n, "vit.blocks.", ".output") {
            vitBlocks[i, default: []] += kept
            (vitTokens, vitWidth) = (rows, width)
        } else if n == "vit.features" {
            features += kept
            (featureTokens, featureWidth) = (rows, width)
            pieces += 1
        } else if n == "conn.output" {
            connector += kept
            (connectorTokens, connectorWidth) = (rows, width)
        }
    }

    func fill(_ c: inout ProbeCapture) {
        c.hidden = hidden; c.hiddenWidth = hiddenWidth
        c.experts = experts; c.expertsPerToken = expertsPerToken
        c.vitBlocks = vitBlocks; c.features = features; c.connector = connector
        c.pieces = pieces
        (c.vitTokens, c.featureTokens, c.connectorTokens) = (vitTokens, featureTokens, connectorTokens)
        (c.vitWidth, c.featureWidth, c.connectorWidth) = (vitWidth, featureWidth, connectorWidth)
    }
}
