import Foundation

/// A Hugging Face `tokenizer.json` with a byte-level BPE model (GPT-2, Llama-3, SmolLM, Qwen style), reproducing
/// `tokenizers`' `Tokenizer.encode(text, add_special_tokens=False)` and `decode(ids)`.
///
/// Pipeline, as the `tokenizers` library runs it:
/// 1. added tokens with `normalized: false` are cut out of the raw text (leftmost-longest, then the
///    `single_word`, `lstrip`, `rstrip` rules);
/// 2. each remaining piece is normalized (`NFC`, `NFKC`, `NFD`, `NFKD`, or a `Sequence` of them) and added tokens
///    with `normalized: true` are cut out of it;
/// 3. the pre-tokenizer splits the pieces (`ByteLevel`, `Split`, `Digits`, or a `Sequence` of them) and maps them
///    to the byte-level alphabet;
/// 4. the BPE model turns each piece into ids.
///
/// The post-processor is not applied (no BOS/EOS is added; probes write `<s>` themselves), and `truncation` /
/// `padding` are ignored. Everything else that the file configures and this class does not implement is
/// refused at load time, naming the component.
public final class BPETokenizer: Sendable {
    struct AddedToken: Sendable {
        var id: Int
        var content: [UInt32]
        var singleWord, lstrip, rstrip, normalized, special: Bool
    }

    indirect enum Normalizer: Sendable {
        case nfc, nfkc, nfd, nfkd
        case sequence([Normalizer])
    }

    enum SplitBehavior: String, Sendable {
        case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
        case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"
    }

    indirect enum PreTokenizer: Sendable {
        case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
        case split(TokenizerRegex, SplitBehavior, invert: Bool)
        case digits(individual: Bool)
        case sequence([PreTokenizer])
    }

    enum Decoder: Sendable { case none, byteLevel }

    /// Longest-match lookup of added tokens by first scalar.
    struct AddedMatcher: Sendable {
        var byFirst: [UInt32: [Int]] = [:]  // indices into tokens, longest first
        var tokens: [AddedToken] = []
        var isEmpty: Bool { tokens.isEmpty }

        init(_ list: [AddedToken]) {
            tokens = list.filter { !$0.content.isEmpty }
            for (i, t) in tokens.enumerated() { byFirst[t.content[0], default: []].append(i) }
            for k in byFirst.keys {
                byFirst[k]!.sort { tokens[$0].content.count != tokens[$1].content.count
                    ? tokens[$0].content.count > tokens[$1].content.count : $0 < $1 }
            }
        }

        /// Non-overlapping leftmost-longest matches: (token index, start, end).
        func find(_ text: [UInt32]) -> [(Int, Int, Int)] {
            var out: [(Int, Int, Int)] = []
            var i = 0
            scan: while i < text.count {
                if let cands = byFirst[text[i]] {
                    for c in cands {
                        let t = tokens[c].content
                        if i + t.count <= text.count && text[i..<(i + t.count)].elementsEqual(t) {
                            out.append((c, i, i + t.count))
                            i += t.count
                            continue scan
                        }
                    }
                }
                i += 1
            }
            return out
        }
    }

    private struct Piece {
        var text: [UInt32]
        var id: Int?
    }

    let file: String
    let model: BPEModel
    let normalizer: Normalizer?
    let preTokenizer: PreTokenizer?
    let decoder: Decoder
    let rawMatcher: AddedMatcher
    let normalizedMatcher: AddedMatcher
    let addedByID: [Int: String]
    let addedByContent: [TokenKey: Int]
    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    let gpt2Regex: TokenizerRegex

    /// Number of entries in the model vocabulary.
    public var vocabularySize: Int { model.vocab.count }

    /// The id of a token of the vocabulary or of the added tokens.
    public func tokenID(_ token: String) -> Int? {
        let key = Array(token.utf8)
        if let id = addedByContent[key] { return id }
        return model.vocab[key]
    }

    // MARK: Loading

