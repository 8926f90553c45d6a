import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A small backtracking regular-expression engine for the split patterns found in `tokenizer.json` files
/// (GPT-2's ByteLevel pattern, Llama-3's and Qwen's `Split` patterns, and similar ones).
///
/// The `tokenizers` library compiles these patterns with Oniguruma (Ruby syntax), a backtracking engine with
/// leftmost-first alternation, so a backtracking matcher over Unicode scalars reproduces its splits exactly.
/// Supported syntax: literals and escapes (`\r \n \t \f \v \e \0 \xHH \x{H..} \uHHHH`, escaped punctuation),
/// `.`, `^`, `$`, `\A`, `\z`, `\Z`, classes `[...]` (ranges, negation, nested classes, escapes inside), the
/// shorthands `\s \S \d \D \w \W \h \H`, Unicode general categories `\p{L}`, `\p{Lu}`, `\P{N}`, `\p{^L}`, …,
/// groups `(...)`, `(?:...)`, named groups, flag groups `(?i:...)`, `(?-i:...)`, `(?i)`, lookaheads `(?=...)`,
/// `(?!...)`, alternation, and the quantifiers `* + ? {n} {n,} {n,m} {,m}` with lazy (`?`) and possessive (`+`)
/// forms. Anything else (lookbehind, backreferences, atomic groups, …) is refused when the pattern is compiled.
/// Matching runs under a step budget so that a hostile pattern fails with an error instead of hanging.
struct TokenizerRegex: Sendable {
    enum CharClass: Sendable, Equatable {
        case category(Set<Unicode.GeneralCategory>)
        case space, digit, word, hexSpace, any
    }

    struct CharSet: Sendable {
        var ranges: [(UInt32, UInt32)] = []
        var classes: [(CharClass, Bool)] = []  // (class, negated)
        var nested: [CharSet] = []
        var negated = false
        var caseInsensitive = false

        func contains(_ c: UInt32) -> Bool {
            if caseInsensitive {
                for v in TokenizerRegex.caseVariants(c) where containsExact(v) { return !negated }
                return negated
            }
            return containsExact(c) != negated
        }

        private func containsExact(_ c: UInt32) -> Bool {
            for (lo, hi) in ranges where c >= lo && c <= hi { return true }
            for (cls, neg) in classes where TokenizerRegex.classContains(cls, c) != neg { return true }
            for n in nested where n.contains(c) { return true }
            return false
        }
    }

    indirect enum Node: Sendable {
        case empty
        case scalar(UInt32, caseInsensitive: Bool)
        case set(CharSet)
        case dot
        case lineStart, lineEnd, textStart, textEnd, textEndNewline
        case seq([Node])
        case alt([Node])
        case rep(Node, min: Int, max: Int, greedy: Bool, possessive: Bool)
        case look(Node, negative: Bool)

        var isSingleScalar: Bool {
            switch self {
            case .scalar, .set, .dot: return true
            default: return false
            }
        }
    }

    let pattern: String
    let root: Node

    struct SyntaxError: Error { var message: String }
    struct BudgetExceeded: Error {}

    init(_ pattern: String) throws(SyntaxError) {
        self.pattern = pattern
        var p = Parser(chars: Array(pattern.unicodeScalars.map(\.value)))
        let node = try p.parseAlternation(caseInsensitive: false, depth: 0)
        if p.i < p.chars.count { throw SyntaxError(message: "unbalanced ')' at offset \(p.i)") }
        root = node
    }

    // MARK: Character properties

    static func classContains(_ cls: CharClass, _ c: UInt32) -> Bool {
        guard let s = Unicode.Scalar(c) else { return false }
        switch cls {
        case .any: return true
        case .space: return s.properties.isWhitespace
        case .hexSpace: return c == 0x20 || c == 0x09
        case .digit: return s.properties.generalCategory == .decimalNumber
        case .word:
            switch s.properties.generalCategory {
            case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter,
                 .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation:
                return true
            default: return false
            }
        case .category(let set): return set.contains(s.properties.generalCategory)
        }
    }

