import Crypto
import Foundation

/// How one quantizable weight is computed from calibration data.
public enum QuantMethod: String, Sendable, CaseIterable, Codable {
    /// Round to nearest, with a clipping search per group weighted by the channels' mean square activation.
    case rtn
    /// Activation-aware per-input-channel scales folded into the preceding operation, then RTN with clipping.
    case awq
    /// Hessian-based rounding with error compensation (optionally in activation order).
    case gptq
    /// AWQ scaling first, then GPTQ rounding of the scaled weights.
    case awqGPTQ = "awq+gptq"

    public var usesAWQ: Bool { self == .awq || self == .awqGPTQ }
    public var usesGPTQ: Bool { self == .gptq || self == .awqGPTQ }
}

/// A quantization recipe (recipes/*.json, formats/quantization.md): ordered rules from canonical-name patterns to
/// a quantized format or a kept float type, plus method settings. The first rule whose pattern matches decides;
/// a rule that sets `bits` applies only to quantizable weights (linear layers, expert stacks, the embedding),
/// so other tensors fall through to later rules.
public struct Recipe: Sendable {
    public enum Keep: String, Sendable { case f32, f16, bf16, source }

    public struct Promote: Sendable, Equatable {
        /// Fraction of the rule's tensors (by count, rounded up) that get `spec` instead.
        public var fraction: Double
        public var spec: QuantSpec
    }

    public struct Rule: Sendable {
        public var match: String
        public var keep: Keep?
        public var spec: QuantSpec?
        public var method: QuantMethod?
        public var promote: Promote?
        public var why: String?
    }

    public var name: String
    public var description: String
    public var method: QuantMethod
    public var rules: [Rule]
    public var clipSearch: Bool
    public var gptqDamp: Float
    public var gptqBlockSize: Int
    public var gptqActOrder: Bool
    public var awqGrid: Int
    /// Experts routed fewer calibration tokens than this are quantized by RTN without activation data.
    public var minExpertTokens: Int
    /// Thresholds `mm1pack verify` applies to bundles made with this recipe (kept as given).
    public var verify: [String: Double]
    /// The recipe file's bytes, recorded in the bundle's provenance.
    public var source: [UInt8]

    public var digest: String { hex(SHA256.hash(data: source)) }

