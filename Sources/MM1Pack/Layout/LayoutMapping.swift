import Crypto
import Foundation

/// A source layout as a data file (`formats/layouts/<name>.json`): the table that maps every source tensor name to
/// its canonical name and the transforms between them. `formats/layouts/README.md` documents the syntax.
public struct LayoutMapping: Sendable {
    public struct Op: Sendable {
        public enum Kind: Sendable {
            case unstack(axis: Int, as: String)
            case split(axis: Int, sizes: [ConfigValue]?, names: [String], as: String)
            case transpose([Int])
            case reshape([ConfigValue])
            case squeeze(axis: Int)
            case slice(axis: Int, from: ConfigValue, count: ConfigValue?)
            case rope(axis: Int, headDim: ConfigValue)
        }
        public var kind: Kind
        /// Apply only when the named capture has one of these values (e.g. RoPE on q and k, not v).
        public var when: [String: [String]]
    }

    public struct Rule: Sendable {
        public var from: Pattern
        public var to: String?
        public var ops: [Op]
        /// Capture variable whose values are stacked on a new leading axis (MoE experts).
        public var stack: String?
        /// Why a matched tensor is deliberately not converted (buffers such as position ids).
        public var ignore: String?
        public var index: Int
    }

    public var name: String
    public var file: String
    public var rules: [Rule]
    /// SHA-256 over the mapping file's bytes followed by each included fragment's, so a bundle's provenance pins
    /// the exact table that produced it.
    public var digest: String