    /// The scalars a case-insensitive literal or class may match for `c`: itself, its simple lower and upper
    /// case forms, and the few scalars whose case folding lands on an ASCII letter (long s, Kelvin, Ångström).
    static func caseVariants(_ c: UInt32) -> [UInt32] {
        var out: [UInt32] = [c]
        func add(_ v: UInt32) { if !out.contains(v) { out.append(v) } }
        guard let s = Unicode.Scalar(c) else { return out }
        for m in [s.properties.lowercaseMapping, s.properties.uppercaseMapping] {
            let sc = m.unicodeScalars
            if sc.count == 1, let v = sc.first?.value { add(v) }
        }
        // Scalars that case-fold onto another letter although neither case mapping says so:
        // ſ (long s) ~ s/S, K (Kelvin) ~ k/K, Å (Ångström) ~ å/Å.
        let groups: [[UInt32]] = [[0x17F, 0x73, 0x53], [0x212A, 0x6B, 0x4B], [0x212B, 0xE5, 0xC5]]
        for g in groups where g.contains(where: out.contains) { g.forEach(add) }
        return out
    }

    static func categories(named name: String) -> Set<Unicode.GeneralCategory>? {
        typealias G = Unicode.GeneralCategory
        let letters: Set<G> = [.uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter]
        let marks: Set<G> = [.nonspacingMark, .spacingMark, .enclosingMark]
        let numbers: Set<G> = [.decimalNumber, .letterNumber, .otherNumber]
        let punct: Set<G> = [.connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
                             .initialPunctuation, .finalPunctuation, .otherPunctuation]
        let symbols: Set<G> = [.mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol]
        let seps: Set<G> = [.spaceSeparator, .lineSeparator, .paragraphSeparator]
        let other: Set<G> = [.control, .format, .surrogate, .privateUse, .unassigned]
        let table: [String: Set<G>] = [
            "L": letters, "Letter": letters, "Lu": [.uppercaseLetter], "Ll": [.lowercaseLetter],
            "Lt": [.titlecaseLetter], "Lm": [.modifierLetter], "Lo": [.otherLetter],
            "LC": [.uppercaseLetter, .lowercaseLetter, .titlecaseLetter],
            "M": marks, "Mark": marks, "Mn": [.nonspacingMark], "Mc": [.spacingMark], "Me": [.enclosingMark],
            "N": numbers, "Number": numbers, "Nd": [.decimalNumber], "Nl": [.letterNumber], "No": [.otherNumber],
            "P": punct, "Punctuation": punct, "Pc": [.connectorPunctuation], "Pd": [.dashPunctuation],
            "Ps": [.openPunctuation], "Pe": [.closePunctuation], "Pi": [.initialPunctuation],
            "Pf": [.finalPunctuation], "Po": [.otherPunctuation],
            "S": symbols, "Symbol": symbols, "Sm": [.mathSymbol], "Sc": [.currencySymbol],
            "Sk": [.modifierSymbol], "So": [.otherSymbol],
            "Z": seps, "Separator": seps, "Zs": [.spaceSeparator], "Zl": [.lineSeparator],
            "Zp": [.paragraphSeparator],
            "C": other, "Other": other, "Cc": [.control], "Cf": [.format], "Cs": [.surrogate],
            "Co": [.privateUse], "Cn": [.unassigned],
        ]
        return table[name]
    }

    // MARK: Parser

    private struct Parser {
        let chars: [UInt32]
        var i = 0

        func peek(_ k: Int = 0) -> UInt32? { i + k < chars.count ? chars[i + k] : nil }
        func isChar(_ c: Character, at k: Int = 0) -> Bool { peek(k) == c.unicodeScalars.first!.value }

        mutating func parseAlternation(caseInsensitive: Bool, depth: Int) throws(SyntaxError) -> Node {
            if depth > 64 { throw SyntaxError(message: "groups nested too deeply") }
            var ci = caseInsensitive
            var alts: [Node] = [try parseSequence(caseInsensitive: &ci, depth: depth)]
            while isChar("|") {
                i += 1
                alts.append(try parseSequence(caseInsensitive: &ci, depth: depth))
            }
            return alts.count == 1 ? alts[0] : .alt(alts)
        }

        mutating func parseSequence(caseInsensitive ci: inout Bool, depth: Int) throws(SyntaxError) -> Node {
            var items: [Node] = []
            while let c = peek(), c != 0x7C /* | */, c != 0x29 /* ) */ {
                if let atom = try parseAtom(caseInsensitive: &ci, depth: depth) {
                    items.append(try parseQuantifier(atom))
                }
            }
            return items.count == 1 ? items[0] : .seq(items)
        }

