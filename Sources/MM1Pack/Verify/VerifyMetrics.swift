import Foundation

/// Token-level metrics over a set of positions (formats/verify.md §4).
public struct TokenSummary: Sendable {
    public var count = 0
    public var meanKLD = 0.0, medianKLD = 0.0, p99KLD = 0.0, maxKLD = 0.0
    /// Fraction of positions whose top token agrees.
    public var top1 = 0.0
    /// Mean of |top-5 ∩ top-5| / 5.
    public var top5 = 0.0
    /// √mean (p_ref(t) − p_packed(t))² for the reference's top token t.
    public var rmsDeltaTopP = 0.0
    public var maxAbsDeltaLogit = 0.0
    /// Σ(Δlogit)² / Σ(reference logit)² over the compared logits.
    public var logitNMSE = 0.0

    init(_ tokens: [VerifyMath.Token]) {
        count = tokens.count
        guard count > 0 else { return }
        let k = tokens.map(\.kld)
        meanKLD = k.reduce(0, +) / Double(count)
        medianKLD = VerifyMath.percentile(k, 0.5)
        p99KLD = VerifyMath.percentile(k, 0.99)
        maxKLD = k.max()!
        top1 = Double(tokens.filter(\.top1Agrees).count) / Double(count)
        top5 = Double(tokens.map(\.top5Common).reduce(0, +)) / Double(5 * count)
        rmsDeltaTopP = (tokens.map { $0.deltaTopP * $0.deltaTopP }.reduce(0, +) / Double(count)).squareRoot()
        maxAbsDeltaLogit = tokens.map(\.maxAbsDelta).max()!
        let sr = tokens.map(\.sumSqRef).reduce(0, +)
        logitNMSE = sr > 0 ? tokens.map(\.sumSqDelta).reduce(0, +) / sr : 0
    }

    func json() -> [String: Any] {
        ["positions": count, "mean_kld": meanKLD, "median_kld": medianKLD, "p99_kld": p99KLD, "max_kld": maxKLD,
         "top1": top1, "top5": top5, "rms_delta_top_p": rmsDeltaTopP, "max_abs_delta_logit": maxAbsDeltaLogit,
         "logit_nmse": logitNMSE]
    }
}

/// Token metrics over all positions, the text positions and the image-conditioned ones (at or after the first
/// image).
public struct TokenGroups: Sendable {
    public var all: TokenSummary
    public var text: TokenSummary
    public var image: TokenSummary

    init(_ tokens: [(VerifyMath.Token, Bool)]) {
        all = TokenSummary(tokens.map(\.0))
        text = TokenSummary(tokens.filter { !$0.1 }.map(\.0))
        image = TokenSummary(tokens.filter { $0.1 }.map(\.0))
    }

    func json() -> [String: Any] {
        var d: [String: Any] = ["all": all.json()]
        if text.count > 0 { d["text"] = text.json() }
        if image.count > 0 { d["image"] = image.json() }
        return d
    }
}

/// Σ(Δ)² and Σ(reference)² of one stage of the model, summed over probes: its relative error is √(Δ/ref).
public struct StageError: Sendable {
    /// `vit.blocks.N`, `vit.features`, `connector`, `llm.layers.N`.
    public var stage: String
    public var sumSqDelta = 0.0
    public var sumSqRef = 0.0
    public var relative: Double { sumSqRef > 0 ? (sumSqDelta / sumSqRef).squareRoot() : (sumSqDelta > 0 ? .infinity : 0) }
    public var nmse: Double { sumSqRef > 0 ? sumSqDelta / sumSqRef : (sumSqDelta > 0 ? .infinity : 0) }
}

/// One probe compared.
public struct ProbeComparison: Sendable {
    public var id: String
    public var tokens: [(VerifyMath.Token, Bool)]
    public var stages: [StageError]
    /// MoE layer → tokens whose chosen expert set is unchanged, and tokens.
    public var experts: [Int: (same: Int, total: Int)]