    public static func load(path: String) throws -> LayoutMapping {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MM1Error(file: path, "cannot read layout mapping file")
        }
        let obj: Any
        do { obj = try JSONSerialization.jsonObject(with: data) } catch {
            throw MM1Error(file: path, "layout mapping is not valid JSON: \(error.localizedDescription)")
        }
        guard let top = obj as? [String: Any], let name = top["layout"] as? String,
              let rawRules = top["rules"] as? [[String: Any]]
        else { throw MM1Error(file: path, "layout mapping needs \"layout\" (string) and \"rules\" (array of objects)") }
        // A mistyped member must not be silently ignored: it would change which tensors a rule touches.
        try checkMembers(top, allowed: ["layout", "title", "include", "alternatives", "rules"], what: "the layout", file: path)
        if top["include"] != nil && !(top["include"] is [String]) {
            throw MM1Error(file: path, "\"include\" must be a list of file names")
        }
        // Fragments shared by several layouts (CLIP vision tower, decoder) come first, with this file's alternatives.
        var rawAll: [[String: Any]] = []
        var hasher = SHA256()
        hasher.update(data: data)
        for inc in (top["include"] as? [String]) ?? [] {
            let incPath = inc.hasPrefix("/") ? inc : ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent(inc)
            guard let d = FileManager.default.contents(atPath: incPath),
                  let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any],
                  let incRules = o["rules"] as? [[String: Any]]
            else { throw MM1Error(file: incPath, "included layout fragment is missing or has no \"rules\" array") }
            hasher.update(data: d)
            do {
                for r in incRules { try checkMembers(r, allowed: ruleMembers, what: "a rule", file: incPath) }
            }
            rawAll += incRules
        }
        for r in rawRules { try checkMembers(r, allowed: ruleMembers, what: "a rule", file: path) }
        rawAll += rawRules
        var alternatives: [String: [(match: String, value: String)]] = [:]
        for (k, v) in (top["alternatives"] as? [String: Any]) ?? [:] {
            if let list = v as? [String] {
                alternatives[k] = list.map { ($0, $0) }
            } else if let dict = v as? [String: String] {
                // Longest first, so that a prefix of another alternative does not shadow it.
                alternatives[k] = dict.sorted { ($0.key.count, $0.key) > ($1.key.count, $1.key) }.map { ($0.key, $0.value) }
            } else {
                throw MM1Error(file: path, "alternatives.\(k) must be a list of strings or an object of strings")
            }
        }
        var rules: [Rule] = []
        for (i, r) in rawAll.enumerated() {
            do {
                rules.append(try parseRule(r, index: i, alternatives: alternatives))
            } catch let e as MM1Error {
                throw MM1Error(file: path, "rule \(i + 1): \(e.message)")
            }
        }
        return LayoutMapping(name: name, file: path, rules: rules, digest: hex(hasher.finalize()))
    }

    static let ruleMembers: Set<String> = ["from", "to", "ops", "stack", "ignore", "note"]

    static func checkMembers(_ d: [String: Any], allowed: Set<String>, what: String, file: String) throws {
        let unknown = d.keys.filter { !allowed.contains($0) }.sorted()
        guard unknown.isEmpty else {
            throw MM1Error(file: file, "\(what) has unknown member(s) \(unknown.map { "\"\($0)\"" }.joined(separator: ", ")) (allowed: \(allowed.sorted().joined(separator: ", ")))\(d["from"].map { " in the rule for '\($0)'" } ?? "")")
        }
    }

    private static func parseRule(_ r: [String: Any], index: Int,
                                  alternatives: [String: [(match: String, value: String)]]) throws -> Rule {
        guard let from = r["from"] as? String else { throw MM1Error("missing \"from\"") }
        let pattern = try Pattern(from, alternatives: alternatives)
        let to = r["to"] as? String
        let ignore = r["ignore"] as? String
        guard (to == nil) != (ignore == nil) else { throw MM1Error("needs exactly one of \"to\" and \"ignore\"") }
        if r["ops"] != nil && !(r["ops"] is [[String: Any]]) { throw MM1Error("\"ops\" must be a list of objects") }
        if r["stack"] != nil && !(r["stack"] is String) { throw MM1Error("\"stack\" must be a variable name") }
        var ops: [Op] = []
        for raw in (r["ops"] as? [[String: Any]]) ?? [] {
            ops.append(try parseOp(raw))
        }
        return Rule(from: pattern, to: to, ops: ops, stack: r["stack"] as? String, ignore: ignore, index: index)
    }

    private static func parseOp(_ raw: [String: Any]) throws -> Op {
        guard let op = raw["op"] as? String else { throw MM1Error("an op needs \"op\"") }
        func int(_ k: String) throws -> Int {
            guard let v = raw[k] as? Int else { throw MM1Error("op \(op) needs integer \"\(k)\"") }
            return v
        }
        if raw["when"] != nil && !(raw["when"] is [String: [String]]) {
            throw MM1Error("op \(op): \"when\" must be an object of lists, e.g. {\"p\": [\"q\", \"k\"]}")
        }
        let when = (raw["when"] as? [String: [String]]) ?? [:]
        let allowedOpMembers: [String: Set<String>] = [
            "unstack": ["axis", "as"], "split": ["axis", "sizes", "names", "as"], "transpose": ["perm"],
            "reshape": ["shape"], "squeeze": ["axis"], "slice": ["axis", "from", "count"],
            "rope_interleaved_to_half": ["axis", "head_dim"],
        ]
        if let allowed = allowedOpMembers[op] {
            let unknown = raw.keys.filter { !allowed.contains($0) && $0 != "op" && $0 != "when" }.sorted()
            guard unknown.isEmpty else { throw MM1Error("op \(op) has unknown member(s) \(unknown.joined(separator: ", "))") }
        }
        let kind: Op.Kind
        switch op {
        case "unstack":
            guard let name = raw["as"] as? String else { throw MM1Error("unstack needs \"as\"") }
            kind = .unstack(axis: try int("axis"), as: name)
        case "split":
            guard let names = raw["names"] as? [String], let v = raw["as"] as? String, !names.isEmpty else {
                throw MM1Error("split needs \"names\" and \"as\"")
            }
            let sizes = try (raw["sizes"] as? [Any]).map { try $0.map(ConfigValue.init(json:)) }
            if let sizes, sizes.count != names.count { throw MM1Error("split: \"sizes\" and \"names\" differ in length") }
            kind = .split(axis: try int("axis"), sizes: sizes, names: names, as: v)
        case "transpose":
            guard let perm = raw["perm"] as? [Int] else { throw MM1Error("transpose needs \"perm\"") }
            kind = .transpose(perm)
        case "reshape":
            guard let shape = raw["shape"] as? [Any] else { throw MM1Error("reshape needs \"shape\"") }
            kind = .reshape(try shape.map(ConfigValue.init(json:)))
        case "squeeze":
            kind = .squeeze(axis: try int("axis"))
        case "slice":
            guard let from = raw["from"] else { throw MM1Error("slice needs \"from\"") }
            kind = .slice(axis: try int("axis"), from: try ConfigValue(json: from),
                          count: try raw["count"].map(ConfigValue.init(json:)))
        case "rope_interleaved_to_half":
            guard let hd = raw["head_dim"] else { throw MM1Error("rope_interleaved_to_half needs \"head_dim\"") }
            kind = .rope(axis: try int("axis"), headDim: try ConfigValue(json: hd))
        default:
            throw MM1Error("unknown op \"\(op)\"")
        }
        return Op(kind: kind, when: when)
    }

    /// Where the built-in layout files live: `$MM1PACK_FORMATS/layouts`, else `formats/layouts` of the source tree
    /// this binary was built from.
    public static var builtinDirectory: String {
        if let env = ProcessInfo.processInfo.environment["MM1PACK_FORMATS"], !env.isEmpty {
            return (env as NSString).appendingPathComponent("layouts")
        }
        return repositoryRoot + "/formats/layouts"
    }

    /// The checkout this file was compiled from (for built-in data files).
    public static var repositoryRoot: String {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { url.deleteLastPathComponent() }
        return url.path
    }

    public static func builtin(_ name: String) throws -> LayoutMapping {
        let path = builtinDirectory + "/\(name).json"
        guard FileManager.default.fileExists(atPath: path) else {
            throw MM1Error(file: path, "no built-in layout named '\(name)' (known: \(LayoutMapping.builtinNames.joined(separator: ", ")))")
        }
        return try load(path: path)
    }

    /// The layouts the converter knows how to open (each also needs a config reader in SourceConfig).
    public static let builtinNames = ["axlearn", "gguf", "honeybee", "llava", "openclip"]
}