        mutating func parseQuantifier(_ atom: Node) throws(SyntaxError) -> Node {
            var node = atom
            while let c = peek() {
                var lo = 0, hi = Int.max
                if c == 0x2A { lo = 0; i += 1 } // *
                else if c == 0x2B { lo = 1; i += 1 } // +
                else if c == 0x3F { lo = 0; hi = 1; i += 1 } // ?
                else if c == 0x7B, let (a, b, len) = braceQuantifier() { lo = a; hi = b; i += len }
                else { break }
                if lo > hi { throw SyntaxError(message: "quantifier {\(lo),\(hi)} has min > max") }
                var greedy = true, possessive = false
                if isChar("?") { greedy = false; i += 1 } else if isChar("+") && !(c == 0x7B) { possessive = true; i += 1 }
                if case .empty = node { continue }
                switch node {
                case .lineStart, .lineEnd, .textStart, .textEnd, .textEndNewline, .look:
                    throw SyntaxError(message: "quantifier after an anchor or lookaround")
                default: break
                }
                node = .rep(node, min: lo, max: hi, greedy: greedy, possessive: possessive)
            }
            return node
        }

        /// `{n}`, `{n,}`, `{n,m}`, `{,m}`; anything else is a literal `{` (Oniguruma's reading).
        func braceQuantifier() -> (Int, Int, Int)? {
            var k = i + 1
            func number() -> Int? {
                var v = 0, seen = false
                while k < chars.count, chars[k] >= 0x30, chars[k] <= 0x39 {
                    v = min(v * 10 + Int(chars[k] - 0x30), 100_000); seen = true; k += 1
                }
                return seen ? v : nil
            }
            let a = number()
            if k < chars.count, chars[k] == 0x7D { // }
                guard let a else { return nil }
                return (a, a, k + 1 - i)
            }
            guard k < chars.count, chars[k] == 0x2C else { return nil } // ,
            k += 1
            let b = number()
            guard k < chars.count, chars[k] == 0x7D, a != nil || b != nil else { return nil }
            return (a ?? 0, b ?? Int.max, k + 1 - i)
        }

        mutating func parseAtom(caseInsensitive ci: inout Bool, depth: Int) throws(SyntaxError) -> Node? {
            let c = chars[i]
            switch c {
            case 0x28: // (
                i += 1
                if isChar("?") {
                    i += 1
                    guard let k = peek() else { throw SyntaxError(message: "unterminated group") }
                    if k == 0x3A { i += 1; return try group(ci, depth) } // (?:
                    if k == 0x21 || k == 0x3D { // (?! (?=
                        i += 1
                        let inner = try group(ci, depth)
                        return .look(inner, negative: k == 0x21)
                    }
                    if k == 0x3C, let n = peek(1), n != 0x21, n != 0x3D { // (?<name>
                        i += 1
                        while let x = peek(), x != 0x3E { i += 1 }
                        guard isChar(">") else { throw SyntaxError(message: "unterminated group name") }
                        i += 1
                        return try group(ci, depth)
                    }
                    // flags: (?i) (?-i) (?i:...) (?-i:...)
                    var on = true, newCI = ci, sawFlag = false
                    while let f = peek() {
                        if f == 0x2D { on = false; i += 1 }
                        else if f == 0x69 { newCI = on; sawFlag = true; i += 1 }
                        else if f == 0x78 || f == 0x6D { // x, m: not supported
                            throw SyntaxError(message: "regex flag '\(Character(Unicode.Scalar(f)!))' is not supported")
                        }
                        else { break }
                    }
                    if sawFlag, isChar(")") { i += 1; ci = newCI; return nil }
                    if sawFlag, isChar(":") { i += 1; return try group(newCI, depth) }
                    throw SyntaxError(message: "unsupported group construct '(?' at offset \(i - 2)")
                }
                return try group(ci, depth)
            case 0x29: throw SyntaxError(message: "unbalanced ')'")
            case 0x5B: return .set(try parseClass(ci))
            case 0x2E: i += 1; return .dot
            case 0x5E: i += 1; return .lineStart
            case 0x24: i += 1; return .lineEnd
            case 0x5C: return try parseEscape(ci, inClass: false)
            case 0x2A, 0x2B, 0x3F: throw SyntaxError(message: "quantifier without a target at offset \(i)")
            default:
                i += 1
                return .scalar(c, caseInsensitive: ci)
            }
        }

