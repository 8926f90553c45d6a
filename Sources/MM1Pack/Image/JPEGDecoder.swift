import Foundation

/// Baseline JPEG decoder (ITU-T T.81, sequential DCT, Huffman coding, 8-bit samples) aiming at the
/// pixels Pillow gets from libjpeg(-turbo) with its default settings:
/// - integer "islow" IDCT (the Loeffler–Ligtenberg–Moschytz factorisation with 13-bit constants,
///   two passes, 2 extra bits between passes);
/// - "fancy" (triangular) chroma upsampling for 2×1, 1×2 and 2×2 subsampling, replication for
///   other factors;
/// - YCbCr → RGB with the JFIF equations in 16-bit fixed point, as libjpeg's tables do.
///
/// Supported: SOF0 and SOF1 (8-bit), 1 (gray) or 3 (YCbCr, or RGB when an Adobe marker says
/// transform 0) components, any sampling factors 1...4, interleaved and non-interleaved scans,
/// DQT 8/16-bit, DHT, DRI restart intervals. Refused with a message: progressive (SOF2), lossless,
/// arithmetic coding, 12-bit samples, CMYK/4-component images.
public enum JPEGDecoder {
    struct Component {
        var id = 0, h = 1, v = 1, tq = 0
        var bw = 0, bh = 0          // blocks per line / column in the padded plane (MCU aligned)
        var width = 0, height = 0   // real (downsampled) size
        var plane: [UInt8] = []     // bw*8 × bh*8 samples
        var dcPred = 0
        var td = 0, ta = 0
    }

    struct HuffTable {
        var lookup = [UInt16](repeating: 0, count: 1 << 9)  // symbol << 4 | length (0 = slow path)
        var maxcode = [Int](repeating: -1, count: 18)
        var valptr = [Int](repeating: 0, count: 17)
        var mincode = [Int](repeating: 0, count: 17)
        var values: [UInt8] = []

        init(counts: [Int], values: [UInt8]) throws {
            self.values = values
            var code = 0, k = 0
            for len in 1...16 {
                valptr[len] = k
                mincode[len] = code
                code += counts[len - 1]
                k += counts[len - 1]
                maxcode[len] = counts[len - 1] > 0 ? code - 1 : -1
                if code > (1 << len) { throw MM1Error("JPEG Huffman table is over-subscribed") }
                if len <= 9 {
                    for c in (code - counts[len - 1])..<code {
                        let sym = Int(values[valptr[len] + c - mincode[len]])
                        let shift = 9 - len
                        for fill in 0..<(1 << shift) { lookup[(c << shift) | fill] = UInt16(sym << 4 | len) }
                    }
                }
                code <<= 1
            }
            maxcode[17] = Int.max
        }
    }

    static let zigzag: [Int] = [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48,
                                41, 34, 27, 20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15,
                                23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63]

    /// Entropy-coded data reader: MSB-first, removes stuffed zero bytes, stops at markers
    /// (returning zero bits past them, as libjpeg does, and remembering that data ran out).
    struct BitReader {
        let data: [UInt8]
        var pos: Int
        var buf: UInt64 = 0
        var count = 0
        var hitMarker = false
        var paddedBits = 0

        init(_ d: [UInt8], at p: Int) { data = d; pos = p }

        @inline(__always) mutating func fill() {
            while count <= 56 {
                var b: UInt8 = 0
                if !hitMarker && pos < data.count {
                    b = data[pos]
                    if b == 0xff {
                        let n = pos + 1 < data.count ? data[pos + 1] : 0xd9
                        if n == 0 { pos += 2 } else { hitMarker = true; b = 0 }
                    } else { pos += 1 }
                } else { hitMarker = true }
                if hitMarker { paddedBits += 8 }
                buf |= UInt64(b) << UInt64(56 - count)
                count += 8
            }
        }

        @inline(__always) mutating func bits(_ n: Int) -> Int {
            if n == 0 { return 0 }
            if count < n { fill() }
            let v = Int(buf >> UInt64(64 - n))
            buf <<= UInt64(n); count -= n
            return v
        }

