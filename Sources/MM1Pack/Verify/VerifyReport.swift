import Foundation

/// The outcome of `mm1pack verify`: integrity, token metrics overall and per probe, the relative error of every
/// stage of the model, MoE routing agreement, and the limits checked. Rendered as a table for people, JSON for
/// machines and HTML with a per-stage error chart (formats/verify.md §6).
public struct VerifyReport {
    public var bundle: String
    public var tensorsChecked: Int
    public var sectionsChecked: Int
    /// "embedded" (the bundle's own reference) or "live".
    public var referenceKind = ""
    public var referenceDescription = ""
    public var probeSource = ""
    public var logitsMode = ""
    public var rowsMode = ""
    public var overall: TokenGroups?
    public var probes: [(id: String, tokens: TokenGroups, stages: [StageError])] = []
    /// Every stage in model order, summed over probes.
    public var stages: [StageError] = []
    public var experts: [(layer: Int, same: Int, total: Int)] = []
    public var thresholds: [Threshold] = []

    public init(bundle: String, tensorsChecked: Int, sectionsChecked: Int) {
        self.bundle = bundle
        self.tensorsChecked = tensorsChecked
        self.sectionsChecked = sectionsChecked
    }

    public var integrityOnly: Bool { referenceKind.isEmpty }
    public var passed: Bool { thresholds.allSatisfy(\.passed) }

    /// Model order: ViT blocks, ViT output, connector, LLM layers.
    static func order(_ s: String) -> (Int, Int) {
        let parts = s.split(separator: ".")
        if s.hasPrefix("vit.blocks."), let i = Int(parts[2]) { return (0, i) }
        if s == "vit.features" { return (1, 0) }
        if s == "connector" { return (2, 0) }
        if s.hasPrefix("llm.layers."), let i = Int(parts[2]) { return (3, i) }
        return (4, 0)
    }

    mutating func add(_ comparisons: [ProbeComparison]) {
        overall = TokenGroups(comparisons.flatMap(\.tokens))
        var sum: [String: StageError] = [:]
        var ex: [Int: (Int, Int)] = [:]
        for c in comparisons {
            probes.append((c.id, TokenGroups(c.tokens), c.stages))
            for s in c.stages {
                sum[s.stage, default: StageError(stage: s.stage)].sumSqDelta += s.sumSqDelta
                sum[s.stage]!.sumSqRef += s.sumSqRef
            }
            for (l, v) in c.experts { ex[l] = ((ex[l]?.0 ?? 0) + v.same, (ex[l]?.1 ?? 0) + v.total) }
        }
        stages = sum.values.sorted { VerifyReport.order($0.stage) < VerifyReport.order($1.stage) }
        experts = ex.keys.sorted().map { ($0, ex[$0]!.0, ex[$0]!.1) }
    }

    func value(_ m: Threshold.Metric) -> Double? {
        let all = (overall?.all.count ?? 0) > 0 ? overall?.all : nil
        switch m {
        case .maxMeanKLD: return all?.meanKLD
        case .maxP99KLD: return all?.p99KLD
        case .maxKLD: return all?.maxKLD
        case .minTop1: return all?.top1
        case .minTop5: return all?.top5
        case .maxLogitNMSE: return all?.logitNMSE
        case .maxFeatureNMSE: return stages.first { $0.stage == "vit.features" }?.nmse
        case .minExpertAgreement: return experts.map { Double($0.same) / Double(max(1, $0.total)) }.min()
        }
    }

    mutating func evaluateThresholds() {
        for i in thresholds.indices { thresholds[i].value = value(thresholds[i].metric) }
    }

    /// The stage where the relative error grows the most over the stage before it, measured against the larger of
    /// the previous stage's error and the median stage error (so that the first stage of a uniformly quantized
    /// model is not blamed for being first). This is where a damaged tensor shows.
    public var largestGrowth: (stage: String, before: Double, after: Double, factor: Double)? {
        guard stages.count >= 2 else { return stages.first.map { ($0.stage, 0, $0.relative, .infinity) } }
        let errs = stages.map(\.relative)
        let median = errs.sorted()[errs.count / 2]
        var best: (String, Double, Double, Double)?
        for (i, s) in stages.enumerated() {
            let before = i > 0 ? errs[i - 1] : 0
            let f = errs[i] / max(before, median, 1e-12)
            if best == nil || f > best!.3 { best = (s.stage, before, errs[i], f) }
        }
        return best
    }

    // MARK: text

    static func g(_ v: Double) -> String {
        if v == 0 { return "0" }
        if v.isInfinite { return "inf" }
        return abs(v) >= 1e-3 && abs(v) < 1e4 ? String(format: "%.4g", v) : String(format: "%.2e", v)
    }

    static func pct(_ v: Double) -> String { String(format: "%.2f%%", 100 * v) }

