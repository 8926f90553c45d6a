import Foundation

/// Token strings are compared byte for byte (UTF-8). Swift's `String` equality is canonical equivalence, which
/// would conflate tokens such as "é" and "e\u{301}" that a vocabulary keeps apart.
typealias TokenKey = [UInt8]

@inline(__always) func utf8Key(_ scalars: some Sequence<UInt32>) -> TokenKey {
    var out: [UInt8] = []
    for v in scalars { appendUTF8(v, to: &out) }
    return out
}

@inline(__always) func appendUTF8(_ v: UInt32, to out: inout [UInt8]) {
    switch v {
    case 0..<0x80: out.append(UInt8(v))
    case 0x80..<0x800:
        out.append(UInt8(0xC0 | (v >> 6))); out.append(UInt8(0x80 | (v & 0x3F)))
    case 0x800..<0x10000:
        out.append(UInt8(0xE0 | (v >> 12))); out.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
        out.append(UInt8(0x80 | (v & 0x3F)))
    default:
        out.append(UInt8(0xF0 | (v >> 18))); out.append(UInt8(0x80 | ((v >> 12) & 0x3F)))
        out.append(UInt8(0x80 | ((v >> 6) & 0x3F))); out.append(UInt8(0x80 | (v & 0x3F)))
    }
}

/// GPT-2's reversible byte ↔ printable character table: printable Latin-1 bytes map to themselves, the other 68
/// bytes to U+0100 onwards in byte order.
enum ByteLevelAlphabet {
    static let byteToScalar: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable { table[b] = UInt32(b) } else { table[b] = next; next += 1 }
        }
        return table
    }()

    static let scalarToByte: [UInt32: UInt8] = {
        var d: [UInt32: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { d[s] = UInt8(b) }
        return d
    }()
}

/// The BPE model of `tokenizer.json`: a vocabulary, ranked merges, and the rules for characters the
/// vocabulary lacks (`byte_fallback`, `unk_token`, `fuse_unk`), as the `tokenizers` library applies them.
struct BPEModel: Sendable {
    struct Pair: Hashable, Sendable { var a: Int; var b: Int }

    let vocab: [TokenKey: Int]
    let vocabR: [Int: String]
    let merges: [Pair: (rank: Int, id: Int)]
    let unkToken: String?
    let continuingSubwordPrefix: String?
    let endOfWordSuffix: String?
    let fuseUnk: Bool
    let byteFallback: Bool
    let ignoreMerges: Bool

    /// Splits one pre-tokenized word into token ids.
    func tokenize(_ word: [UInt32]) throws(MM1Error) -> [Int] {
        if word.isEmpty { return [] }
        if ignoreMerges, let id = vocab[utf8Key(word)] { return [id] }

        // Initial symbols: one per character, or byte tokens, or unknown.
        var symbols: [Int] = []
        symbols.reserveCapacity(word.count)
        var pendingUnk: Int? = nil
        let prefix = continuingSubwordPrefix.map { Array($0.utf8) }
        let suffix = endOfWordSuffix.map { Array($0.utf8) }
        for (i, c) in word.enumerated() {
            var piece: [UInt8] = []
            if i > 0, let prefix { piece += prefix }
            appendUTF8(c, to: &piece)
            if i == word.count - 1, let suffix { piece += suffix }
            if let id = vocab[piece] {
                if let u = pendingUnk { symbols.append(u); pendingUnk = nil }
                symbols.append(id)
                continue
            }
            if byteFallback {
                // The bytes of the piece as looked up, prefix and suffix included (as tokenizers does).
                let ids = piece.map { vocab[Array(String(format: "<0x%02X>", $0).utf8)] }
                if ids.allSatisfy({ $0 != nil }) {
                    // Like the tokenizers library, a pending unknown is not flushed first: it lands after these.
                    symbols.append(contentsOf: ids.map { $0! })
                    continue
                }
            }
            if let unkToken {
                guard let unkID = vocab[Array(unkToken.utf8)] else {
                    throw MM1Error("the tokenizer's unk_token '\(unkToken)' is not in its vocabulary")
                }
                if pendingUnk != nil && !fuseUnk { symbols.append(pendingUnk!) }
                pendingUnk = unkID
            }
            // Without an unk_token the character is dropped, as the tokenizers library does.
        }
        if let u = pendingUnk { symbols.append(u) }
        if symbols.count < 2 || merges.isEmpty { return symbols }
        return mergeAll(symbols)
    }

    /// Applies merges lowest rank first (leftmost on ties) until none applies. Each merge removes one symbol,
    /// so this ends after at most n − 1 merges whatever the merge table holds.
    private func mergeAll(_ initial: [Int]) -> [Int] {
        var ids = initial
        let n = ids.count
        var prev = Array(-1..<(n - 1))
        var next = Array(1...n)
        next[n - 1] = -1
        var alive = [Bool](repeating: true, count: n)
        var heap = MergeHeap()
        for i in 0..<(n - 1) {
            if let m = merges[Pair(a: ids[i], b: ids[i + 1])] { heap.push(.init(rank: m.rank, pos: i, id: m.id)) }
        }
        while let top = heap.pop() {
            let p = top.pos
            guard alive[p], next[p] >= 0 else { continue }
            let q = next[p]
            guard let m = merges[Pair(a: ids[p], b: ids[q])], m.id == top.id else { continue }
            ids[p] = top.id
            alive[q] = false
            next[p] = next[q]
            if next[q] >= 0 { prev[next[q]] = p }
            if prev[p] >= 0, let m2 = merges[Pair(a: ids[prev[p]], b: ids[p])] {
                heap.push(.init(rank: m2.rank, pos: prev[p], id: m2.id))
            }
            if next[p] >= 0, let m3 = merges[Pair(a: ids[p], b: ids[next[p]])] {
                heap.push(.init(rank: m3.rank, pos: p, id: m3.id))
            }
        }
        var out: [Int] = []
        var i = 0
        while i >= 0 && i < n { out.append(ids[i]); i = next[i] }
        return out
    }
}

/// Binary min-heap ordered by (rank, position).
struct MergeHeap {
    struct Item { var rank: Int; var pos: Int; var id: Int }
    private var items: [Item] = []

    @inline(__always) private func less(_ x: Item, _ y: Item) -> Bool {
        x.rank != y.rank ? x.rank < y.rank : x.pos < y.pos
    }

    mutating func push(_ item: Item) {
        items.append(item)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if less(items[i], items[parent]) { items.swapAt(i, parent); i = parent } else { break }
        }
    }

    mutating func pop() -> Item? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count && less(items[l], items[m]) { m = l }
                if r < items.count && less(items[r], items[m]) { m = r }
                if m == i { break }
                items.swapAt(i, m); i = m
            }
        }
        return first
    }
}