        @inline(__always) mutating func decode(_ t: HuffTable) throws -> Int {
            if count < 16 { fill() }
            let e = Int(t.lookup[Int(buf >> 55)])
            if e & 15 != 0 {
                let l = e & 15
                buf <<= UInt64(l); count -= l
                return e >> 4
            }
            var code = 0
            for len in 1...16 {
                code = (code << 1) | bits(1)
                if t.maxcode[len] >= 0 && code <= t.maxcode[len] && code >= t.mincode[len] {
                    let i = t.valptr[len] + code - t.mincode[len]
                    guard i < t.values.count else { break }
                    return Int(t.values[i])
                }
            }
            throw MM1Error("JPEG data holds an invalid Huffman code")
        }

        /// Too many bits made up past the end of the data: the file is truncated or corrupt.
        var exhausted: Bool { paddedBits - count > 64 }

        mutating func resetAtRestart() {
            buf = 0; count = 0
            // Skip to the RSTn marker and past it.
            while pos + 1 < data.count && !(data[pos] == 0xff && data[pos + 1] >= 0xd0 && data[pos + 1] <= 0xd7) { pos += 1 }
            if pos + 1 < data.count { pos += 2 }
            hitMarker = false; paddedBits = 0
        }
    }

    public static func decode(_ b: [UInt8], limits: ImageDecodeLimits = ImageDecodeLimits()) throws -> RGBImage {
        guard b.count >= 4, b[0] == 0xff, b[1] == 0xd8 else { throw MM1Error("is not a JPEG file (no SOI marker)") }
        var pos = 2
        var qt = [[Int]?](repeating: nil, count: 4)
        var dcTables = [HuffTable?](repeating: nil, count: 4)
        var acTables = [HuffTable?](repeating: nil, count: 4)
        var comps: [Component] = []
        var width = 0, height = 0, hmax = 1, vmax = 1, mcusX = 0, mcusY = 0
        var restart = 0
        var adobeTransform: Int? = nil
        var frameSeen = false, scanSeen = false

        func segment() throws -> ArraySlice<UInt8> {
            guard pos + 2 <= b.count else { throw MM1Error("JPEG is truncated (segment length at byte \(pos))") }
            let len = Int(b[pos]) << 8 | Int(b[pos + 1])
            guard len >= 2, pos + len <= b.count else { throw MM1Error("JPEG segment at byte \(pos) has a bad length \(len)") }
            let s = b[(pos + 2)..<(pos + len)]
            pos += len
            return s
        }

        while true {
            // Find the next marker (tolerating fill bytes).
            guard pos < b.count else {
                if scanSeen { break }
                throw MM1Error("JPEG is truncated (no image data)")
            }
            guard b[pos] == 0xff else { throw MM1Error("JPEG has garbage at byte \(pos) where a marker was expected") }
            while pos < b.count && b[pos] == 0xff { pos += 1 }
            guard pos < b.count else { throw MM1Error("JPEG is truncated after a marker prefix") }
            let m = Int(b[pos]); pos += 1
            switch m {
            case 0xd9: // EOI
                guard scanSeen else { throw MM1Error("JPEG ends before any scan") }
                return try finish(comps, width: width, height: height, hmax: hmax, vmax: vmax, adobe: adobeTransform)
            case 0xc0, 0xc1:
                guard !frameSeen else { throw MM1Error("JPEG has more than one frame header") }
                frameSeen = true
                let s = Array(try segment())
                guard s.count >= 6 else { throw MM1Error("JPEG frame header is truncated") }
                guard s[0] == 8 else { throw MM1Error("JPEG sample precision \(s[0]) is not supported (only 8-bit)") }
                height = Int(s[1]) << 8 | Int(s[2]); width = Int(s[3]) << 8 | Int(s[4])
                guard height > 0 else { throw MM1Error("JPEG height 0 (DNL marker) is not supported") }
                try limits.check(width: width, height: height, format: "JPEG")
                let n = Int(s[5])
                guard n == 1 || n == 3 else { throw MM1Error("JPEG with \(n) components is not supported (only gray and YCbCr/RGB)") }
                guard s.count == 6 + 3 * n else { throw MM1Error("JPEG frame header has the wrong length") }
                for i in 0..<n {
                    var c = Component()
                    c.id = Int(s[6 + 3 * i]); c.h = Int(s[7 + 3 * i] >> 4); c.v = Int(s[7 + 3 * i] & 15); c.tq = Int(s[8 + 3 * i])
                    guard (1...4).contains(c.h), (1...4).contains(c.v), c.tq < 4 else {
                        throw MM1Error("JPEG component \(c.id) has invalid sampling \(c.h)×\(c.v) or table \(c.tq)")
                    }
                    comps.append(c)
                }
                if n == 1 { comps[0].h = 1; comps[0].v = 1 }  // a single component is never subsampled
                hmax = comps.map(\.h).max()!; vmax = comps.map(\.v).max()!
                mcusX = (width + 8 * hmax - 1) / (8 * hmax); mcusY = (height + 8 * vmax - 1) / (8 * vmax)
                for i in comps.indices {
                    comps[i].bw = mcusX * comps[i].h; comps[i].bh = mcusY * comps[i].v
                    comps[i].width = (width * comps[i].h + hmax - 1) / hmax
                    comps[i].height = (height * comps[i].v + vmax - 1) / vmax
                    comps[i].plane = [UInt8](repeating: 0, count: comps[i].bw * comps[i].bh * 64)
                }
            case 0xc2, 0xc6, 0xca, 0xce:
                throw MM1Error("progressive JPEG is not supported; re-save the image as baseline JPEG or PNG")
            case 0xc3, 0xc5, 0xc7, 0xc9, 0xcb, 0xcd, 0xcf:
                throw MM1Error("JPEG coding process (SOF\(m - 0xc0)) is not supported (lossless, hierarchical or arithmetic)")
            case 0xc4:
                var s = Array(try segment())[...]
                while !s.isEmpty {
                    guard s.count >= 17 else { throw MM1Error("JPEG DHT segment is truncated") }
                    let tc = Int(s[s.startIndex] >> 4), th = Int(s[s.startIndex] & 15)
                    guard tc <= 1, th <= 3 else { throw MM1Error("JPEG DHT has invalid class/id \(tc)/\(th)") }
                    let counts = (1...16).map { Int(s[s.startIndex + $0]) }
                    let total = counts.reduce(0, +)
                    guard total <= 256, s.count >= 17 + total else { throw MM1Error("JPEG DHT segment is truncated") }
                    let vals = Array(s[(s.startIndex + 17)..<(s.startIndex + 17 + total)])
                    let t = try HuffTable(counts: counts, values: vals)
                    if tc == 0 { dcTables[th] = t } else { acTables[th] = t }
                    s = s[(s.startIndex + 17 + total)...]
                }
            case 0xdb:
                var s = Array(try segment())[...]
                while !s.isEmpty {
                    let pq = Int(s[s.startIndex] >> 4), tq = Int(s[s.startIndex] & 15)
                    guard pq <= 1, tq <= 3 else { throw MM1Error("JPEG DQT has invalid precision/id \(pq)/\(tq)") }
                    let size = pq == 0 ? 64 : 128
                    guard s.count >= 1 + size else { throw MM1Error("JPEG DQT segment is truncated") }
                    var table = [Int](repeating: 0, count: 64)
                    for k in 0..<64 {
                        let v = pq == 0 ? Int(s[s.startIndex + 1 + k])
                            : Int(s[s.startIndex + 1 + 2 * k]) << 8 | Int(s[s.startIndex + 2 + 2 * k])
                        table[zigzag[k]] = v
                    }
                    qt[tq] = table
                    s = s[(s.startIndex + 1 + size)...]
                }
            case 0xdd:
                let s = Array(try segment())
                guard s.count == 2 else { throw MM1Error("JPEG DRI segment has the wrong length") }
                restart = Int(s[0]) << 8 | Int(s[1])
            case 0xda:
                guard frameSeen else { throw MM1Error("JPEG scan comes before the frame header") }
                let s = Array(try segment())
                guard s.count >= 1 else { throw MM1Error("JPEG scan header is truncated") }
                let ns = Int(s[0])
                guard ns >= 1, ns <= comps.count, s.count == 4 + 2 * ns else { throw MM1Error("JPEG scan header is malformed") }
                var scanComps: [Int] = []
                for i in 0..<ns {
                    let id = Int(s[1 + 2 * i])
                    guard let ci = comps.firstIndex(where: { $0.id == id }) else { throw MM1Error("JPEG scan names unknown component \(id)") }
                    comps[ci].td = Int(s[2 + 2 * i] >> 4); comps[ci].ta = Int(s[2 + 2 * i] & 15)
                    guard comps[ci].td <= 3, comps[ci].ta <= 3, dcTables[comps[ci].td] != nil, acTables[comps[ci].ta] != nil else {
                        throw MM1Error("JPEG scan uses a Huffman table that was not defined")
                    }
                    guard qt[comps[ci].tq] != nil else { throw MM1Error("JPEG component \(id) uses an undefined quantisation table") }
                    scanComps.append(ci)
                }
                scanSeen = true
                pos = try decodeScan(b, at: pos, comps: &comps, scan: scanComps, qt: qt.map { $0 ?? [] },
                                     dc: dcTables, ac: acTables, mcusX: mcusX, mcusY: mcusY, restart: restart)
            case 0xee: // APP14 Adobe
                let s = Array(try segment())
                if s.count >= 12 && s.starts(with: Array("Adobe".utf8)) { adobeTransform = Int(s[11]) }
            case 0xd0...0xd7, 0x01:
                continue
            default:
                if (0xe0...0xef).contains(m) || m == 0xfe || (0xf0...0xfd).contains(m) || m == 0xdc || m == 0xde || m == 0xdf {
                    _ = try segment()
                } else {
                    throw MM1Error("JPEG has unexpected marker 0xFF\(String(m, radix: 16, uppercase: true)) at byte \(pos - 2)")
                }
            }
        }
        // Data ended without EOI after a scan: accept what was decoded (libjpeg warns and goes on).
        return try finish(comps, width: width, height: height, hmax: hmax, vmax: vmax, adobe: adobeTransform)
    }

