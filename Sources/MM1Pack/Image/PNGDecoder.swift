import Foundation

/// PNG decoder (ISO/IEC 15948 / W3C PNG 2nd ed.) producing 8-bit RGB the way Pillow's
/// `Image.open(f).convert("RGB")` does.
///
/// Supported: every colour type (0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA) with every bit
/// depth the spec allows (1, 2, 4, 8, 16), Adam7 interlacing, all five filters. All chunk CRCs are
/// checked; unknown critical chunks are refused, ancillary chunks are skipped.
///
/// Conversion to RGB (matching Pillow):
/// - alpha (colour types 4 and 6, and tRNS) is dropped without compositing;
/// - gray of 1/2/4 bits is scaled to 0...255 (×255, ×85, ×17);
/// - 16-bit RGB, RGBA and gray+alpha keep the most significant byte of each sample;
/// - 16-bit gray (Pillow mode "I;16") is *clipped*: values above 255 become 255, others keep
///   their value. This is what Pillow's I;16 → RGB conversion does;
/// - palette indices outside the PLTE entries give black (0, 0, 0).
public enum PNGDecoder {
    public static let signature: [UInt8] = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]

    struct Header {
        var width = 0, height = 0, bitDepth = 0, colorType = 0, interlace = 0
        var channels: Int {
            switch colorType { case 0: return 1; case 2: return 3; case 3: return 1; case 4: return 2; default: return 4 }
        }
        var bitsPerPixel: Int { channels * bitDepth }
        func rowBytes(_ w: Int) -> Int { (w * bitsPerPixel + 7) / 8 }
    }

    /// Adam7 passes: (x start, y start, x step, y step).
    static let adam7: [(Int, Int, Int, Int)] = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                                                 (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]

    public static func decode(_ bytes: [UInt8], limits: ImageDecodeLimits = ImageDecodeLimits()) throws -> RGBImage {
        guard bytes.starts(with: signature) else { throw MM1Error("is not a PNG file (bad signature)") }
        var pos = 8
        var header: Header?
        var palette: [UInt8]?
        var idat: [UInt8] = []
        var sawIDAT = false, idatEnded = false, sawIEND = false
        while !sawIEND {
            guard pos + 12 <= bytes.count else { throw MM1Error("PNG is truncated (chunk header at byte \(pos))") }
            let length = Int(be32(bytes, pos))
            guard length <= 0x7fff_ffff else { throw MM1Error("PNG chunk length \(length) at byte \(pos) exceeds 2^31-1") }
            let typeBytes = Array(bytes[(pos + 4)..<(pos + 8)])
            guard typeBytes.allSatisfy({ ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) }) else {
                throw MM1Error("PNG chunk at byte \(pos) has an invalid type")
            }
            let type = String(decoding: typeBytes, as: UTF8.self)
            guard length <= bytes.count - pos - 12 else {
                throw MM1Error("PNG is truncated: chunk \(type) at byte \(pos) declares \(length) bytes")
            }
            let dataStart = pos + 8, dataEnd = dataStart + length
            let storedCRC = be32(bytes, dataEnd)
            let crc = CRC32.compute(bytes[(pos + 4)..<dataEnd])
            guard crc == storedCRC else {
                throw MM1Error("PNG chunk \(type) at byte \(pos) has a bad CRC (stored \(Inflate.hex(storedCRC)), computed \(Inflate.hex(crc)))")
            }
            let data = bytes[dataStart..<dataEnd]
            if header == nil && type != "IHDR" { throw MM1Error("PNG does not start with an IHDR chunk") }
            if sawIDAT && type != "IDAT" { idatEnded = true }
            switch type {
            case "IHDR":
                guard header == nil else { throw MM1Error("PNG has more than one IHDR chunk") }
                guard length == 13 else { throw MM1Error("PNG IHDR has length \(length), not 13") }
                header = try parseHeader(Array(data), limits: limits)
            case "PLTE":
                guard palette == nil else { throw MM1Error("PNG has more than one PLTE chunk") }
                guard !sawIDAT else { throw MM1Error("PNG PLTE chunk comes after image data") }
                guard length % 3 == 0, length >= 3, length <= 768 else {
                    throw MM1Error("PNG PLTE chunk has length \(length) (must be 3...768 and a multiple of 3)")
                }
                palette = Array(data)
            case "IDAT":
                guard !idatEnded else { throw MM1Error("PNG IDAT chunks are not consecutive") }
                sawIDAT = true
                idat.append(contentsOf: data)
            case "IEND":
                sawIEND = true
            default:
                if typeBytes[0] & 0x20 == 0 {
                    throw MM1Error("PNG has unknown critical chunk \(type)")
                }
            }
            pos = dataEnd + 4
        }
        guard let h = header else { throw MM1Error("PNG has no IHDR chunk") }
        guard sawIDAT else { throw MM1Error("PNG has no IDAT chunk") }
        if h.colorType == 3 && palette == nil { throw MM1Error("PNG palette image has no PLTE chunk") }

        // Exact size of the filtered data, from the header.
        var expected = 0
        if h.interlace == 0 {
            expected = (h.rowBytes(h.width) + 1) * h.height
        } else {
            for (x0, y0, dx, dy) in adam7 {
                let pw = (h.width - x0 + dx - 1) / dx, ph = (h.height - y0 + dy - 1) / dy
                if pw > 0 && ph > 0 { expected += (h.rowBytes(pw) + 1) * ph }
            }
        }
        let raw = try Inflate.zlibDecompress(idat, maxOutput: expected, expectedSize: expected)
        return try toRGB(raw, h, palette: palette ?? [])
    }

    static func be32(_ b: [UInt8], _ i: Int) -> UInt32 {
        UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
    }

    static func parseHeader(_ d: [UInt8], limits: ImageDecodeLimits) throws -> Header {
        var h = Header()
        let w = be32(d, 0), ht = be32(d, 4)
        guard w > 0, ht > 0, w <= 0x7fff_ffff, ht <= 0x7fff_ffff else {
            throw MM1Error("PNG IHDR declares an invalid size \(w)×\(ht)")
        }
        h.width = Int(w); h.height = Int(ht)
        h.bitDepth = Int(d[8]); h.colorType = Int(d[9]); h.interlace = Int(d[12])
        let allowed: [Int: [Int]] = [0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16]]
        guard let depths = allowed[h.colorType] else { throw MM1Error("PNG colour type \(h.colorType) is invalid") }
        guard depths.contains(h.bitDepth) else {
            throw MM1Error("PNG bit depth \(h.bitDepth) is invalid for colour type \(h.colorType)")
        }
        guard d[10] == 0 else { throw MM1Error("PNG compression method \(d[10]) is unknown") }
        guard d[11] == 0 else { throw MM1Error("PNG filter method \(d[11]) is unknown") }
        guard h.interlace <= 1 else { throw MM1Error("PNG interlace method \(h.interlace) is unknown") }
        try limits.check(width: h.width, height: h.height, format: "PNG")
        return h
    }

    /// Reverses the scanline filters of one (sub-)image in place. `start` is the offset of its
    /// first filter byte; returns the offset just after it.
    static func unfilter(_ buf: inout [UInt8], start: Int, rowBytes: Int, rows: Int, bpp: Int) throws -> Int {
        var p = start
        for y in 0..<rows {
            let f = buf[p]
            let row = p + 1
            let prev = y == 0 ? -1 : row - rowBytes - 1
            try buf.withUnsafeMutableBufferPointer { b in
                switch f {
                case 0: break
                case 1:
                    if rowBytes > bpp { for i in bpp..<rowBytes { b[row + i] = b[row + i] &+ b[row + i - bpp] } }
                case 2:
                    if prev >= 0 { for i in 0..<rowBytes { b[row + i] = b[row + i] &+ b[prev + i] } }
                case 3:
                    for i in 0..<rowBytes {
                        let a = i >= bpp ? Int(b[row + i - bpp]) : 0
                        let up = prev >= 0 ? Int(b[prev + i]) : 0
                        b[row + i] = b[row + i] &+ UInt8((a + up) >> 1)
                    }
                case 4:
                    for i in 0..<rowBytes {
                        let a = i >= bpp ? Int(b[row + i - bpp]) : 0
                        let up = prev >= 0 ? Int(b[prev + i]) : 0
                        let c = (i >= bpp && prev >= 0) ? Int(b[prev + i - bpp]) : 0
                        let pp = a + up - c
                        let pa = abs(pp - a), pb = abs(pp - up), pc = abs(pp - c)
                        let pred = (pa <= pb && pa <= pc) ? a : (pb <= pc ? up : c)
                        b[row + i] = b[row + i] &+ UInt8(pred)
                    }
                default:
                    throw MM1Error("PNG scanline \(y) uses unknown filter type \(f)")
                }
            }
            p = row + rowBytes
        }
        return p
    }

    static func toRGB(_ rawIn: [UInt8], _ h: Header, palette: [UInt8]) throws -> RGBImage {
        var raw = rawIn
        let bpp = max(1, h.bitsPerPixel / 8)
        var out = [UInt8](repeating: 0, count: h.width * h.height * 3)
        var lut = [UInt8](repeating: 0, count: 256 * 3)  // palette lookup, black beyond PLTE
        for i in 0..<(palette.count / 3) { for c in 0..<3 { lut[i * 3 + c] = palette[i * 3 + c] } }
        let passes: [(Int, Int, Int, Int)] = h.interlace == 0 ? [(0, 0, 1, 1)] : adam7
        var p = 0
        for (x0, y0, dx, dy) in passes {
            let pw = (h.width - x0 + dx - 1) / dx, ph = (h.height - y0 + dy - 1) / dy
            guard pw > 0 && ph > 0 else { continue }
            let rb = h.rowBytes(pw)
            let start = p
            p = try unfilter(&raw, start: start, rowBytes: rb, rows: ph, bpp: bpp)
            raw.withUnsafeBufferPointer { r in
                out.withUnsafeMutableBufferPointer { o in
                    for py in 0..<ph {
                        let row = start + py * (rb + 1) + 1
                        let y = y0 + py * dy
                        for px in 0..<pw {
                            let x = x0 + px * dx
                            let oi = (y * h.width + x) * 3
                            var rr: UInt8 = 0, gg: UInt8 = 0, bb: UInt8 = 0
                            switch (h.colorType, h.bitDepth) {
                            case (0, 16):
                                let v = Int(r[row + 2 * px]) << 8 | Int(r[row + 2 * px + 1])
                                rr = UInt8(min(v, 255)); gg = rr; bb = rr
                            case (0, 8):
                                rr = r[row + px]; gg = rr; bb = rr
                            case (0, let d):
                                let v = sample(r, row, px, d)
                                rr = UInt8(v * 255 / ((1 << d) - 1)); gg = rr; bb = rr
                            case (3, let d):
                                let v = d == 8 ? Int(r[row + px]) : sample(r, row, px, d)
                                rr = lut[v * 3]; gg = lut[v * 3 + 1]; bb = lut[v * 3 + 2]
                            case (2, 8), (6, 8):
                                let s = row + px * h.channels
                                rr = r[s]; gg = r[s + 1]; bb = r[s + 2]
                            case (2, 16), (6, 16):
                                let s = row + px * h.channels * 2
                                rr = r[s]; gg = r[s + 2]; bb = r[s + 4]
                            case (4, 8):
                                rr = r[row + px * 2]; gg = rr; bb = rr
                            default: // (4, 16)
                                rr = r[row + px * 4]; gg = rr; bb = rr
                            }
                            o[oi] = rr; o[oi + 1] = gg; o[oi + 2] = bb
                        }
                    }
                }
            }
        }
        return RGBImage(width: h.width, height: h.height, pixels: out)
    }

    /// Sample `i` of a row packed at `d` (1, 2 or 4) bits per sample, most significant bits first.
    @inline(__always) static func sample(_ r: UnsafeBufferPointer<UInt8>, _ row: Int, _ i: Int, _ d: Int) -> Int {
        let bit = i * d
        let byte = Int(r[row + (bit >> 3)])
        return (byte >> (8 - d - (bit & 7))) & ((1 << d) - 1)
    }
}

/// CRC-32 (ISO 3309 / ITU-T V.42, the one PNG and zlib's crc32 use).
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xedb8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func compute<C: Collection>(_ data: C) -> UInt32 where C.Element == UInt8 {
        var c: UInt32 = 0xffff_ffff
        for b in data { c = table[Int((c ^ UInt32(b)) & 0xff)] ^ (c >> 8) }
        return c ^ 0xffff_ffff
    }
}