        mutating func group(_ ci: Bool, _ depth: Int) throws(SyntaxError) -> Node {
            let inner = try parseAlternation(caseInsensitive: ci, depth: depth + 1)
            guard isChar(")") else { throw SyntaxError(message: "unterminated group") }
            i += 1
            return inner
        }

        mutating func hexDigits(maxCount: Int, braced: Bool) throws(SyntaxError) -> UInt32 {
            var v: UInt32 = 0, n = 0
            if braced {
                guard isChar("{") else { throw SyntaxError(message: "bad \\x escape") }
                i += 1
            }
            while n < maxCount, let c = peek(), let d = Int(String(Unicode.Scalar(c)!), radix: 16) {
                v = v &* 16 &+ UInt32(d); n += 1; i += 1
            }
            if braced {
                guard isChar("}") else { throw SyntaxError(message: "bad \\x{...} escape") }
                i += 1
            }
            guard n > 0, v <= 0x10FFFF else { throw SyntaxError(message: "bad hexadecimal escape") }
            return v
        }

        /// Parses an escape starting at the backslash. Returns a scalar node or a one-scalar set.
        mutating func parseEscape(_ ci: Bool, inClass: Bool) throws(SyntaxError) -> Node {
            i += 1
            guard let e = peek() else { throw SyntaxError(message: "pattern ends with a backslash") }
            i += 1
            func cls(_ k: CharClass, _ neg: Bool) -> Node {
                var s = CharSet(); s.classes = [(k, neg)]; return .set(s)
            }
            switch Character(Unicode.Scalar(e)!) {
            case "s": return cls(.space, false)
            case "S": return cls(.space, true)
            case "d": return cls(.digit, false)
            case "D": return cls(.digit, true)
            case "w": return cls(.word, false)
            case "W": return cls(.word, true)
            case "h": return cls(.hexSpace, false)
            case "H": return cls(.hexSpace, true)
            case "p", "P":
                var neg = e == 0x50
                guard isChar("{") else { throw SyntaxError(message: "\\p needs {Category}") }
                i += 1
                if isChar("^") { neg.toggle(); i += 1 }
                var name = ""
                while let x = peek(), x != 0x7D { name.unicodeScalars.append(Unicode.Scalar(x)!); i += 1 }
                guard isChar("}") else { throw SyntaxError(message: "unterminated \\p{") }
                i += 1
                if name == "Any" { return cls(.any, neg) }
                guard let cats = TokenizerRegex.categories(named: name) else {
                    throw SyntaxError(message: "Unicode property '\(name)' is not supported")
                }
                return cls(.category(cats), neg)
            case "r": return .scalar(0x0D, caseInsensitive: false)
            case "n": return .scalar(0x0A, caseInsensitive: false)
            case "t": return .scalar(0x09, caseInsensitive: false)
            case "f": return .scalar(0x0C, caseInsensitive: false)
            case "v": return .scalar(0x0B, caseInsensitive: false)
            case "e": return .scalar(0x1B, caseInsensitive: false)
            case "a": return .scalar(0x07, caseInsensitive: false)
            case "0": return .scalar(0, caseInsensitive: false)
            case "x":
                let braced = isChar("{")
                return .scalar(try hexDigits(maxCount: braced ? 8 : 2, braced: braced), caseInsensitive: ci)
            case "u": return .scalar(try hexDigits(maxCount: 4, braced: false), caseInsensitive: ci)
            case "A" where !inClass: return .textStart
            case "z" where !inClass: return .textEnd
            case "Z" where !inClass: return .textEndNewline
            default:
                let ch = Unicode.Scalar(e)!
                if ch.properties.isAlphabetic || ch.properties.numericType != nil {
                    throw SyntaxError(message: "escape '\\\(ch)' is not supported")
                }
                return .scalar(e, caseInsensitive: ci)
            }
        }