    static func decodeScan(_ b: [UInt8], at start: Int, comps: inout [Component], scan: [Int], qt: [[Int]],
                           dc: [HuffTable?], ac: [HuffTable?], mcusX: Int, mcusY: Int, restart: Int) throws -> Int {
        var r = BitReader(b, at: start)
        for ci in scan { comps[ci].dcPred = 0 }
        var coef = [Int](repeating: 0, count: 64)
        var block = [UInt8](repeating: 0, count: 64)
        let single = scan.count == 1
        // Non-interleaved scan: one block per MCU over the component's own block grid.
        let c0 = comps[scan[0]]
        let unitsX = single ? (c0.width + 7) / 8 : mcusX
        let unitsY = single ? (c0.height + 7) / 8 : mcusY
        var todo = restart
        for my in 0..<unitsY {
            for mx in 0..<unitsX {
                if restart > 0 {
                    if todo == 0 {
                        r.resetAtRestart()
                        for ci in scan { comps[ci].dcPred = 0 }
                        todo = restart
                    }
                    todo -= 1
                }
                for ci in scan {
                    let (nh, nv) = single ? (1, 1) : (comps[ci].h, comps[ci].v)
                    for by in 0..<nv {
                        for bx in 0..<nh {
                            try decodeBlock(&r, &comps[ci], dc[comps[ci].td]!, ac[comps[ci].ta]!, qt[comps[ci].tq], &coef)
                            idctIslow(coef, &block)
                            let blockX = single ? mx : mx * nh + bx, blockY = single ? my : my * nv + by
                            let stride = comps[ci].bw * 8
                            comps[ci].plane.withUnsafeMutableBufferPointer { p in
                                for y in 0..<8 { for x in 0..<8 { p[(blockY * 8 + y) * stride + blockX * 8 + x] = block[y * 8 + x] } }
                            }
                        }
                    }
                }
                if r.exhausted { throw MM1Error("JPEG scan data is truncated or corrupt") }
            }
        }
        // Position after the scan: the next marker that is not RSTn.
        var p = r.pos
        while p + 1 < b.count {
            if b[p] == 0xff && b[p + 1] != 0 && !(0xd0...0xd7).contains(b[p + 1]) && b[p + 1] != 0xff { return p }
            p += 1
        }
        return b.count
    }