/// A number in a mapping file: a literal, or a dotted path into the canonical config (`"llm.num_heads"`), or a
/// product of those (`"llm.num_heads*llm.head_dim"`).
public enum ConfigValue: Sendable, Equatable {
    case literal(Int)
    case product([String])

    init(json: Any) throws {
        if let i = json as? Int { self = .literal(i); return }
        if let s = json as? String, !s.isEmpty {
            self = .product(s.split(separator: "*").map { String($0).trimmingCharacters(in: .whitespaces) })
            return
        }
        throw MM1Error("expected an integer or a config path, got \(json)")
    }

    public func resolve(_ config: [String: Any]) throws -> Int {
        switch self {
        case .literal(let i): return i
        case .product(let terms):
            var v = 1
            for t in terms {
                if let i = Int(t) { v *= i; continue }
                guard let x = ConfigLookup.int(config, t) else {
                    throw MM1Error("the canonical config has no integer '\(t)'")
                }
                v *= x
            }
            return v
        }
    }
}

public enum ConfigLookup {
    public static func value(_ config: [String: Any], _ path: String) -> Any? {
        var cur: Any? = config
        for part in path.split(separator: ".") {
            guard let dict = cur as? [String: Any] else { return nil }
            cur = dict[String(part)]
        }
        if cur is NSNull { return nil }
        return cur
    }

    public static func int(_ config: [String: Any], _ path: String) -> Int? {
        let v = value(config, path)
        if let i = v as? Int { return i }
        if let d = v as? Double, d == d.rounded() { return Int(d) }
        return nil
    }
}
