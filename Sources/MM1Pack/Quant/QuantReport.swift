import Foundation

/// What `mm1pack quantize` did: per-weight formats and errors, bits per weight per component, the calibration
/// used. Printed as a table and stored in the bundle (`quant_report.json` section, summary in the metadata).
public struct QuantReport: Sendable {
    public struct Layer: Sendable {
        public var name: String
        public var spec: String
        public var method: String
        public var params: Int
        public var bitsPerWeight: Double
        /// ‖x(W − Ŵ)ᵀ‖² / ‖xWᵀ‖² on the weight's calibration inputs (up to 256 rows): plain round-to-nearest at
        /// the same format, and the method used. Nil for weights without inputs (lookups, the connector).
        public var errorRTN: Double?
        public var errorAfter: Double?
        public var awqAlpha: Float?
        /// The sensitivity that decided a recipe's promotions (plain RTN error on fp inputs), when measured.
        public var sensitivity: Double?
        public var note: String?
    }

    public struct Calibration: Sendable {
        public var source: String
        public var samples: Int
        public var digest: String
        public var builtIn: Bool
        public var tokens = 0
        public var images = 0
    }

    public struct Component: Sendable {
        public var name: String
        public var params: Int
        public var bits: Double
        public var bitsPerWeight: Double { params > 0 ? bits / Double(params) : 0 }
    }

    public var recipe = ""
    public var recipeDigest = ""
    public var calibration: Calibration?
    public var sequential = true
    public var layers: [Layer] = []
    public var components: [Component] = []
    public var expertFallbacks: [String] = []
    public var seconds = 0.0
    /// Where the time went (collecting inputs, AWQ search, rounding, error report, running quantized blocks).
    public var phaseSeconds: [String: Double] = [:]
    /// The largest resident set seen between phases, and where.
    public var peakResident: (bytes: Int, at: String) = (0, "")

    /// Stored bits per weight of a format: the codes plus the f16 scale (and zero) shared by each group.
    public static func bits(_ s: QuantSpec) -> Double {
        Double(s.bits) + (s.scheme == .asym ? 32 : 16) / Double(s.groupSize)
    }

    public var overall: Component {
        Component(name: "overall", params: components.reduce(0) { $0 + $1.params }, bits: components.reduce(0) { $0 + $1.bits })
    }

    mutating func finish(plan: [(String, [Int], Quantizer.Action)], keptDType: (String) -> DType) {
        var comps: [String: Component] = [:]
        var order: [String] = []
        for (name, shape, action) in plan {
            let c = String(name.prefix { $0 != "." })
            if comps[c] == nil { comps[c] = Component(name: c, params: 0, bits: 0); order.append(c) }
            let n = shape.reduce(1, *)
            comps[c]!.params += n
            switch action {
            case .quantize(let s, _): comps[c]!.bits += Double(n) * QuantReport.bits(s)
            case .keep: comps[c]!.bits += Double(n * keptDType(name).byteSize * 8)
            }
        }
        components = order.map { comps[$0]! }
    }

    public func summaryJSON() -> [String: Any] {
        var d: [String: Any] = ["recipe": recipe, "recipe_sha256": recipeDigest, "sequential": sequential]
        var bpw: [String: Any] = [:]
        for c in components { bpw[c.name] = (c.bitsPerWeight * 1000).rounded() / 1000 }
        bpw["overall"] = (overall.bitsPerWeight * 1000).rounded() / 1000
        d["bits_per_weight"] = bpw
        if let c = calibration {
            d["calibration"] = ["source": c.source, "samples": c.samples, "sha256": c.digest, "built_in": c.builtIn,
                                "tokens": c.tokens, "images": c.images]
        }
        if !expertFallbacks.isEmpty { d["expert_fallbacks"] = expertFallbacks }
        return d
    }

    /// The full report as JSON (errors rounded to 6 significant digits so that the file is stable to read).
    public func json() -> [String: Any] {
        func r(_ x: Double?) -> Any { x.map { Double(String(format: "%.6g", $0))! } ?? NSNull() }
        var d = summaryJSON()
        d["layers"] = layers.map { l -> [String: Any] in
            var o: [String: Any] = ["name": l.name, "format": l.spec, "method": l.method, "params": l.params,
                                    "bits_per_weight": r(l.bitsPerWeight), "error_rtn": r(l.errorRTN), "error": r(l.errorAfter)]
            if let a = l.awqAlpha { o["awq_alpha"] = r(Double(a)) }
            if let x = l.sensitivity { o["sensitivity"] = r(x) }
            if let n = l.note { o["note"] = n }
            return o
        }
        return d
    }

    /// The report for people: one line per quantized weight, then the components.
    public func table(maxLayers: Int = 400) -> String {
        var out = "recipe \(recipe)"
        if let c = calibration {
            out += c.builtIn ? ", built-in calibration set (pass --calib for your own data)" : ", calibration \(c.source)"
            out += ": \(c.samples) samples, \(c.tokens) tokens, \(c.images) images\n"
        } else { out += "\n" }
        out += "weight".padding(toLength: 34, withPad: " ", startingAt: 0) + " format            method     rel.err RTN  rel.err  note\n"
        func f(_ x: Double?) -> String { x.map { String(format: "%11.3e", $0) } ?? "          -" }
        for l in layers.prefix(maxLayers) {
            out += l.name.padding(toLength: 34, withPad: " ", startingAt: 0) + " "
            out += l.spec.padding(toLength: 17, withPad: " ", startingAt: 0) + " "
            out += l.method.padding(toLength: 9, withPad: " ", startingAt: 0) + " " + f(l.errorRTN) + " " + f(l.errorAfter)
            if let n = l.note { out += "  " + n }
            out += "\n"
        }
        if layers.count > maxLayers { out += "… \(layers.count - maxLayers) more in the bundle's quant_report.json\n" }
        for c in components + [overall] {
            out += String(format: "%-8@ %14d params  %6.3f bits/weight\n", c.name, c.params, c.bitsPerWeight)
        }
        if !expertFallbacks.isEmpty { out += "experts with too few calibration tokens (RTN): " + expertFallbacks.joined(separator: "; ") + "\n" }
        out += String(format: "%.1f s", seconds)
        if !phaseSeconds.isEmpty {
            out += " (" + phaseSeconds.sorted { $0.value > $1.value }.map { String(format: "%@ %.1f s", $0.key, $0.value) }.joined(separator: ", ") + ")"
        }
        out += "\n"
        return out
    }
}