    /// Parses a recipe; every error names the file and the offending member.
    public init(json bytes: [UInt8], file: String) throws {
        func err(_ m: String) -> MM1Error { MM1Error(file: file, m) }
        guard let root = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw err("is not a JSON object")
        }
        let known: Set<String> = ["name", "description", "method", "rules", "clip_search", "gptq", "awq",
                                  "min_expert_tokens", "verify", "why"]
        if let bad = root.keys.sorted().first(where: { !known.contains($0) }) { throw err("unknown member '\(bad)'") }
        guard let n = root["name"] as? String, !n.isEmpty else { throw err("'name' must be a non-empty string") }
        name = n
        description = root["description"] as? String ?? ""
        let m = root["method"] as? String ?? "rtn"
        guard let method = QuantMethod(rawValue: m) else { throw err("method '\(m)' is not rtn, awq, gptq or awq+gptq") }
        self.method = method
        clipSearch = root["clip_search"] as? Bool ?? true
        let g = root["gptq"] as? [String: Any] ?? [:]
        gptqDamp = Float((g["damp"] as? Double) ?? 0.01)
        gptqBlockSize = (g["block_size"] as? Int) ?? 128
        gptqActOrder = (g["act_order"] as? Bool) ?? true
        guard gptqDamp > 0, gptqBlockSize >= 1 else { throw err("gptq.damp must be > 0 and gptq.block_size ≥ 1") }
        awqGrid = ((root["awq"] as? [String: Any])?["grid"] as? Int) ?? 20
        guard awqGrid >= 1 else { throw err("awq.grid must be ≥ 1") }
        minExpertTokens = (root["min_expert_tokens"] as? Int) ?? 16
        verify = (root["verify"] as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.doubleValue }
        guard let rs = root["rules"] as? [[String: Any]], !rs.isEmpty else { throw err("'rules' must be a non-empty list of objects") }
        rules = try rs.enumerated().map { i, r in try Recipe.rule(r, index: i, file: file) }
        source = bytes
    }

    public init(path: String) throws {
        guard let d = FileManager.default.contents(atPath: path) else { throw MM1Error(file: path, "cannot read the recipe") }
        try self.init(json: [UInt8](d), file: path)
    }

    static func spec(_ r: [String: Any], _ where_: String, file: String) throws -> QuantSpec {
        func err(_ m: String) -> MM1Error { MM1Error(file: file, "\(where_): \(m)") }
        guard let bits = r["bits"] as? Int, bits == 4 || bits == 8 else { throw err("'bits' must be 4 or 8") }
        let gs: Int
        if let s = r["group_size"] as? String, s == "channel" {
            gs = 0
        } else if let v = r["group_size"] as? Int, v >= 2, v % 2 == 0 {
            gs = v
        } else {
            throw err("'group_size' must be an even integer ≥ 2 or \"channel\"")
        }
        let sch = r["scheme"] as? String ?? "sym"
        guard let scheme = QuantScheme(rawValue: sch) else { throw err("'scheme' must be sym or asym") }
        if bits == 8 && scheme == .asym { throw err("int8 is symmetric only") }
        return QuantSpec(bits: bits, groupSize: gs, scheme: scheme)
    }

    static func rule(_ r: [String: Any], index i: Int, file: String) throws -> Rule {
        let w = "rules[\(i)]"
        func err(_ m: String) -> MM1Error { MM1Error(file: file, "\(w): \(m)") }
        let known: Set<String> = ["match", "keep", "bits", "group_size", "scheme", "method", "promote", "why"]
        if let bad = r.keys.sorted().first(where: { !known.contains($0) }) { throw err("unknown member '\(bad)'") }
        guard let match = r["match"] as? String, !match.isEmpty else { throw err("'match' must be a non-empty pattern") }
        var rule = Rule(match: match, keep: nil, spec: nil, method: nil, promote: nil, why: r["why"] as? String)
        if let k = r["keep"] {
            guard r["bits"] == nil else { throw err("has both 'keep' and 'bits'") }
            guard let ks = k as? String, let keep = Keep(rawValue: ks) else { throw err("'keep' must be f32, f16, bf16 or source") }
            rule.keep = keep
            return rule
        }
        rule.spec = try spec(r, w, file: file)
        if let m = r["method"] {
            guard let ms = m as? String, let meth = QuantMethod(rawValue: ms) else { throw err("'method' must be rtn, awq, gptq or awq+gptq") }
            rule.method = meth
        }
        if let p = r["promote"] {
            guard let pd = p as? [String: Any], let f = pd["fraction"] as? Double, f > 0, f <= 1 else {
                throw err("'promote' must be an object with 'fraction' in (0, 1] and bits/group_size/scheme")
            }
            rule.promote = Promote(fraction: f, spec: try spec(pd, w + ".promote", file: file))
        }
        return rule
    }

    /// `*` matches any run of characters (dots included); everything else matches itself.
    public static func glob(_ pattern: String, _ name: String) -> Bool {
        let p = Array(pattern.utf8), s = Array(name.utf8)
        var pi = 0, si = 0, star = -1, mark = 0
        while si < s.count {
            if pi < p.count && p[pi] == UInt8(ascii: "*") { star = pi; mark = si; pi += 1 }
            else if pi < p.count && p[pi] == s[si] { pi += 1; si += 1 }
            else if star >= 0 { pi = star + 1; mark += 1; si = mark }
            else { return false }
        }
        while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }

    /// The first rule deciding `name`: quantizing rules only for quantizable weights.
    public func rule(for name: String, quantizable: Bool) -> (index: Int, rule: Rule)? {
        for (i, r) in rules.enumerated() where Recipe.glob(r.match, name) {
            if r.spec != nil && !quantizable { continue }
            return (i, r)
        }
        return nil
    }

    /// The built-in recipe for `--bits` (recipes/mm1-int4.json, recipes/mm1-int8.json), found next to the
    /// executable's package or compiled in.
    public static func builtIn(bits: Int) throws -> Recipe {
        let name = bits == 8 ? "mm1-int8" : "mm1-int4"
        guard bits == 4 || bits == 8 else { throw MM1Error("--bits must be 4 or 8, not \(bits)") }
        return try Recipe(json: Array(BuiltInRecipes.text[name]!.utf8), file: "recipes/\(name).json (built in)")
    }
}