    /// Compares the packed model's capture with the reference's for the same probe.
    static func compare(reference r: ProbeCapture, packed p: ProbeCapture, file: String) throws -> ProbeComparison {
        func mismatch(_ what: String) -> MM1Error {
            MM1Error(file: file, "probe '\(r.id)': \(what) differs between the reference and this model; they are not the same architecture")
        }
        guard r.tokens == p.tokens, r.vocab == p.vocab, r.pieces == p.pieces else { throw mismatch("the sequence length, vocabulary or image pieces") }
        var tokens: [(VerifyMath.Token, Bool)] = []
        if let rl = r.logits, case .full(let q)? = p.logits {
            let v = r.vocab
            q.withUnsafeBufferPointer { qp in
                for t in 0..<r.tokens {
                    let qrow = UnsafeBufferPointer(rebasing: qp[(t * v)..<((t + 1) * v)])
                    let cond = r.firstImageRow.map { t >= $0 } ?? false
                    switch rl {
                    case .full(let pr):
                        pr.withUnsafeBufferPointer { pp in
                            let prow = UnsafeBufferPointer(rebasing: pp[(t * v)..<((t + 1) * v)])
                            tokens.append((VerifyMath.compare(packed: qrow, refFull: prow, refIDs: [], refValues: [], refLSE: 0), cond))
                        }
                    case .topK(let k, let ids, let vals, let lse):
                        tokens.append((VerifyMath.compare(packed: qrow, refFull: nil, refIDs: ids[(t * k)..<((t + 1) * k)],
                                                          refValues: vals[(t * k)..<((t + 1) * k)], refLSE: Double(lse[t])), cond))
                    }
                }
            }
        }
        var stages: [StageError] = []
        func stage(_ name: String, _ a: [Float]?, _ b: [Float]?) throws {
            guard let b else { return }
            guard let a, a.count == b.count else { throw mismatch("the captured \(name)") }
            let e = VerifyMath.squaredError(a, b)
            stages.append(StageError(stage: name, sumSqDelta: e.delta, sumSqRef: e.ref))
        }
        for b in r.vitBlocks.keys.sorted() { try stage("vit.blocks.\(b)", p.vitBlocks[b], r.vitBlocks[b]) }
        if r.pieces > 0 { try stage("vit.features", p.features, r.features) }
        if r.connectorTokens > 0 { try stage("connector", p.connector, r.connector) }
        for l in r.hidden.keys.sorted() { try stage("llm.layers.\(l)", p.hidden[l], r.hidden[l]) }
        var experts: [Int: (Int, Int)] = [:]
        for (l, re) in r.experts {
            guard let pe = p.experts[l], pe.count == re.count, r.expertsPerToken == p.expertsPerToken, r.expertsPerToken > 0 else {
                throw mismatch("the expert choices of MoE layer \(l)")
            }
            let k = r.expertsPerToken
            var same = 0
            for t in 0..<(re.count / k) where Set(re[(t * k)..<((t + 1) * k)]) == Set(pe[(t * k)..<((t + 1) * k)]) { same += 1 }
            experts[l] = (same, re.count / k)
        }
        return ProbeComparison(id: r.id, tokens: tokens, stages: stages, experts: experts)
    }
}

/// A limit on one overall metric (formats/verify.md §5).
public struct Threshold: Sendable {
    public enum Metric: String, CaseIterable, Sendable {
        case maxMeanKLD = "max_mean_kld", maxP99KLD = "max_p99_kld", maxKLD = "max_kld"
        case minTop1 = "min_top1", minTop5 = "min_top5", maxLogitNMSE = "max_logit_nmse"
        case maxFeatureNMSE = "max_feature_nmse", minExpertAgreement = "min_expert_agreement"

        public var isMinimum: Bool { rawValue.hasPrefix("min_") }
        public var label: String {
            switch self {
            case .maxMeanKLD: return "mean KLD"
            case .maxP99KLD: return "p99 KLD"
            case .maxKLD: return "max KLD"
            case .minTop1: return "top-1 agreement"
            case .minTop5: return "top-5 overlap"
            case .maxLogitNMSE: return "logit NMSE"
            case .maxFeatureNMSE: return "ViT feature NMSE"
            case .minExpertAgreement: return "expert agreement (worst MoE layer)"
            }
        }
    }

    public var metric: Metric
    public var limit: Double
    /// Where the limit came from: "recipe mm1-int4", "default", "--max-kld".
    public var origin: String
    public var value: Double? = nil

    public var passed: Bool {
        guard let value else { return true }
        return metric.isMinimum ? value >= limit : value <= limit
    }

    /// "by how much" for a failure: the ratio for maxima, the shortfall for minima.
    public var excess: String {
        guard let value else { return "" }
        if metric.isMinimum { return String(format: "%.4g below the limit", limit - value) }
        return limit > 0 ? String(format: "%.3g× the limit", value / limit) : "above a zero limit"
    }
}