    @inline(__always) static func extend(_ v: Int, _ s: Int) -> Int { v < (1 << (s - 1)) ? v - (1 << s) + 1 : v }

    static func decodeBlock(_ r: inout BitReader, _ c: inout Component, _ dc: HuffTable, _ ac: HuffTable, _ q: [Int],
                            _ coef: inout [Int]) throws {
        for i in 0..<64 { coef[i] = 0 }
        let t = try r.decode(dc)
        guard t <= 11 else { throw MM1Error("JPEG DC difference category \(t) is invalid") }
        let diff = t == 0 ? 0 : extend(r.bits(t), t)
        c.dcPred += diff
        coef[0] = Int(Int16(truncatingIfNeeded: c.dcPred)) * q[0]  // libjpeg stores coefficients as 16-bit
        var k = 1
        while k < 64 {
            let rs = try r.decode(ac)
            let run = rs >> 4, size = rs & 15
            if size == 0 {
                if run == 15 { k += 16; continue }
                break
            }
            k += run
            guard k < 64 else { throw MM1Error("JPEG AC coefficients run past the end of a block") }
            let z = zigzag[k]
            coef[z] = Int(Int16(truncatingIfNeeded: extend(r.bits(size), size))) * q[z]
            k += 1
        }
    }

    // Constants of the islow IDCT: round(x · 2^13).
    static let f0298 = 2446, f0390 = 3196, f0541 = 4433, f0765 = 6270, f0899 = 7373, f1175 = 9633
    static let f1501 = 12299, f1847 = 15137, f1961 = 16069, f2053 = 16819, f2562 = 20995, f3072 = 25172