    public func text() -> String {
        var out = "bundle: \(bundle)\n"
        out += "integrity: \(tensorsChecked) tensor and \(sectionsChecked) section digests OK\n"
        if integrityOnly { return out }
        out += "reference: \(referenceKind), \(referenceDescription)\n"
        out += "probes: \(probes.count) from \(probeSource); logits compared: \(logitsMode); \(rowsMode)\n\n"
        if let o = overall, o.all.count > 0 {
            let first = max(10, (probes.map(\.id.count).max() ?? 0) + 3)
            let widths = [6, 11, 12, 10, 10, 9, 9, 13, 14, 12]
            let heads = ["count", "mean KLD", "median KLD", "p99 KLD", "max KLD", "top-1", "top-5", "rms Δp(top)", "max |Δlogit|", "logit NMSE"]
            out += "positions".padding(toLength: first, withPad: " ", startingAt: 0)
                + zip(heads, widths).map { $0.leftPad($1) }.joined() + "\n"
            func row(_ name: String, _ s: TokenSummary) -> String {
                guard s.count > 0 else { return "" }
                return name.padding(toLength: first, withPad: " ", startingAt: 0)
                    + [String(s.count), VerifyReport.g(s.meanKLD), VerifyReport.g(s.medianKLD), VerifyReport.g(s.p99KLD),
                       VerifyReport.g(s.maxKLD), VerifyReport.pct(s.top1), VerifyReport.pct(s.top5),
                       VerifyReport.g(s.rmsDeltaTopP), VerifyReport.g(s.maxAbsDeltaLogit), VerifyReport.g(s.logitNMSE)]
                    .enumerated().map { i, v in v.leftPad(widths[i]) }.joined() + "\n"
            }
            out += row("all", o.all) + row("text", o.text) + row("image", o.image)
            for p in probes { out += row("  " + p.id, p.tokens.all) }
            out += "\n"
        }
        if !stages.isEmpty {
            out += "relative error by stage (‖Δ‖ / ‖reference‖ over the compared rows):\n"
            for s in stages { out += "  \(s.stage.padding(toLength: 16, withPad: " ", startingAt: 0)) \(VerifyReport.g(s.relative))\n" }
            if let lg = largestGrowth, lg.after > 0 {
                out += "  largest growth: \(lg.stage) (\(VerifyReport.g(lg.before)) → \(VerifyReport.g(lg.after)))\n"
            }
            out += "\n"
        }
        if !experts.isEmpty {
            out += "MoE routing: tokens whose top-k expert set is unchanged\n"
            for e in experts { out += "  llm.layers.\(e.layer)  \(e.same)/\(e.total) (\(VerifyReport.pct(Double(e.same) / Double(max(1, e.total)))))\n" }
            out += "\n"
        }
        for t in thresholds {
            let v = t.value.map(VerifyReport.g) ?? "n/a"
            let cmp = t.metric.isMinimum ? "≥" : "≤"
            let status = t.value == nil ? "n/a " : (t.passed ? "pass" : "FAIL")
            out += "\(status)  \(t.metric.label): \(v) (limit \(cmp) \(VerifyReport.g(t.limit)), \(t.origin))"
            out += t.passed ? "\n" : " — \(t.excess)\n"
        }
        if !passed, let lg = largestGrowth, lg.after > 0 {
            out += "the error grows most at \(lg.stage): \(VerifyReport.g(lg.before)) → \(VerifyReport.g(lg.after)); look at that stage's tensors first\n"
        }
        out += passed ? "verify: PASS\n" : "verify: FAIL (\(thresholds.filter { !$0.passed }.map(\.metric.rawValue).joined(separator: ", ")))\n"
        return out
    }

    // MARK: JSON

    public func json() -> [String: Any] {
        var d: [String: Any] = [
            "bundle": bundle,
            "integrity": ["tensors_checked": tensorsChecked, "sections_checked": sectionsChecked, "ok": true],
        ]
        if integrityOnly { d["passed"] = true; return d }
        d["reference"] = ["kind": referenceKind, "description": referenceDescription]
        d["probes_source"] = probeSource
        d["logits_compared"] = logitsMode
        d["rows_compared"] = rowsMode
        if let o = overall { d["tokens"] = o.json() }
        d["probes"] = probes.map { p -> [String: Any] in
            ["id": p.id, "tokens": p.tokens.json(),
             "stages": p.stages.map { ["stage": $0.stage, "relative_error": finite($0.relative)] }]
        }
        d["stages"] = stages.map { ["stage": $0.stage, "relative_error": finite($0.relative), "nmse": finite($0.nmse)] }
        d["moe_expert_agreement"] = experts.map { ["layer": $0.layer, "same": $0.same, "tokens": $0.total] }
        if let lg = largestGrowth {
            d["largest_growth"] = ["stage": lg.stage, "before": finite(lg.before), "after": finite(lg.after)]
        }
        d["thresholds"] = thresholds.map { t -> [String: Any] in
            var x: [String: Any] = ["metric": t.metric.rawValue, "limit": t.limit, "origin": t.origin, "passed": t.passed]
            x["value"] = t.value.map(finite) ?? NSNull()
            return x
        }
        d["passed"] = passed
        return d
    }

    /// JSON has no infinity: such values are written as a large finite number (NaN is left to `sanitized`).
    func finite(_ v: Double) -> Double { v.isInfinite ? (v > 0 ? 1e308 : -1e308) : v }

    /// The JSON form with every NaN (a model that computes NaN) written as null, which JSON can carry.
    public func jsonSanitized() -> [String: Any] {
        func clean(_ x: Any) -> Any {
            if let d = x as? Double { return d.isNaN ? NSNull() : finite(d) }
            if let a = x as? [Any] { return a.map(clean) }
            if let o = x as? [String: Any] { return o.mapValues(clean) }
            return x
        }
        return clean(json()) as! [String: Any]
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? " " + self : String(repeating: " ", count: n - count) + self }
}