    public convenience init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw MM1Error(file: path, "cannot read") }
        try self.init(json: [UInt8](data), file: path)
    }

    public init(json: [UInt8], file: String) throws {
        self.file = file
        func fail(_ m: String) -> MM1Error { MM1Error(file: file, m) }
        let root: Any
        do { root = try JSONSerialization.jsonObject(with: Data(json)) } catch {
            throw fail("is not valid JSON (\(error.localizedDescription))")
        }
        guard let top = root as? [String: Any] else { throw fail("is not a JSON object") }
        guard let modelObj = top["model"] as? [String: Any] else { throw fail("has no \"model\" object") }

        // Model.
        let type = modelObj["type"] as? String
        guard type == "BPE" else {
            throw fail("tokenizer model type '\(type ?? "missing")' is not supported (only BPE)")
        }
        if let d = modelObj["dropout"], !(d is NSNull) {
            guard let v = d as? Double, v == 0 else { throw fail("BPE dropout \(d) is not supported (only null or 0)") }
        }
        func optString(_ key: String) throws -> String? {
            guard let v = modelObj[key], !(v is NSNull) else { return nil }
            guard let s = v as? String else { throw fail("model.\(key) must be a string or null") }
            return s
        }
        func optBool(_ key: String) throws -> Bool {
            guard let v = modelObj[key], !(v is NSNull) else { return false }
            guard let b = v as? Bool else { throw fail("model.\(key) must be true or false") }
            return b
        }
        guard let vocabObj = modelObj["vocab"] as? [String: Any] else { throw fail("model.vocab must be an object") }
        var vocab: [TokenKey: Int] = [:]
        var vocabR: [Int: String] = [:]
        vocab.reserveCapacity(vocabObj.count)
        for (tok, v) in vocabObj {
            guard let id = Self.tokenIDValue(v) else {
                throw fail("model.vocab['\(tok)'] is \(v), not a token id (an integer 0 ... 4294967295)")
            }
            if let other = vocabR[id] {
                throw fail("model.vocab gives id \(id) to both '\(other)' and '\(tok)'")
            }
            vocab[Array(tok.utf8)] = id
            vocabR[id] = tok
        }
        let prefix = try optString("continuing_subword_prefix")
        let prefixBytes = prefix.map { Array($0.utf8) } ?? []
        guard let mergesObj = modelObj["merges"] as? [Any] else { throw fail("model.merges must be a list") }
        var merges: [BPEModel.Pair: (rank: Int, id: Int)] = [:]
        merges.reserveCapacity(mergesObj.count)
        var rank = 0
        for (n, m) in mergesObj.enumerated() {
            let a: String, b: String
            if let s = m as? String {
                if s.hasPrefix("#version") { continue }
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw fail("model.merges[\(n)] '\(s)' is not two tokens separated by one space") }
                a = String(parts[0]); b = String(parts[1])
            } else if let pair = m as? [Any], pair.count == 2, let x = pair[0] as? String, let y = pair[1] as? String {
                a = x; b = y
            } else {
                throw fail("model.merges[\(n)] is neither \"a b\" nor [\"a\", \"b\"]")
            }
            let ka = Array(a.utf8), kb = Array(b.utf8)
            guard let ia = vocab[ka] else { throw fail("model.merges[\(n)]: token '\(a)' is not in the vocabulary") }
            guard let ib = vocab[kb] else { throw fail("model.merges[\(n)]: token '\(b)' is not in the vocabulary") }
            let rest = kb.starts(with: prefixBytes) ? Array(kb[prefixBytes.count...]) : kb
            guard let merged = vocab[ka + rest] else {
                throw fail("model.merges[\(n)]: the merged token '\(a)\(String(decoding: rest, as: UTF8.self))' is not in the vocabulary")
            }
            merges[BPEModel.Pair(a: ia, b: ib)] = (rank, merged)  // a repeated pair takes its later rank, as in tokenizers
            rank += 1
        }
        model = BPEModel(vocab: vocab, vocabR: vocabR, merges: merges, unkToken: try optString("unk_token"),
                         continuingSubwordPrefix: prefix, endOfWordSuffix: try optString("end_of_word_suffix"),
                         fuseUnk: try optBool("fuse_unk"), byteFallback: try optBool("byte_fallback"),
                         ignoreMerges: try optBool("ignore_merges"))

        gpt2Regex = try! TokenizerRegex(Self.gpt2Pattern)
        normalizer = try Self.parseNormalizer(top["normalizer"], fail: fail, depth: 0)
        preTokenizer = try Self.parsePreTokenizer(top["pre_tokenizer"], fail: fail, depth: 0)

        // Decoder.
        switch top["decoder"] {
        case nil, is NSNull: decoder = .none
        case let d as [String: Any]:
            guard d["type"] as? String == "ByteLevel" else {
                throw fail("decoder type '\(d["type"] as? String ?? "missing")' is not supported (only ByteLevel)")
            }
            decoder = .byteLevel
        default: throw fail("\"decoder\" must be an object or null")
        }

        // Added tokens.
        var added: [AddedToken] = []
        var addedByID: [Int: String] = [:]
        if let list = top["added_tokens"], !(list is NSNull) {
            guard let arr = list as? [Any] else { throw fail("\"added_tokens\" must be a list") }
            for (n, item) in arr.enumerated() {
                guard let o = item as? [String: Any], let content = o["content"] as? String,
                      let id = o["id"].flatMap(Self.tokenIDValue) else {
                    throw fail("added_tokens[\(n)] needs a string \"content\" and an integer \"id\"")
                }
                func flag(_ k: String, _ def: Bool) throws -> Bool {
                    guard let v = o[k], !(v is NSNull) else { return def }
                    guard let b = v as? Bool else { throw fail("added_tokens[\(n)].\(k) must be true or false") }
                    return b
                }
                let special = try flag("special", false)
                let tok = AddedToken(id: id, content: content.unicodeScalars.map(\.value),
                                     singleWord: try flag("single_word", false), lstrip: try flag("lstrip", false),
                                     rstrip: try flag("rstrip", false), normalized: try flag("normalized", !special),
                                     special: special)
                if content.isEmpty { continue }
                if let old = addedByID[id], old != content {
                    throw fail("added_tokens gives id \(id) to both '\(old)' and '\(content)'")
                }
                addedByID[id] = content
                added.append(tok)
            }
        }
        // tokenizers lists special tokens before the others when it builds its matchers.
        let ordered = added.filter(\.special) + added.filter { !$0.special }
        var seen = Set<[UInt32]>()
        let unique = ordered.filter { seen.insert($0.content).inserted }
        self.addedByID = addedByID
        var byContent: [TokenKey: Int] = [:]
        for t in unique { byContent[utf8Key(t.content)] = t.id }
        addedByContent = byContent
        rawMatcher = AddedMatcher(unique.filter { !$0.normalized })
        let norm = normalizer
        normalizedMatcher = AddedMatcher(unique.filter(\.normalized).map { t in
            var t = t
            if let norm { t.content = Self.normalize(t.content, norm) }
            return t
        })
    }

    static func tokenIDValue(_ v: Any) -> Int? {
        if String(describing: type(of: v)).contains("Boolean") { return nil }  // JSON true/false
        guard let i = v as? Int, i >= 0, i <= Int(UInt32.max) else { return nil }
        return i
    }

    private static func parseNormalizer(_ v: Any?, fail: (String) -> MM1Error, depth: Int) throws -> Normalizer? {
        guard let v, !(v is NSNull) else { return nil }
        guard depth < 16, let o = v as? [String: Any], let type = o["type"] as? String else {
            throw fail("normalizer must be an object with a \"type\"")
        }
        switch type {
        case "NFC": return .nfc
        case "NFKC": return .nfkc
        case "NFD": return .nfd
        case "NFKD": return .nfkd
        case "Sequence":
            guard let list = o["normalizers"] as? [Any] else { throw fail("Sequence normalizer needs \"normalizers\"") }
            return .sequence(try list.map { try parseNormalizer($0, fail: fail, depth: depth + 1) ?? .sequence([]) })
        default:
            throw fail("normalizer '\(type)' is not supported (only NFC, NFKC, NFD, NFKD and Sequence of them)")
        }
    }

    private static func parsePreTokenizer(_ v: Any?, fail: (String) -> MM1Error, depth: Int) throws -> PreTokenizer? {
        guard let v, !(v is NSNull) else { return nil }
        guard depth < 16, let o = v as? [String: Any], let type = o["type"] as? String else {
            throw fail("pre_tokenizer must be an object with a \"type\"")
        }
        func bool(_ k: String, _ def: Bool) throws -> Bool {
            guard let x = o[k], !(x is NSNull) else { return def }
            guard let b = x as? Bool else { throw fail("\(type) pre-tokenizer: \"\(k)\" must be true or false") }
            return b
        }
        switch type {
        case "ByteLevel":
            return .byteLevel(addPrefixSpace: try bool("add_prefix_space", true), useRegex: try bool("use_regex", true))
        case "Digits":
            return .digits(individual: try bool("individual_digits", false))
        case "Split":
            guard let p = o["pattern"] as? [String: Any] else { throw fail("Split pre-tokenizer needs a \"pattern\"") }
            let regex: TokenizerRegex
            do {
                if let r = p["Regex"] as? String {
                    regex = try TokenizerRegex(r)
                } else if let s = p["String"] as? String {
                    regex = try TokenizerRegex(s.unicodeScalars.map { c -> String in
                        "\\x{" + String(c.value, radix: 16) + "}"
                    }.joined())
                } else { throw fail("Split pattern must be {\"Regex\": ...} or {\"String\": ...}") }
            } catch let e as TokenizerRegex.SyntaxError {
                throw fail("Split pre-tokenizer regex is not supported: \(e.message)")
            }
            guard let bs = o["behavior"] as? String, let behavior = SplitBehavior(rawValue: bs) else {
                throw fail("Split pre-tokenizer behavior '\(o["behavior"] ?? "missing")' is not supported")
            }
            return .split(regex, behavior, invert: try bool("invert", false))
        case "Sequence":
            guard let list = o["pretokenizers"] as? [Any] else { throw fail("Sequence pre-tokenizer needs \"pretokenizers\"") }
            return .sequence(try list.map { try parsePreTokenizer($0, fail: fail, depth: depth + 1) ?? .sequence([]) })
        default:
            throw fail("pre-tokenizer '\(type)' is not supported (only ByteLevel, Split, Digits and Sequence)")
        }
    }

    // MARK: Encoding

    /// Token ids of `text`, without any special token added (a `<s>` written in the text is matched as the
    /// added token it is).
    public func encode(_ text: String) throws -> [Int] {
        var pieces: [Piece] = []
        for p in split(text.unicodeScalars.map(\.value), rawMatcher) {
            if p.id != nil { pieces.append(p); continue }
            let normalized = normalizer.map { Self.normalize(p.text, $0) } ?? p.text
            pieces += split(normalized, normalizedMatcher)
        }
        var out: [Int] = []
        for p in pieces {
            if let id = p.id { out.append(id); continue }
            var words = [p.text]
            if let preTokenizer { words = try preTokenize(words, preTokenizer) }
            for w in words {
                do { out += try model.tokenize(w) } catch { throw error.inFile(file) }
            }
        }
        return out
    }

    private func split(_ text: [UInt32], _ matcher: AddedMatcher) -> [Piece] {
        if text.isEmpty { return [] }
        if matcher.isEmpty { return [Piece(text: text, id: nil)] }
        var out: [Piece] = []
        var startOffset = 0
        for (index, s0, e0) in matcher.find(text) {
            let tok = matcher.tokens[index]
            var start = s0, stop = e0
            if tok.singleWord {
                let startOK = start == 0 || !Self.isWordScalar(text[start - 1])
                let stopOK = stop == text.count || !Self.isWordScalar(text[stop])
                if !startOK || !stopOK { continue }
            }
            if tok.lstrip {
                var s = start
                while s > 0 && Self.isWhite(text[s - 1]) { s -= 1 }
                start = max(s, startOffset)
            }
            if tok.rstrip {
                while stop < text.count && Self.isWhite(text[stop]) { stop += 1 }
            }
            if startOffset < start { out.append(Piece(text: Array(text[startOffset..<start]), id: nil)) }
            out.append(Piece(text: [], id: tok.id))
            startOffset = stop
        }
        if startOffset < text.count { out.append(Piece(text: Array(text[startOffset...]), id: nil)) }
        return out
    }

    static func isWhite(_ c: UInt32) -> Bool { Unicode.Scalar(c)?.properties.isWhitespace ?? false }

    /// Rust regex's Unicode `\w`: alphabetic, marks, decimal digits, connector punctuation, join controls.
    static func isWordScalar(_ c: UInt32) -> Bool {
        guard let s = Unicode.Scalar(c) else { return false }
        let p = s.properties
        if p.isAlphabetic || p.isJoinControl { return true }
        switch p.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    static func normalize(_ text: [UInt32], _ n: Normalizer) -> [UInt32] {
        var s = ""
        s.unicodeScalars.append(contentsOf: text.compactMap(Unicode.Scalar.init))
        func apply(_ s: String, _ n: Normalizer) -> String {
            switch n {
            case .nfc: return s.precomposedStringWithCanonicalMapping
            case .nfkc: return s.precomposedStringWithCompatibilityMapping
            case .nfd: return s.decomposedStringWithCanonicalMapping
            case .nfkd: return s.decomposedStringWithCompatibilityMapping
            case .sequence(let list): return list.reduce(s, apply)
            }
        }
        return apply(s, n).unicodeScalars.map(\.value)
    }

    private func preTokenize(_ words: [[UInt32]], _ p: PreTokenizer) throws -> [[UInt32]] {
        switch p {
        case .sequence(let list):
            var w = words
            for q in list { w = try preTokenize(w, q) }
            return w
        case .byteLevel(let addPrefixSpace, let useRegex):
            var out: [[UInt32]] = []
            for var w in words where !w.isEmpty {
                if addPrefixSpace && w.first != 0x20 { w.insert(0x20, at: 0) }
                let parts = useRegex ? try regexSplit(w, gpt2Regex, .isolated, invert: false) : [w]
                for part in parts {
                    var mapped: [UInt32] = []
                    mapped.reserveCapacity(part.count)
                    var bytes: [UInt8] = []
                    for c in part { bytes.removeAll(keepingCapacity: true); appendUTF8(c, to: &bytes)
                        for b in bytes { mapped.append(ByteLevelAlphabet.byteToScalar[Int(b)]) } }
                    out.append(mapped)
                }
            }
            return out
        case .split(let regex, let behavior, let invert):
            var out: [[UInt32]] = []
            for w in words where !w.isEmpty { out += try regexSplit(w, regex, behavior, invert: invert) }
            return out
        case .digits(let individual):
            var out: [[UInt32]] = []
            for w in words where !w.isEmpty {
                var marks: [(Range<Int>, Bool)] = []
                for (i, c) in w.enumerated() {
                    let isNum: Bool
                    switch Unicode.Scalar(c)?.properties.generalCategory {
                    case .decimalNumber?, .letterNumber?, .otherNumber?: isNum = true
                    default: isNum = false
                    }
                    marks.append((i..<(i + 1), isNum))
                }
                if individual {
                    // Isolated on each digit: non-digit runs stay together.
                    var merged: [(Range<Int>, Bool)] = []
                    for m in marks {
                        if !m.1, let last = merged.last, !last.1 { merged[merged.count - 1].0 = last.0.lowerBound..<m.0.upperBound }
                        else { merged.append(m) }
                    }
                    out += merged.map { Array(w[$0.0]) }
                } else {
                    out += Self.applyBehavior(marks, .contiguous).map { Array(w[$0]) }
                }
            }
            return out
        }
    }

    private func regexSplit(_ w: [UInt32], _ regex: TokenizerRegex, _ behavior: SplitBehavior, invert: Bool) throws -> [[UInt32]] {
        let found: [Range<Int>]
        do { found = try regex.matches(in: w) } catch {
            throw MM1Error(file: file, "the pre-tokenizer regex '\(regex.pattern)' needs too many steps or too deep backtracking on this text")
        }
        var marks: [(Range<Int>, Bool)] = []
        var prev = 0
        for r in found {
            if prev != r.lowerBound { marks.append((prev..<r.lowerBound, false)) }
            marks.append((r, true))
            prev = r.upperBound
        }
        if prev != w.count { marks.append((prev..<w.count, false)) }
        if invert { marks = marks.map { ($0.0, !$0.1) } }
        return Self.applyBehavior(marks, behavior).filter { !$0.isEmpty }.map { Array(w[$0]) }
    }

    /// tokenizers' `SplitDelimiterBehavior` over a list of (range, is-match) covering the text.
    static func applyBehavior(_ marks: [(Range<Int>, Bool)], _ behavior: SplitBehavior) -> [Range<Int>] {
        switch behavior {
        case .isolated: return marks.map(\.0)
        case .removed: return marks.filter { !$0.1 }.map(\.0)
        case .mergedWithPrevious:
            var out: [Range<Int>] = []
            var previousMatch = false
            for (r, m) in marks {
                if m && !previousMatch, let last = out.last { out[out.count - 1] = last.lowerBound..<r.upperBound }
                else { out.append(r) }
                previousMatch = m
            }
            return out
        case .mergedWithNext:
            var out: [Range<Int>] = []
            var previousMatch = false
            for (r, m) in marks.reversed() {
                if m && !previousMatch, let last = out.last { out[out.count - 1] = r.lowerBound..<last.upperBound }
                else { out.append(r) }
                previousMatch = m
            }
            return out.reversed()
        case .contiguous:
            var out: [Range<Int>] = []
            var previousMatch = false
            for (i, (r, m)) in marks.enumerated() {
                if i > 0 && m == previousMatch, let last = out.last { out[out.count - 1] = last.lowerBound..<r.upperBound }
                else { out.append(r) }
                previousMatch = m
            }
            return out
        }
    }

    // MARK: Decoding

    /// The text of `ids` (special tokens included, unknown ids skipped), as `tokenizers`' `decode` gives it.
    public func decode(_ ids: [Int]) -> String {
        var tokens: [String] = []
        for id in ids {
            if let t = addedByID[id] ?? model.vocabR[id] { tokens.append(t) }
        }
        switch decoder {
        case .none: return tokens.joined(separator: " ")
        case .byteLevel:
            var bytes: [UInt8] = []
            for t in tokens {
                var tb: [UInt8] = []
                var ok = true
                for s in t.unicodeScalars {
                    guard let b = ByteLevelAlphabet.scalarToByte[s.value] else { ok = false; break }
                    tb.append(b)
                }
                bytes += ok ? tb : Array(t.utf8)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
    }
}