    /// One 1-D 8-point inverse DCT (even/odd split); `shift` is the descale of this pass.
    @inline(__always) static func idct1D(_ i0: Int, _ i1: Int, _ i2: Int, _ i3: Int, _ i4: Int, _ i5: Int, _ i6: Int, _ i7: Int,
                                         shift: Int, bias: Int, _ out: (Int, Int) -> Void) {
        // Even part.
        var z1 = (i2 + i6) * f0541
        let t2 = z1 - i6 * f1847
        let t3 = z1 + i2 * f0765
        let t0 = (i0 + i4) << 13
        let t1 = (i0 - i4) << 13
        let t10 = t0 + t3, t13 = t0 - t3, t11 = t1 + t2, t12 = t1 - t2
        // Odd part.
        var o0 = i7, o1 = i5, o2 = i3, o3 = i1
        z1 = o0 + o3
        var z2 = o1 + o2
        var z3 = o0 + o2
        var z4 = o1 + o3
        let z5 = (z3 + z4) * f1175
        o0 *= f0298; o1 *= f2053; o2 *= f3072; o3 *= f1501
        z1 *= -f0899; z2 *= -f2562; z3 *= -f1961; z4 *= -f0390
        z3 += z5; z4 += z5
        o0 += z1 + z3; o1 += z2 + z4; o2 += z2 + z3; o3 += z1 + z4
        let round = 1 << (shift - 1)
        out(0, (t10 + o3 + round + bias) >> shift); out(7, (t10 - o3 + round + bias) >> shift)
        out(1, (t11 + o2 + round + bias) >> shift); out(6, (t11 - o2 + round + bias) >> shift)
        out(2, (t12 + o1 + round + bias) >> shift); out(5, (t12 - o1 + round + bias) >> shift)
        out(3, (t13 + o0 + round + bias) >> shift); out(4, (t13 - o0 + round + bias) >> shift)
    }

    static func idctIslow(_ c: [Int], _ out: inout [UInt8]) {
        var ws = [Int](repeating: 0, count: 64)
        // Pass 1: columns, keep 2 extra fraction bits.
        for x in 0..<8 {
            if c[8 + x] == 0 && c[16 + x] == 0 && c[24 + x] == 0 && c[32 + x] == 0 && c[40 + x] == 0 && c[48 + x] == 0 && c[56 + x] == 0 {
                let dcv = c[x] << 2
                for y in 0..<8 { ws[y * 8 + x] = dcv }
                continue
            }
            idct1D(c[x], c[8 + x], c[16 + x], c[24 + x], c[32 + x], c[40 + x], c[48 + x], c[56 + x], shift: 11, bias: 0) { y, v in
                ws[y * 8 + x] = v
            }
        }
        // Pass 2: rows, remove the 2 bits and the 8× scale (3 bits), add 128, clamp.
        for y in 0..<8 {
            let r = y * 8
            idct1D(ws[r], ws[r + 1], ws[r + 2], ws[r + 3], ws[r + 4], ws[r + 5], ws[r + 6], ws[r + 7], shift: 18, bias: 0) { x, v in
                out[r + x] = UInt8(clamping: v + 128)
            }
        }
    }

    // MARK: - Upsampling and colour conversion

