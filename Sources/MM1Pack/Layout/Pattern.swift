import Foundation

/// A source-name pattern such as `{LM}layers.{i}.self_attn.q_proj.weight`.
///
/// `{x}` captures a decimal index; `{X}` where X is declared under "alternatives" in the mapping file matches one of
/// the listed strings (e.g. the different prefixes two transformers generations use) and binds X to that string, or
/// to the value the file gives it when the alternatives are an object (`{"net.0.": "s1"}`); `{...}` at the end
/// matches any remainder (for `ignore` rules); `[...]` is an optional group whose index captures are 0 when it is
/// absent (AXLearn's `repeat/layer/[layer{k}/]`: sub-layers only exist when a repeat step holds several layers).
/// Everything else is literal.
public struct Pattern: Sendable, CustomStringConvertible {
    enum Segment: Sendable {
        case literal(String)
        case index(String)
        case oneOf(String, [(match: String, value: String)])
        case rest
        case optional([Segment])
    }

    let segments: [Segment]
    public let description: String

    public init(_ text: String, alternatives: [String: [(match: String, value: String)]]) throws {
        description = text
        var rest = Substring(text)
        segments = try Pattern.parse(&rest, alternatives: alternatives, text: text, inGroup: false)
    }

    private static func parse(_ rest: inout Substring, alternatives: [String: [(match: String, value: String)]],
                              text: String, inGroup: Bool) throws -> [Segment] {
        var segs: [Segment] = []
        var literal = ""
        func flush() {
            if !literal.isEmpty { segs.append(.literal(literal)); literal = "" }
        }
        while let c = rest.first {
            switch c {
            case "[":
                guard !inGroup else { throw MM1Error("pattern '\(text)': optional groups do not nest") }
                flush()
                rest = rest.dropFirst()
                let group = try parse(&rest, alternatives: alternatives, text: text, inGroup: true)
                guard rest.first == "]" else { throw MM1Error("pattern '\(text)': unclosed '['") }
                rest = rest.dropFirst()
                segs.append(.optional(group))
            case "]":
                guard inGroup else { throw MM1Error("pattern '\(text)': unmatched ']'") }
                flush()
                return segs
            case "{":
                flush()
                guard let close = rest.firstIndex(of: "}") else { throw MM1Error("pattern '\(text)': unclosed '{'") }
                let name = String(rest[rest.index(after: rest.startIndex)..<close])
                rest = rest[rest.index(after: close)...]
                if name == "..." {
                    guard rest.isEmpty, !inGroup else { throw MM1Error("pattern '\(text)': '{...}' must come last") }
                    segs.append(.rest)
                    continue
                }
                guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0 == "_" }) else {
                    throw MM1Error("pattern '\(text)': bad variable '{\(name)}'")
                }
                if let alts = alternatives[name] {
                    segs.append(.oneOf(name, alts))
                } else {
                    segs.append(.index(name))
                }
            default:
                literal.append(c)
                rest = rest.dropFirst()
            }
        }
        guard !inGroup else { throw MM1Error("pattern '\(text)': unclosed '['") }
        flush()
        return segs
    }

    /// Captures of a full match, or nil. Index captures are canonical decimals (no sign, no leading zeros).
    public func match(_ name: String) -> [String: String]? {
        var captures: [String: String] = [:]
        return Pattern.match(segments[...], Substring(name), &captures) ? captures : nil
    }

    private static func match(_ segs: ArraySlice<Segment>, _ s: Substring, _ caps: inout [String: String]) -> Bool {
        guard let first = segs.first else { return s.isEmpty }
        let rest = segs.dropFirst()
        switch first {
        case .literal(let lit):
            guard s.hasPrefix(lit) else { return false }
            return match(rest, s.dropFirst(lit.count), &caps)
        case .index(let v):
            let digits = s.prefix(while: { $0.isASCII && $0.isNumber })
            guard !digits.isEmpty, digits == "0" || !digits.hasPrefix("0") else { return false }
            // Greedy is right: an index is always followed by a non-digit literal or the end.
            caps[v] = String(digits)
            if match(rest, s.dropFirst(digits.count), &caps) { return true }
            caps[v] = nil
            return false
        case .oneOf(let v, let alts):
            for a in alts where s.hasPrefix(a.match) {
                caps[v] = a.value
                if match(rest, s.dropFirst(a.match.count), &caps) { return true }
            }
            caps[v] = nil
            return false
        case .rest:
            return true
        case .optional(let group):
            let saved = caps
            if match(ArraySlice(group) + rest, s, &caps) { return true }
            caps = saved
            for v in Pattern.indexVariables(group) { caps[v] = "0" }
            if match(rest, s, &caps) { return true }
            caps = saved
            return false
        }
    }

    static func indexVariables(_ segs: [Segment]) -> [String] {
        segs.compactMap { if case .index(let v) = $0 { return v } else { return nil } }
    }
}

/// Renders a target template such as `llm.layers.{r*#k+k}.attn.{p}.weight`.
///
/// Inside braces: a variable (`i`, or a part name bound by `split`), or a sum of products of integers, variables
/// and `#v` (the number of distinct values variable `v` takes across the whole source, e.g. the number of
/// sub-layers in one repeat step of an AXLearn stack).
enum Template {
    static func render(_ template: String, vars: [String: String], counts: [String: Int]) throws -> String {
        var out = ""
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            out += rest[rest.startIndex..<open]
            guard let close = rest[open...].firstIndex(of: "}") else {
                throw MM1Error("target '\(template)': unclosed '{'")
            }
            let expr = String(rest[rest.index(after: open)..<close])
            if let v = vars[expr], Int(v) == nil {
                out += v
            } else {
                out += String(try evaluate(expr, vars: vars, counts: counts, template: template))
            }
            rest = rest[rest.index(after: close)...]
        }
        out += rest
        return out
    }

    static func evaluate(_ expr: String, vars: [String: String], counts: [String: Int], template: String) throws -> Int {
        var total = 0
        for term in expr.replacingOccurrences(of: "-", with: "+-").split(separator: "+") {
            var product = 1
            var sign = 1
            var body = Substring(term)
            if body.hasPrefix("-") { sign = -1; body = body.dropFirst() }
            product = sign
            for f in body.split(separator: "*") {
                let factor = f.trimmingCharacters(in: .whitespaces)
                if let i = Int(factor) {
                    product *= i
                } else if factor.hasPrefix("#"), let c = counts[String(factor.dropFirst())] {
                    product *= c
                } else if let v = vars[factor], let i = Int(v) {
                    product *= i
                } else {
                    throw MM1Error("target '\(template)': cannot evaluate '\(factor)'")
                }
            }
            total += product
        }
        return total
    }
}