        mutating func parseClass(_ ci: Bool) throws(SyntaxError) -> CharSet {
            i += 1 // [
            var set = CharSet()
            set.caseInsensitive = ci
            if isChar("^") { set.negated = true; i += 1 }
            var first = true
            while true {
                guard let c = peek() else { throw SyntaxError(message: "unterminated character class") }
                if c == 0x5D && !first { i += 1; break } // ]
                first = false
                if c == 0x5B { // nested class
                    if isChar(":", at: 1) { throw SyntaxError(message: "POSIX bracket classes are not supported") }
                    set.nested.append(try parseClass(ci)); continue
                }
                if c == 0x26, isChar("&", at: 1) { throw SyntaxError(message: "class intersection '&&' is not supported") }
                var lo: UInt32
                if c == 0x5C {
                    let node = try parseEscape(ci, inClass: true)
                    switch node {
                    case .scalar(let v, _): lo = v
                    case .set(let s): set.nested.append(s); continue
                    default: throw SyntaxError(message: "unsupported escape in a character class")
                    }
                } else {
                    lo = c; i += 1
                }
                // range?
                if isChar("-"), let n = peek(1), n != 0x5D {
                    i += 1
                    var hi: UInt32
                    if n == 0x5C {
                        guard case .scalar(let v, _) = try parseEscape(ci, inClass: true) else {
                            throw SyntaxError(message: "bad range end in a character class")
                        }
                        hi = v
                    } else { hi = n; i += 1 }
                    if hi < lo { throw SyntaxError(message: "empty range in a character class") }
                    set.ranges.append((lo, hi))
                } else {
                    set.ranges.append((lo, lo))
                }
            }
            return set
        }
    }

    // MARK: Matching

    private final class Matcher {
        let text: [UInt32]
        var budget: Int
        /// Continuations recurse, once per repetition of a quantified group for instance, so a pattern such as
        /// `(ab)*` on a long text nests deeply. Matching stops with an error when the thread's stack gets within
        /// `stackMargin` bytes of its end (or, where the stack bounds are unknown, past `fallbackDepth` levels)
        /// instead of overflowing, whatever the stack size (Swift concurrency threads have 512 KB).
        var depth = 0
        /// Found on first need only: pthread_getattr_np reads /proc/self/maps for the main thread.
        lazy var stackLimit: UInt? = currentStackLowAddress().map { $0 + Matcher.stackMargin }
        static let stackMargin: UInt = 128 * 1024
        static let fallbackDepth = 48
        init(text: [UInt32], budget: Int) {
            self.text = text
            self.budget = budget
        }

        @inline(__always) func single(_ node: Node, _ pos: Int) -> Bool {
            guard pos < text.count else { return false }
            let c = text[pos]
            switch node {
            case .scalar(let v, let ci):
                if c == v { return true }
                return ci && TokenizerRegex.caseVariants(v).contains(c)
            case .set(let s): return s.contains(c)
            case .dot: return c != 0x0A
            default: return false
            }
        }

        func spend() throws(BudgetExceeded) {
            budget -= 1
            if budget < 0 { throw BudgetExceeded() }
        }

        func match(_ node: Node, _ pos: Int, _ k: (Int) throws(BudgetExceeded) -> Bool) throws(BudgetExceeded) -> Bool {
            try spend()
            depth += 1
            defer { depth -= 1 }
            if depth <= 32 {
                // Shallow: nothing to check (the split patterns of real tokenizers stay here).
            } else if let stackLimit {
                var marker: UInt8 = 0
                let here = withUnsafeMutablePointer(to: &marker) { UInt(bitPattern: $0) }
                if here < stackLimit { throw BudgetExceeded() }
            } else if depth > Matcher.fallbackDepth {
                throw BudgetExceeded()
            }
            switch node {
            case .empty: return try k(pos)
            case .scalar, .set, .dot: return single(node, pos) ? try k(pos + 1) : false
            case .lineStart: return (pos == 0 || text[pos - 1] == 0x0A) ? try k(pos) : false
            case .lineEnd: return (pos == text.count || text[pos] == 0x0A) ? try k(pos) : false
            case .textStart: return pos == 0 ? try k(pos) : false
            case .textEnd: return pos == text.count ? try k(pos) : false
            case .textEndNewline:
                return (pos == text.count || (pos == text.count - 1 && text[pos] == 0x0A)) ? try k(pos) : false
            case .seq(let items): return try matchSeq(items, 0, pos, k)
            case .alt(let alts):
                for a in alts where try match(a, pos, k) { return true }
                return false
            case .look(let inner, let negative):
                var found = false
                _ = try match(inner, pos) { _ in found = true; return true }
                return found != negative ? try k(pos) : false
            case .rep(let inner, let lo, let hi, let greedy, let possessive):
                if inner.isSingleScalar {
                    var n = 0
                    while n < hi, single(inner, pos + n) { n += 1; try spend() }
                    if n < lo { return false }
                    if possessive { return try k(pos + n) }
                    if greedy {
                        var j = n
                        while j >= lo { if try k(pos + j) { return true }; j -= 1; try spend() }
                    } else {
                        var j = lo
                        while j <= n { if try k(pos + j) { return true }; j += 1; try spend() }
                    }
                    return false
                }
                if possessive {
                    var end = -1
                    _ = try rep(inner, lo, hi, true, 0, pos) { p in end = p; return true }
                    return end >= 0 ? try k(end) : false
                }
                return try rep(inner, lo, hi, greedy, 0, pos, k)
            }
        }