    /// Upsamples a component plane to full resolution (width × height).
    static func upsample(_ c: Component, hmax: Int, vmax: Int, width: Int, height: Int) -> [UInt8] {
        let stride = c.bw * 8
        let cw = c.width, ch = c.height
        let fx = hmax / c.h, fy = vmax / c.v
        var out = [UInt8](repeating: 0, count: width * height)
        @inline(__always) func at(_ x: Int, _ y: Int) -> Int { Int(c.plane[min(y, ch - 1) * stride + min(x, cw - 1)]) }
        if fx == 1 && fy == 1 && hmax % c.h == 0 {
            for y in 0..<height { for x in 0..<width { out[y * width + x] = UInt8(at(x, y)) } }
        } else if fx == 2 && fy == 1 && hmax == 2 * c.h && vmax == c.v {
            // Triangle filter horizontally: 3/4 nearer + 1/4 farther sample, alternating rounding.
            for y in 0..<height {
                for x in 0..<width {
                    let i = x >> 1
                    let v: Int
                    if x & 1 == 0 { v = i == 0 ? at(0, y) : (3 * at(i, y) + at(i - 1, y) + 1) >> 2 }
                    else { v = i == cw - 1 ? at(i, y) : (3 * at(i, y) + at(i + 1, y) + 2) >> 2 }
                    out[y * width + x] = UInt8(v)
                }
            }
        } else if fx == 1 && fy == 2 && vmax == 2 * c.v && hmax == c.h {
            for y in 0..<height {
                let j = y >> 1
                let nb = y & 1 == 0 ? max(j - 1, 0) : min(j + 1, ch - 1)
                let bias = y & 1 == 0 ? 1 : 2
                for x in 0..<width { out[y * width + x] = UInt8((3 * at(x, j) + at(x, nb) + bias) >> 2) }
            }
        } else if fx == 2 && fy == 2 && hmax == 2 * c.h && vmax == 2 * c.v {
            var colsum = [Int](repeating: 0, count: cw)
            for y in 0..<height {
                let j = y >> 1
                let nb = y & 1 == 0 ? max(j - 1, 0) : min(j + 1, ch - 1)
                for i in 0..<cw { colsum[i] = 3 * at(i, j) + at(i, nb) }
                for x in 0..<width {
                    let i = x >> 1
                    let v: Int
                    if cw == 1 { v = (colsum[0] * 4 + (x & 1 == 0 ? 8 : 7)) >> 4 }
                    else if x & 1 == 0 { v = i == 0 ? (colsum[0] * 4 + 8) >> 4 : (3 * colsum[i] + colsum[i - 1] + 8) >> 4 }
                    else { v = i == cw - 1 ? (colsum[i] * 4 + 7) >> 4 : (3 * colsum[i] + colsum[i + 1] + 7) >> 4 }
                    out[y * width + x] = UInt8(v)
                }
            }
        } else {
            // Other ratios: replicate (box), like libjpeg's generic upsampler.
            for y in 0..<height {
                for x in 0..<width { out[y * width + x] = UInt8(at(x * c.h / hmax, y * c.v / vmax)) }
            }
        }
        return out
    }

    static func finish(_ comps: [Component], width: Int, height: Int, hmax: Int, vmax: Int, adobe: Int?) throws -> RGBImage {
        guard !comps.isEmpty else { throw MM1Error("JPEG has no frame header") }
        var out = [UInt8](repeating: 0, count: width * height * 3)
        if comps.count == 1 {
            let p = upsample(comps[0], hmax: 1, vmax: 1, width: width, height: height)
            for i in 0..<(width * height) { out[3 * i] = p[i]; out[3 * i + 1] = p[i]; out[3 * i + 2] = p[i] }
            return RGBImage(width: width, height: height, pixels: out)
        }
        let planes = comps.map { upsample($0, hmax: hmax, vmax: vmax, width: width, height: height) }
        let isRGB = adobe == 0 || (comps[0].id == 82 && comps[1].id == 71 && comps[2].id == 66)
        for i in 0..<(width * height) {
            let y = Int(planes[0][i]), cb = Int(planes[1][i]) - 128, cr = Int(planes[2][i]) - 128
            if isRGB { out[3 * i] = UInt8(y); out[3 * i + 1] = UInt8(cb + 128); out[3 * i + 2] = UInt8(cr + 128); continue }
            // 16-bit fixed point: 1.402, 0.34414, 0.71414, 1.772 scaled by 65536 and rounded.
            let r = y + ((91881 * cr + 32768) >> 16)
            let g = y + ((-22554 * cb - 46802 * cr + 32768) >> 16)
            let b = y + ((116130 * cb + 32768) >> 16)
            out[3 * i] = UInt8(clamping: r); out[3 * i + 1] = UInt8(clamping: g); out[3 * i + 2] = UInt8(clamping: b)
        }
        return RGBImage(width: width, height: height, pixels: out)
    }
}
