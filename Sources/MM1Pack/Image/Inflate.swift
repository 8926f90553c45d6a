import Foundation

/// DEFLATE (RFC 1951) decompressor and zlib (RFC 1950) wrapper, written for untrusted input.
///
/// Every read is bounds-checked; the output never grows past `maxOutput` bytes, so a
/// decompression bomb stops with an error instead of exhausting memory. Errors carry no file
/// name (the caller adds it with `MM1Error.inFile`).
public enum Inflate {
    /// Decompresses a zlib stream (CMF/FLG header, DEFLATE data, Adler-32 trailer).
    /// - Parameters:
    ///   - maxOutput: the output may not exceed this many bytes.
    ///   - expectedSize: when given, the output must be exactly this long (used for PNG, whose
    ///     filtered scanline size is known from the header).
    public static func zlibDecompress(_ input: [UInt8], maxOutput: Int, expectedSize: Int? = nil) throws -> [UInt8] {
        guard input.count >= 6 else { throw MM1Error("zlib stream is truncated (\(input.count) bytes)") }
        let cmf = Int(input[0]), flg = Int(input[1])
        guard cmf & 0x0f == 8 else { throw MM1Error("zlib stream uses compression method \(cmf & 0x0f), not DEFLATE (8)") }
        guard cmf >> 4 <= 7 else { throw MM1Error("zlib window size field \(cmf >> 4) is larger than 7") }
        guard (cmf * 256 + flg) % 31 == 0 else { throw MM1Error("zlib header check bits are wrong") }
        guard flg & 0x20 == 0 else { throw MM1Error("zlib stream needs a preset dictionary, which PNG forbids") }
        var consumed = 0
        let out = try input.withUnsafeBufferPointer { buf -> [UInt8] in
            let body = UnsafeBufferPointer(rebasing: buf[2...])
            var d = Decoder(input: body, maxOutput: maxOutput, reserve: expectedSize ?? min(maxOutput, body.count * 4))
            try d.run()
            consumed = 2 + d.bytesConsumed
            return d.out
        }
        guard consumed + 4 <= input.count else { throw MM1Error("zlib stream ends before its Adler-32 checksum") }
        let stored = UInt32(input[consumed]) << 24 | UInt32(input[consumed + 1]) << 16
            | UInt32(input[consumed + 2]) << 8 | UInt32(input[consumed + 3])
        let actual = adler32(out)
        guard stored == actual else {
            throw MM1Error("zlib Adler-32 mismatch (stored \(hex(stored)), computed \(hex(actual)))")
        }
        if let expectedSize, out.count != expectedSize {
            throw MM1Error("decompressed data is \(out.count) bytes, expected \(expectedSize)")
        }
        return out
    }

    /// Decompresses raw DEFLATE data. Trailing bytes after the final block are ignored.
    public static func inflate(_ input: [UInt8], maxOutput: Int) throws -> [UInt8] {
        try input.withUnsafeBufferPointer { buf in
            var d = Decoder(input: buf, maxOutput: maxOutput, reserve: min(maxOutput, buf.count * 4))
            try d.run()
            return d.out
        }
    }