        func matchSeq(_ items: [Node], _ idx: Int, _ pos: Int, _ k: (Int) throws(BudgetExceeded) -> Bool) throws(BudgetExceeded) -> Bool {
            // Runs of one-scalar items (a literal string, say) are matched in a loop, without nesting.
            var idx = idx, pos = pos
            while idx < items.count, items[idx].isSingleScalar {
                guard single(items[idx], pos) else { return false }
                idx += 1; pos += 1
            }
            if idx == items.count { return try k(pos) }
            return try match(items[idx], pos) { p throws(BudgetExceeded) in try matchSeq(items, idx + 1, p, k) }
        }

        func rep(_ inner: Node, _ lo: Int, _ hi: Int, _ greedy: Bool, _ count: Int, _ pos: Int,
                 _ k: (Int) throws(BudgetExceeded) -> Bool) throws(BudgetExceeded) -> Bool {
            if count < lo {
                return try match(inner, pos) { p throws(BudgetExceeded) in
                    try rep(inner, lo, hi, greedy, count + 1, p, k)
                }
            }
            func more() throws(BudgetExceeded) -> Bool {
                guard count < hi else { return false }
                return try match(inner, pos) { p throws(BudgetExceeded) in
                    p != pos ? try rep(inner, lo, hi, greedy, count + 1, p, k) : false
                }
            }
            if greedy {
                if try more() { return true }
                return try k(pos)
            }
            if try k(pos) { return true }
            return try more()
        }
    }

    /// Every non-overlapping match, leftmost first, as scalar offsets into `text` (empty matches included, the
    /// search then resumes one scalar further on).
    func matches(in text: [UInt32]) throws(BudgetExceeded) -> [Range<Int>] {
        let m = Matcher(text: text, budget: 2_000_000 + 400 * text.count)
        var out: [Range<Int>] = []
        var start = 0
        while start <= text.count {
            var end = -1
            var s = start
            while s <= text.count {
                if try m.match(root, s, { p in end = p; return true }) { break }
                s += 1
            }
            if end < 0 { break }
            out.append(s..<end)
            start = end > s ? end : end + 1
        }
        return out
    }
}

/// The lowest address of the current thread's stack, or nil where it cannot be found.
private func currentStackLowAddress() -> UInt? {
    #if canImport(Darwin)
    let top = UInt(bitPattern: pthread_get_stackaddr_np(pthread_self()))
    return top - UInt(pthread_get_stacksize_np(pthread_self()))
    #elseif canImport(Glibc)
    // pthread_getattr_np is a GNU extension the Glibc module does not export; look it up at run time.
    typealias GetAttr = @convention(c) (pthread_t, UnsafeMutablePointer<pthread_attr_t>) -> Int32
    guard let sym = dlsym(nil, "pthread_getattr_np") else { return nil }
    let getattr = unsafeBitCast(sym, to: GetAttr.self)
    var attr = pthread_attr_t()
    guard getattr(pthread_self(), &attr) == 0 else { return nil }
    defer { pthread_attr_destroy(&attr) }
    var addr: UnsafeMutableRawPointer? = nil
    var size = 0
    guard pthread_attr_getstack(&attr, &addr, &size) == 0, let addr, size > 0 else { return nil }
    return UInt(bitPattern: addr)
    #else
    return nil
    #endif
}