    public static func adler32(_ data: [UInt8]) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        var i = 0
        let n = data.count
        data.withUnsafeBufferPointer { p in
            while i < n {
                let end = min(n, i + 5552)
                while i < end {
                    a &+= UInt32(p[i]); b &+= a
                    i += 1
                }
                a %= 65521; b %= 65521
            }
        }
        return b << 16 | a
    }

    static func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }

    // MARK: - Huffman tables

    /// A canonical Huffman code: a direct lookup table for codes up to `fastBits` long (entries hold
    /// symbol << 4 | length, 0 = not in the table) and the count/symbol lists for longer codes.
    struct Huffman {
        static let fastBits = 9
        var fast: [UInt16]
        var counts: [Int]      // number of codes of each length 0...15
        var symbols: [UInt16]  // symbols ordered by code
        var maxLen: Int

        /// Builds the code from code lengths (0 = unused). Over-subscribed sets are an error;
        /// incomplete sets are allowed (RFC 1951 permits a single distance code), and decoding a
        /// code that is not in the set fails later.
        init(lengths: ArraySlice<UInt8>) throws {
            counts = [Int](repeating: 0, count: 16)
            for l in lengths { counts[Int(l)] += 1 }
            counts[0] = 0
            var left = 1
            for len in 1...15 {
                left <<= 1
                left -= counts[len]
                if left < 0 { throw MM1Error("DEFLATE Huffman code lengths are over-subscribed") }
            }
            var offs = [Int](repeating: 0, count: 16)
            for len in 1..<15 { offs[len + 1] = offs[len] + counts[len] }
            symbols = [UInt16](repeating: 0, count: lengths.count)
            var i = 0
            for l in lengths {
                if l != 0 { symbols[offs[Int(l)]] = UInt16(i); offs[Int(l)] += 1 }
                i += 1
            }
            maxLen = 0
            for len in stride(from: 15, through: 1, by: -1) where counts[len] > 0 { maxLen = len; break }
            // Fill the fast table: walk codes in canonical order.
            fast = [UInt16](repeating: 0, count: 1 << Huffman.fastBits)
            var code = 0, index = 0
            for len in 1...15 {
                for _ in 0..<counts[len] {
                    if len <= Huffman.fastBits {
                        // DEFLATE sends codes MSB-first; the bit reader is LSB-first, so reverse.
                        var rev = 0
                        var c = code
                        for _ in 0..<len { rev = (rev << 1) | (c & 1); c >>= 1 }
                        let entry = UInt16(Int(symbols[index]) << 4 | len)
                        var r = rev
                        while r < (1 << Huffman.fastBits) { fast[r] = entry; r += 1 << len }
                    }
                    code += 1; index += 1
                }
                code <<= 1
            }
        }
    }

    static let fixedLit: Huffman = {
        var l = [UInt8](repeating: 8, count: 288)
        for i in 144..<256 { l[i] = 9 }
        for i in 256..<280 { l[i] = 7 }
        return try! Huffman(lengths: l[...])
    }()
    static let fixedDist: Huffman = try! Huffman(lengths: [UInt8](repeating: 5, count: 30)[...])

    static let lenBase: [Int] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59,
                                 67, 83, 99, 115, 131, 163, 195, 227, 258]
    static let lenExtra: [Int] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    static let distBase: [Int] = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769,
                                  1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
    static let distExtra: [Int] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11,
                                   12, 12, 13, 13]
    static let clOrder: [Int] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]

    // MARK: - Decoder

    struct Decoder {
        let input: UnsafeBufferPointer<UInt8>
        var pos = 0          // next byte to load into the bit buffer
        var bitBuf: UInt64 = 0
        var bitCount = 0
        var out: [UInt8]
        let maxOutput: Int

        init(input: UnsafeBufferPointer<UInt8>, maxOutput: Int, reserve: Int) {
            self.input = input
            self.maxOutput = maxOutput
            out = []
            out.reserveCapacity(max(0, min(reserve, maxOutput)))
        }

        /// Bytes of input used, counting a partly used final byte as used.
        var bytesConsumed: Int { pos - bitCount / 8 }

        @inline(__always) mutating func refill() {
            while bitCount <= 56 && pos < input.count {
                bitBuf |= UInt64(input[pos]) << UInt64(bitCount)
                pos += 1; bitCount += 8
            }
        }

        @inline(__always) mutating func bits(_ n: Int) throws -> Int {
            if n == 0 { return 0 }
            if bitCount < n {
                refill()
                if bitCount < n { throw MM1Error("DEFLATE data is truncated") }
            }
            let v = Int(bitBuf & ((1 << UInt64(n)) - 1))
            bitBuf >>= UInt64(n); bitCount -= n
            return v
        }

        @inline(__always) mutating func decode(_ h: Huffman) throws -> Int {
            if bitCount < 15 { refill() }
            let e = Int(h.fast[Int(bitBuf & UInt64((1 << Huffman.fastBits) - 1))])
            let len = e & 15
            if len != 0 && len <= bitCount {
                bitBuf >>= UInt64(len); bitCount -= len
                return e >> 4
            }
            // Slow path: canonical decoding bit by bit.
            var code = 0, first = 0, index = 0
            for l in 1...15 {
                code |= try bits(1)
                let count = h.counts[l]
                if code - count < first { return Int(h.symbols[index + (code - first)]) }
                index += count; first += count
                first <<= 1; code <<= 1
            }
            throw MM1Error("DEFLATE data holds an invalid Huffman code")
        }

        mutating func run() throws {
            var final = false
            while !final {
                final = try bits(1) == 1
                let type = try bits(2)
                switch type {
                case 0: try stored()
                case 1: try codes(Inflate.fixedLit, Inflate.fixedDist)
                case 2:
                    let (lit, dist) = try dynamicTables()
                    try codes(lit, dist)
                default: throw MM1Error("DEFLATE block type 3 is invalid")
                }
            }
        }

        mutating func stored() throws {
            // Drop to a byte boundary, then give back whole bytes still in the bit buffer.
            bitBuf >>= UInt64(bitCount & 7); bitCount -= bitCount & 7
            pos -= bitCount / 8
            bitBuf = 0; bitCount = 0
            guard pos + 4 <= input.count else { throw MM1Error("DEFLATE stored block header is truncated") }
            let len = Int(input[pos]) | Int(input[pos + 1]) << 8
            let nlen = Int(input[pos + 2]) | Int(input[pos + 3]) << 8
            pos += 4
            guard len == (~nlen & 0xffff) else { throw MM1Error("DEFLATE stored block length check fails") }
            guard pos + len <= input.count else { throw MM1Error("DEFLATE stored block is truncated") }
            guard out.count + len <= maxOutput else { throw tooLarge() }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: input[pos..<(pos + len)]))
            pos += len
        }

        func tooLarge() -> MM1Error {
            MM1Error("decompressed data exceeds the limit of \(maxOutput) bytes")
        }

        mutating func dynamicTables() throws -> (Huffman, Huffman) {
            let nlen = try bits(5) + 257
            let ndist = try bits(5) + 1
            let ncode = try bits(4) + 4
            guard nlen <= 286, ndist <= 30 else { throw MM1Error("DEFLATE dynamic block declares too many codes") }
            var cl = [UInt8](repeating: 0, count: 19)
            for i in 0..<ncode { cl[Inflate.clOrder[i]] = UInt8(try bits(3)) }
            let clCode = try Huffman(lengths: cl[...])
            var lengths = [UInt8](repeating: 0, count: nlen + ndist)
            var i = 0
            while i < nlen + ndist {
                let sym = try decode(clCode)
                if sym < 16 { lengths[i] = UInt8(sym); i += 1; continue }
                var rep = 0
                var value: UInt8 = 0
                switch sym {
                case 16:
                    guard i > 0 else { throw MM1Error("DEFLATE code length repeat has no previous length") }
                    value = lengths[i - 1]; rep = 3 + (try bits(2))
                case 17: rep = 3 + (try bits(3))
                default: rep = 11 + (try bits(7))
                }
                guard i + rep <= nlen + ndist else { throw MM1Error("DEFLATE code length repeat runs past the end") }
                for _ in 0..<rep { lengths[i] = value; i += 1 }
            }
            guard lengths[256] != 0 else { throw MM1Error("DEFLATE dynamic block has no end-of-block code") }
            return (try Huffman(lengths: lengths[0..<nlen]), try Huffman(lengths: lengths[nlen...]))
        }

        mutating func codes(_ lit: Huffman, _ dist: Huffman) throws {
            while true {
                let sym = try decode(lit)
                if sym < 256 {
                    guard out.count < maxOutput else { throw tooLarge() }
                    out.append(UInt8(sym))
                } else if sym == 256 {
                    return
                } else {
                    let li = sym - 257
                    guard li < 29 else { throw MM1Error("DEFLATE length code \(sym) is invalid") }
                    let length = Inflate.lenBase[li] + (try bits(Inflate.lenExtra[li]))
                    let di = try decode(dist)
                    guard di < 30 else { throw MM1Error("DEFLATE distance code \(di) is invalid") }
                    let distance = Inflate.distBase[di] + (try bits(Inflate.distExtra[di]))
                    guard distance <= out.count else {
                        throw MM1Error("DEFLATE distance \(distance) reaches before the start of the data")
                    }
                    guard out.count + length <= maxOutput else { throw tooLarge() }
                    var from = out.count - distance
                    for _ in 0..<length { out.append(out[from]); from += 1 }
                }
            }
        }
    }
}
