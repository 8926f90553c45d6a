import Foundation
import XCTest
@testable import MM1Pack

/// A minimal PNG encoder for tests: any colour type / bit depth, optional Adam7, filter type
/// chosen per row (cycling through all five), zlib with stored blocks.
enum TestPNG {
    static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let t = Array(type.utf8)
        var out = be32(UInt32(data.count)) + t + data
        out += be32(CRC32.compute(t + data))
        return out
    }

    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }

    static func zlibStored(_ raw: [UInt8], blockSize: Int = 65535) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]
        var i = 0
        repeat {
            let n = min(blockSize, raw.count - i)
            let final: UInt8 = i + n == raw.count ? 1 : 0
            out += [final, UInt8(n & 0xff), UInt8(n >> 8), UInt8(~n & 0xff), UInt8((~n >> 8) & 0xff)]
            out += raw[i..<(i + n)]
            i += n
        } while i < raw.count
        return out + be32(Inflate.adler32(raw))
    }

    static func channels(_ ct: Int) -> Int { [0: 1, 2: 3, 3: 1, 4: 2, 6: 4][ct]! }

    /// `samples[(y*w + x)*ch + c]`, each within the bit depth.
    static func encode(width w: Int, height h: Int, depth: Int, colorType ct: Int, interlace: Bool,
                       samples: [Int], palette: [UInt8]? = nil, blockSize: Int = 65535) -> [UInt8] {
        let ch = channels(ct)
        let bpp = max(1, ch * depth / 8)
        var raw: [UInt8] = []
        let passes: [(Int, Int, Int, Int)] = interlace ? PNGDecoder.adam7 : [(0, 0, 1, 1)]
        var rowCounter = 0
        for (x0, y0, dx, dy) in passes {
            let pw = (w - x0 + dx - 1) / dx, ph = (h - y0 + dy - 1) / dy
            guard pw > 0 && ph > 0 else { continue }
            var prev: [UInt8]? = nil
            for py in 0..<ph {
                let y = y0 + py * dy
                var bits: [Int] = []
                for px in 0..<pw {
                    let x = x0 + px * dx
                    for c in 0..<ch { bits.append(samples[(y * w + x) * ch + c]) }
                }
                var row: [UInt8] = []
                if depth == 16 {
                    for v in bits { row += [UInt8(v >> 8), UInt8(v & 0xff)] }
                } else if depth == 8 {
                    row = bits.map { UInt8($0) }
                } else {
                    row = [UInt8](repeating: 0, count: (bits.count * depth + 7) / 8)
                    for (i, v) in bits.enumerated() {
                        let bit = i * depth
                        row[bit / 8] |= UInt8(v << (8 - depth - bit % 8))
                    }
                }
                let f = rowCounter % 5
                rowCounter += 1
                var filtered = [UInt8](repeating: 0, count: row.count)
                for i in 0..<row.count {
                    let a = i >= bpp ? Int(row[i - bpp]) : 0
                    let b = prev.map { Int($0[i]) } ?? 0
                    let c = (i >= bpp ? prev.map { Int($0[i - bpp]) } : nil) ?? 0
                    var pred = 0
                    switch f {
                    case 1: pred = a
                    case 2: pred = b
                    case 3: pred = (a + b) / 2
                    case 4:
                        let p = a + b - c
                        let pa = abs(p - a), pb = abs(p - b), pc = abs(p - c)
                        pred = pa <= pb && pa <= pc ? a : (pb <= pc ? b : c)
                    default: pred = 0
                    }
                    filtered[i] = UInt8((Int(row[i]) - pred) & 0xff)
                }
                raw.append(UInt8(f)); raw += filtered
                prev = row
            }
        }
        var ihdr = be32(UInt32(w)) + be32(UInt32(h))
        ihdr += [UInt8(depth), UInt8(ct), 0, 0, interlace ? 1 : 0]
        var out = PNGDecoder.signature + chunk("IHDR", ihdr)
        if let palette { out += chunk("PLTE", palette) }
        out += chunk("tEXt", Array("Comment\0test".utf8))
        let z = zlibStored(raw, blockSize: blockSize)
        // Two IDAT chunks to exercise concatenation.
        let half = z.count / 2
        out += chunk("IDAT", Array(z[0..<half])) + chunk("IDAT", Array(z[half...]))
        return out + chunk("IEND", [])
    }

    /// The RGB that Pillow's `.convert("RGB")` gives for these samples (rules in PNGDecoder).
    static func expectedRGB(depth: Int, colorType ct: Int, samples: [Int], palette: [UInt8]?) -> [UInt8] {
        let ch = channels(ct)
        var out: [UInt8] = []
        func gray(_ v: Int, clip16: Bool) -> UInt8 {
            switch depth {
            case 16: return clip16 ? UInt8(min(v, 255)) : UInt8(v >> 8)
            case 8: return UInt8(v)
            default: return UInt8(v * 255 / ((1 << depth) - 1))
            }
        }
        for p in 0..<(samples.count / ch) {
            let s = Array(samples[(p * ch)..<(p * ch + ch)])
            switch ct {
            case 0: let g = gray(s[0], clip16: true); out += [g, g, g]
            case 4: let g = gray(s[0], clip16: false); out += [g, g, g]
            case 3:
                let pal = palette ?? []
                if s[0] * 3 + 2 < pal.count { out += pal[(s[0] * 3)...(s[0] * 3 + 2)] } else { out += [0, 0, 0] }
            default: out += s[0..<3].map { depth == 16 ? UInt8($0 >> 8) : UInt8($0) }
            }
        }
        return out
    }
}


final class ImageTests: XCTestCase {
    static let dir = TestPaths.fixture("images")

    static func loadJSON(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + name))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    // MARK: - Inflate

    func testInflateFixedHuffman() throws {
        // zlib.compress(b'hello hello hello hello, MM1.5 splits images!', 9): one fixed-Huffman block.
        let z: [UInt8] = [120, 218, 203, 72, 205, 201, 201, 87, 200, 64, 39, 117, 20, 124, 125, 13, 245, 76, 21, 138,
                          11, 114, 50, 75, 138, 21, 50, 115, 19, 211, 83, 139, 21, 1, 111, 95, 15, 161]
        let out = try Inflate.zlibDecompress(z, maxOutput: 1000)
        XCTAssertEqual(String(decoding: out, as: UTF8.self), "hello hello hello hello, MM1.5 splits images!")
        XCTAssertThrowsError(try Inflate.zlibDecompress(z, maxOutput: 10)) { e in
            XCTAssertTrue("\(e)".contains("limit"), "\(e)")
        }
        var bad = z; bad[bad.count - 1] ^= 1
        XCTAssertThrowsError(try Inflate.zlibDecompress(bad, maxOutput: 1000)) { e in
            XCTAssertTrue("\(e)".contains("Adler-32"), "\(e)")
        }
    }

    func testInflateStoredMultiBlock() throws {
        var g = SplitMix64(state: 7)
        let raw = (0..<200_000).map { _ in UInt8(g.int(256)) }
        let z = TestPNG.zlibStored(raw, blockSize: 65535)
        XCTAssertEqual(try Inflate.zlibDecompress(z, maxOutput: raw.count, expectedSize: raw.count), raw)
    }

    // MARK: - PNG decoding

    func testAllColorTypesDepthsInterlace() throws {
        let combos: [(Int, [Int])] = [(0, [1, 2, 4, 8, 16]), (2, [8, 16]), (3, [1, 2, 4, 8]), (4, [8, 16]), (6, [8, 16])]
        let sizes = [(1, 1), (13, 7), (5, 17), (33, 9)]
        var g = SplitMix64(state: 42)
        var count = 0
        for (ct, depths) in combos {
            for depth in depths {
                for (w, h) in sizes {
                    for interlace in [false, true] {
                        let ch = TestPNG.channels(ct)
                        var palette: [UInt8]? = nil
                        var maxV = (1 << depth) - 1
                        if ct == 3 {
                            // Fewer entries than indices: out-of-range indices must give black.
                            let n = max(1, (1 << depth) - 1)
                            palette = (0..<(n * 3)).map { _ in UInt8(g.int(256)) }
                            maxV = (1 << depth) - 1
                        }
                        var samples: [Int] = []
                        for _ in 0..<(w * h * ch) {
                            // For 16-bit gray, mix small values (kept) and large ones (clipped).
                            if depth == 16 && g.int(3) == 0 { samples.append(g.int(300)) } else { samples.append(g.int(maxV + 1)) }
                        }
                        let png = TestPNG.encode(width: w, height: h, depth: depth, colorType: ct, interlace: interlace,
                                                 samples: samples, palette: palette, blockSize: 97)
                        let img = try ImageDecoder.decode(bytes: png, file: "gen.png")
                        XCTAssertEqual(img.width, w); XCTAssertEqual(img.height, h)
                        let want = TestPNG.expectedRGB(depth: depth, colorType: ct, samples: samples, palette: palette)
                        XCTAssertEqual(img.pixels, want, "ct \(ct) depth \(depth) \(w)x\(h) interlace \(interlace)")
                        count += 1
                    }
                }
            }
        }
        XCTAssertEqual(count, 15 * 4 * 2)
    }

    func testPILRulesSpotValues() throws {
        // Values checked once against Pillow 13: Image.open(...).convert("RGB").
        // 16-bit RGB keeps the high byte.
        let rgb16 = TestPNG.encode(width: 2, height: 1, depth: 16, colorType: 2, interlace: false,
                                   samples: [0x1234, 0xff01, 0x00ff, 0x8080, 0x7fff, 0x0100])
        XCTAssertEqual(try PNGDecoder.decode(rgb16).pixels, [18, 255, 0, 128, 127, 1])
        // 16-bit gray clips to 255.
        let g16 = TestPNG.encode(width: 4, height: 1, depth: 16, colorType: 0, interlace: false, samples: [100, 7, 254, 300])
        XCTAssertEqual(try PNGDecoder.decode(g16).pixels, [100, 100, 100, 7, 7, 7, 254, 254, 254, 255, 255, 255])
        // 16-bit gray+alpha keeps the high byte of gray.
        let la16 = TestPNG.encode(width: 2, height: 1, depth: 16, colorType: 4, interlace: false, samples: [0x1234, 0xff01, 0x00ff, 0x8080])
        XCTAssertEqual(try PNGDecoder.decode(la16).pixels, [18, 18, 18, 0, 0, 0])
        // 2-bit palette with 2 entries; indices 2 and 3 are black.
        let p2 = TestPNG.encode(width: 4, height: 1, depth: 2, colorType: 3, interlace: false, samples: [0, 1, 2, 3],
                                palette: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(try PNGDecoder.decode(p2).pixels, [1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0])
        // 2-bit gray scales by 85.
        let g2 = TestPNG.encode(width: 4, height: 1, depth: 2, colorType: 0, interlace: false, samples: [0, 1, 2, 3])
        XCTAssertEqual(try PNGDecoder.decode(g2).pixels, [0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255])
    }

    func testFixturePNGsDecode() throws {
        let meta = try Self.loadJSON("preprocess.json")
        let images = meta["images"] as! [String: Any]
        XCTAssertFalse(images.isEmpty)
        for (name, v) in images {
            let info = v as! [String: Any]
            let img = try ImageDecoder.decode(path: Self.dir + "/" + (info["file"] as! String))
            XCTAssertEqual(img.width, info["width"] as? Int, name)
            XCTAssertEqual(img.height, info["height"] as? Int, name)
        }
    }

    // MARK: - Corrupt input

    func testCorruptInputs() throws {
        let path = Self.dir + "/a_37x23.png"
        let good = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        // Truncated at every length.
        for n in stride(from: 0, to: good.count, by: 1) {
            XCTAssertThrowsError(try ImageDecoder.decode(bytes: Array(good[0..<n]), file: "t.png")) { e in
                XCTAssertTrue("\(e)".hasPrefix("t.png: "), "\(e)")
            }
        }
        // Bad CRC in IHDR.
        var bad = good; bad[29] ^= 0xff
        XCTAssertThrowsError(try ImageDecoder.decode(bytes: bad, file: "crc.png")) { e in
            XCTAssertTrue("\(e)".contains("crc.png") && "\(e)".contains("CRC"), "\(e)")
        }
        // Huge declared size with a valid CRC: refused from the header.
        var ihdr = TestPNG.be32(100_000) + TestPNG.be32(100_000) + [8, 2, 0, 0, 0]
        var bomb = PNGDecoder.signature + TestPNG.chunk("IHDR", ihdr) + TestPNG.chunk("IDAT", [0x78, 0x01]) + TestPNG.chunk("IEND", [])
        XCTAssertThrowsError(try ImageDecoder.decode(bytes: bomb, file: "bomb.png")) { e in
            XCTAssertTrue("\(e)".contains("bomb.png") && "\(e)".contains("limit"), "\(e)")
        }
        // Configurable limit.
        let small = try ImageDecoder.decode(path: path)
        XCTAssertThrowsError(try ImageDecoder.decode(path: path, limits: ImageDecodeLimits(maxPixels: 37 * 23 - 1)))
        XCTAssertEqual(try ImageDecoder.decode(path: path, limits: ImageDecodeLimits(maxPixels: 37 * 23)), small)
        // Bad bit depth.
        ihdr = TestPNG.be32(4) + TestPNG.be32(4) + [3, 2, 0, 0, 0]
        bomb = PNGDecoder.signature + TestPNG.chunk("IHDR", ihdr) + TestPNG.chunk("IEND", [])
        XCTAssertThrowsError(try ImageDecoder.decode(bytes: bomb, file: "x.png"))
        // A zlib bomb: small image, far more data than the header allows.
        ihdr = TestPNG.be32(2) + TestPNG.be32(2) + [8, 0, 0, 0, 0]
        let z = TestPNG.zlibStored([UInt8](repeating: 0, count: 100_000))
        bomb = PNGDecoder.signature + TestPNG.chunk("IHDR", ihdr) + TestPNG.chunk("IDAT", z) + TestPNG.chunk("IEND", [])
        XCTAssertThrowsError(try ImageDecoder.decode(bytes: bomb, file: "z.png"))
        // Not an image.
        XCTAssertThrowsError(try ImageDecoder.decode(bytes: Array("hello".utf8), file: "n.txt")) { e in
            XCTAssertTrue("\(e)".contains("n.txt"), "\(e)")
        }
    }

    /// Recomputes every chunk CRC so that mutations reach the inflater and the unfilter code.
    static func fixCRCs(_ b: inout [UInt8]) {
        var pos = 8
        while pos + 12 <= b.count {
            let len = Int(PNGDecoder.be32(b, pos))
            guard len <= b.count - pos - 12 else { return }
            let crc = CRC32.compute(b[(pos + 4)..<(pos + 8 + len)])
            b.replaceSubrange((pos + 8 + len)..<(pos + 12 + len), with: TestPNG.be32(crc))
            pos += 12 + len
        }
    }

    func testRandomMutationsNeverCrash() throws {
        var seeds: [[UInt8]] = []
        for f in try FileManager.default.contentsOfDirectory(atPath: Self.dir).sorted() where f.hasSuffix(".png") && !f.contains("crop336") {
            seeds.append([UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.dir + "/" + f))))
        }
        seeds.append(TestPNG.encode(width: 9, height: 7, depth: 4, colorType: 3, interlace: true,
                                    samples: (0..<63).map { $0 % 16 }, palette: (0..<48).map { UInt8($0 * 5) }))
        seeds.append(TestPNG.encode(width: 6, height: 5, depth: 16, colorType: 6, interlace: true,
                                    samples: (0..<120).map { $0 * 517 }))
        var g = SplitMix64(state: 2024)
        var decoded = 0, thrown = 0
        for iter in 0..<3000 {
            var b = seeds[iter % seeds.count]
            let edits = 1 + g.int(4)
            for _ in 0..<edits {
                switch g.int(4) {
                case 0: b[g.int(b.count)] = UInt8(g.int(256))
                case 1: b[g.int(b.count)] ^= UInt8(1 << g.int(8))
                case 2: b.removeSubrange(g.int(b.count)..<b.count)
                default:
                    if b.count > 8 { let i = 8 + g.int(b.count - 8); b.insert(UInt8(g.int(256)), at: i) }
                }
                if b.isEmpty { b = [0] }
            }
            if iter % 2 == 0 { Self.fixCRCs(&b) }
            do {
                let img = try ImageDecoder.decode(bytes: b, file: "m.png", limits: ImageDecodeLimits(maxPixels: 1 << 20))
                XCTAssertEqual(img.pixels.count, img.width * img.height * 3)
                decoded += 1
            } catch let e as MM1Error {
                XCTAssertEqual(e.file, "m.png")
                thrown += 1
            }
        }
        XCTAssertEqual(decoded + thrown, 3000)
        print("mutations: \(decoded) decoded, \(thrown) refused")
    }

    /// Mutates the *decompressed* scanline data (and sometimes the IHDR fields) and re-wraps it
    /// with valid CRCs and Adler-32, so the mutations reach the unfilter and pixel code.
    func testRawStreamMutationsNeverCrash() throws {
        var seeds: [[UInt8]] = []
        for (ct, depth) in [(0, 1), (0, 16), (2, 8), (2, 16), (3, 2), (3, 8), (4, 8), (6, 16)] {
            for interlace in [false, true] {
                let ch = TestPNG.channels(ct)
                let n = 11 * 7 * ch
                seeds.append(TestPNG.encode(width: 11, height: 7, depth: depth, colorType: ct, interlace: interlace,
                                            samples: (0..<n).map { ($0 * 37) % (1 << depth) },
                                            palette: ct == 3 ? (0..<30).map { UInt8($0 * 8) } : nil))
            }
        }
        func parts(_ b: [UInt8]) throws -> (ihdr: [UInt8], plte: [UInt8]?, raw: [UInt8]) {
            var pos = 8, ihdr: [UInt8] = [], plte: [UInt8]? = nil, z: [UInt8] = []
            while pos + 12 <= b.count {
                let len = Int(PNGDecoder.be32(b, pos))
                let type = String(decoding: b[(pos + 4)..<(pos + 8)], as: UTF8.self)
                let d = Array(b[(pos + 8)..<(pos + 8 + len)])
                if type == "IHDR" { ihdr = d } else if type == "PLTE" { plte = d } else if type == "IDAT" { z += d }
                pos += 12 + len
            }
            return (ihdr, plte, try Inflate.zlibDecompress(z, maxOutput: 1 << 20))
        }
        let split = try seeds.map(parts)
        var g = SplitMix64(state: 77)
        var decoded = 0, thrown = 0
        for iter in 0..<3000 {
            var (ihdr, plte, raw) = split[iter % split.count]
            for _ in 0..<(1 + g.int(3)) {
                switch g.int(6) {
                case 0, 1: if !raw.isEmpty { raw[g.int(raw.count)] = UInt8(g.int(256)) }
                case 2: if !raw.isEmpty { raw[g.int(raw.count)] = UInt8(g.int(6)) }  // often a filter byte
                case 3: raw.removeLast(g.int(min(raw.count, 20)) )
                case 4: raw += (0..<g.int(20)).map { _ in UInt8(g.int(256)) }
                default: ihdr[[3, 7, 8, 9, 12][g.int(5)]] = UInt8([0, 1, 2, 3, 4, 6, 8, 16, 255][g.int(9)])
                }
            }
            var b = PNGDecoder.signature + TestPNG.chunk("IHDR", ihdr)
            if let plte { b += TestPNG.chunk("PLTE", plte) }
            b += TestPNG.chunk("IDAT", TestPNG.zlibStored(raw)) + TestPNG.chunk("IEND", [])
            do {
                let img = try ImageDecoder.decode(bytes: b, file: "r.png", limits: ImageDecodeLimits(maxPixels: 1 << 20))
                XCTAssertEqual(img.pixels.count, img.width * img.height * 3)
                decoded += 1
            } catch let e as MM1Error {
                XCTAssertEqual(e.file, "r.png")
                thrown += 1
            }
        }
        XCTAssertGreaterThan(decoded, 300)
        print("raw-stream mutations: \(decoded) decoded, \(thrown) refused")
    }

    /// Timing, only when MM1_IMAGE_PERF names a directory with big.png and big.jpg.
    func testDecodeSpeed() throws {
        guard let dir = ProcessInfo.processInfo.environment["MM1_IMAGE_PERF"] else { throw XCTSkip("set MM1_IMAGE_PERF") }
        for f in ["big.png", "big.jpg"] {
            let t0 = Date()
            let img = try ImageDecoder.decode(path: dir + "/" + f)
            let t1 = Date()
            if let ref = FileManager.default.contents(atPath: dir + "/" + f + ".rgb") {
                let differing = zip([UInt8](ref), img.pixels).filter { $0 != $1 }.count
                XCTAssertEqual(differing, 0, "\(f): \(differing) samples differ from Pillow")
            }
            let p = ImagePreprocessor(imageSize: 378, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], resize: .shortestEdgeCrop)
            _ = p(img)
            let t2 = Date()
            _ = try ImageSplitting.split(img, tileSize: 672, nMin: 4, nMax: 16)
            let t3 = Date()
            print("\(f) \(img.width)x\(img.height): decode \(t1.timeIntervalSince(t0))s, preprocess \(t2.timeIntervalSince(t1))s, split \(t3.timeIntervalSince(t2))s")
        }
    }

    // MARK: - Resize and preprocessing

    func testPreprocessMatchesCLIPImageProcessor() throws {
        let meta = try Self.loadJSON("preprocess.json")
        let cases = meta["cases"] as! [String: Any]
        let images = meta["images"] as! [String: Any]
        var checked = 0
        for (name, v) in images.sorted(by: { $0.key < $1.key }) {
            let info = v as! [String: Any]
            let img = try ImageDecoder.decode(path: Self.dir + "/" + (info["file"] as! String))
            let outputs = info["outputs"] as! [String: Any]
            for (caseName, ov) in outputs.sorted(by: { $0.key < $1.key }) {
                let o = ov as! [String: Any]
                let c = cases[caseName] as! [String: Any]
                let pc = c["processor_config"] as! [String: Any]
                let shape = o["shape"] as! [Int]
                let size = shape[1]
                let proc = ImagePreprocessor(imageSize: size,
                                             mean: (pc["image_mean"] as! [NSNumber]).map { $0.floatValue },
                                             std: (pc["image_std"] as! [NSNumber]).map { $0.floatValue },
                                             resize: ImagePreprocessor.ResizeMode(rawValue: c["resize"] as! String)!,
                                             rescaleFactor: (pc["rescale_factor"] as! NSNumber).floatValue)
                let resized = proc.resized(img)
                if let npy = o["npy"] as? String {
                    let ref = try NPY.read(Self.dir + "/" + npy)
                    XCTAssertEqual(ref.shape, shape)
                    let mine = proc.normalize(resized)
                    var maxLevels: Float = 0
                    for i in 0..<mine.count {
                        let ch = i / (size * size)
                        maxLevels = max(maxLevels, abs(mine[i] - ref.data[i]) * proc.std[ch] / proc.rescaleFactor)
                    }
                    XCTAssertLessThanOrEqual(maxLevels, 1.0, "\(name) \(caseName): \(maxLevels) levels of 255")
                    XCTAssertLessThan(maxLevels, 0.01, "\(name) \(caseName) should match exactly: \(maxLevels)")
                } else if let png = o["png_u8"] as? String {
                    let ref = try ImageDecoder.decode(path: Self.dir + "/" + png)
                    XCTAssertEqual(ref.width, size)
                    var maxDiff = 0
                    for i in 0..<ref.pixels.count { maxDiff = max(maxDiff, abs(Int(ref.pixels[i]) - Int(resized.pixels[i]))) }
                    XCTAssertEqual(maxDiff, 0, "\(name) \(caseName)")
                }
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 10)
    }

    func testShortestEdgeSize() {
        XCTAssertTrue(ImagePreprocessor.shortestEdgeSize(height: 23, width: 37, size: 28) == (28, 45))
        XCTAssertTrue(ImagePreprocessor.shortestEdgeSize(height: 61, width: 45, size: 336) == (455, 336))
        XCTAssertTrue(ImagePreprocessor.shortestEdgeSize(height: 10, width: 10, size: 7) == (7, 7))
    }

    func testPreprocessorJSON() throws {
        let p = try ImagePreprocessor(json: ["image_size": 378, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
                                             "resize": "squash", "rescale_factor": 1.0 / 255])
        XCTAssertEqual(p.resize, .squash)
        let out = p(RGBImage(width: 5, height: 3, fill: (255, 0, 128)))
        XCTAssertEqual(out.count, 3 * 378 * 378)
        XCTAssertEqual(out[0], 2, accuracy: 1e-6)
        XCTAssertEqual(out[378 * 378], -2, accuracy: 1e-6)
        XCTAssertThrowsError(try ImagePreprocessor(json: ["image_size": 378, "resize": "pad"], file: "b.mm1"))
    }

    // MARK: - Dynamic image splitting

    func testGridSelectionFixtures() throws {
        let cases = try Self.loadJSON("grids.json")["cases"] as! [[String: Any]]
        XCTAssertFalse(cases.isEmpty)
        for c in cases {
            let h = c["height"] as! Int, w = c["width"] as! Int, r = c["r"] as! Int
            let choice = try ImageSplitting.selectGrid(height: h, width: w, tileSize: r,
                                                       nMin: c["n_min"] as! Int, nMax: c["n_max"] as! Int)
            XCTAssertEqual(choice.grid, ImageSplitting.Grid(rows: c["n_h"] as! Int, cols: c["n_w"] as! Int), "\(c)")
            if let regime = c["regime"] as? String { XCTAssertEqual(choice.regime.rawValue, regime, "\(c)") }
            if let pad = (c["padding"] as? NSNumber)?.doubleValue { XCTAssertEqual(choice.score, pad, accuracy: 1e-3, "\(c)") }
            if let fit = (c["fitted_area"] as? NSNumber)?.doubleValue { XCTAssertEqual(choice.score, fit, accuracy: 0.5, "\(c)") }
        }
    }

    func testWorkedExample() throws {
        // Slides: 800×1200 (height × width), r = 400, 1 ≤ n ≤ 4 → 2×2.
        let c = try ImageSplitting.selectGrid(height: 800, width: 1200, tileSize: 400, nMin: 1, nMax: 4)
        XCTAssertEqual(c.grid, ImageSplitting.Grid(rows: 2, cols: 2))
        XCTAssertEqual(ImageSplitting.candidates(nMin: 1, nMax: 4).count, 8)
    }

    func testSplitImagesAndIndicators() throws {
        var g = SplitMix64(state: 5)
        let img = RGBImage(width: 120, height: 80, pixels: (0..<(120 * 80 * 3)).map { _ in UInt8(g.int(256)) })
        let sp = try ImageSplitting.split(img, tileSize: 40, nMin: 1, nMax: 6)
        XCTAssertEqual(sp.grid, ImageSplitting.Grid(rows: 2, cols: 3))
        XCTAssertEqual(sp.tiles.count, 6)
        XCTAssertNotNil(sp.overview)
        XCTAssertTrue(sp.images.allSatisfy { $0.width == 40 && $0.height == 40 })
        // An exact fit: the tiles are the image's own pixels.
        XCTAssertEqual(sp.tiles[4], img.crop(x: 40, y: 40, width: 40, height: 40))

        func text(_ s: [ImageSplitting.Segment]) -> String {
            s.map { if case .text(let t) = $0 { return t } else { return "[img]" } }.joined()
        }
        let grid = ImageSplitting.Grid(rows: 2, cols: 3)
        XCTAssertEqual(text(ImageSplitting.segments(k: 0, grid: grid, hasOverview: true, indicator: .seps)),
                       "[img],[img],[img]<n>[img],[img],[img]:[img]")
        XCTAssertEqual(text(ImageSplitting.segments(k: 1, grid: grid, hasOverview: true, indicator: .index)),
                       "(1,1,1)[img](1,1,2)[img](1,1,3)[img](1,2,1)[img](1,2,2)[img](1,2,3)[img](1,0,0)[img]")
        XCTAssertEqual(text(ImageSplitting.segments(k: 0, grid: grid, hasOverview: true, indicator: .none)),
                       String(repeating: "[img]", count: 7))

        // 1×1: no overview.
        let one = try ImageSplitting.split(RGBImage(width: 30, height: 20), tileSize: 40, nMin: 1, nMax: 4)
        XCTAssertEqual(one.grid.count, 1); XCTAssertNil(one.overview)
        // ≥ 3 images: no splitting.
        let s3 = try ImageSplitting.prepareSample([img, img, img], tileSize: 40, nMin: 1, nMax: 6, indicator: .index)
        XCTAssertEqual(s3.images.count, 3)
        XCTAssertEqual(s3.segments, [[.image(0)], [.image(1)], [.image(2)]])
        let s2 = try ImageSplitting.prepareSample([img, img], tileSize: 40, nMin: 1, nMax: 6, indicator: .index)
        XCTAssertEqual(s2.images.count, 14)
        XCTAssertEqual(s2.segments[1].first, .text("(1,1,1)"))
        XCTAssertEqual(s2.segments[1][1], .image(7))
    }

    // MARK: - JPEG

    /// JPEGs written by Pillow 13 (libjpeg-turbo) and the RGB it decodes them to (generated once).
    static let jpegRefs: [(name: String, width: Int, height: Int, jpeg: String, rgb: String)] = [
        ("444", 19, 13,
         "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgMCAgMDAwMEAwMEBQgFBQQEBQoHBwYIDAoMDAsKCwsNDhIQDQ4RDgsLEBYQERMUFRUVDA8XGBYUGBIUFRT/2wBDAQMEBAUEBQkFBQkUDQsNFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBT/wAARCAANABMDAREAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwD5K8L/AAPt0jtXnXy1VeX2lh5g5K8EMDgE85GSCDg5P5/PO/bOUErv5LTb0a9LSSWzseLknE7qVuVW9W7vXbRpq610sna+l3zR9r8N/Aue4jht5IFtWjLR3BEWxSCC+wBvxAwTgnrivHq1lWrTlGWltFzekU762bunaS203TR/R3D/ABdSqVVCylFe9ur3W2l+Za30drddrP0fRvgXFNpdu9zaQvOV+c7ivOemFYD8hXm16dSlUcIUrrzTb+bf/DdtD9mp8Qtwi27aLS39f122O58HeC9NiniZIyEUyRFCxOQOWAJOQG447bRzjIPweAxNWtTlU0XIr7LW3vLy0flfz2t/jJl+cVcOpK2vRqye9ve0fN+Gl0krn0H4H+HWn3tvLcnargtkBSAQCw28MAVzk4Oc8Zzjn7nL6k6tSMOtt7X3Unf/ABab6+SWx/QGTY/Fez9pCfLypaLTor27N339LbI9Y0z4f6fb6fbxo8iqEBwuMZPJ65Pf1r6KtaM9XLZbO26T2St/nufraxkvtK716v8AzP/Z",
         "GwAADgAXLg4ACAcDNQIAIxAKMwMDVx4BbQAEegQkniUGhwMQuw0WpSkNmCUgxgAAwhQJ4goN7BYAAAAXDBYYAB0YMzQUJA8KOAYFbwAeaAgAjS8LZBwGqTsWtigCxwcAvjAMtTkXzQsB9DUI9C0A+RoVAiYADEUANxIKQwQZJT0vaiEAPEgWTUYslzY/jSU+kTsMvE8ApykQmhgK2Qwq6CMAwRwG9hg//kZGEBsAHEEgJ2QALlMNMRwjJE80bRcKT0gaRR4PiSI9mV8fsE8cjVMAzDEdsB9A6D1NyipG1j8s+0opAk8HAUgGC2owJFwbAYAAWXsnO2k4dmsZhEo/f08FhV8Yk186kF83kmEf7Ewy4WwdtUU69kgv/WY7A08FMZMKDoAABF0NN1UVS3AQc5UDdV8ufUlNhJAIb3k9hIogcoYto0Rs8Itds3E9vFkv22Nk/3FbAIwVClgASpMgGpgANJIIT1FDUnErU20mT6Mpi2Vki08tl2hYxpQjyXZw3ZNm2IJ10IBl93xD/IhfEokLDJYFAIMJJrITS40fGYgITIU2XnQilLBJY7dHb6AgcLkzn7FNrIJq0I8zzY1f5neH9nGG/4F0AqcAELQABccZEdAIJo0GS7pEfscGVapMWsVnbrU9i75Vp5ZRlq9cyM5q4r6C3JOC4KiF1a+A9MewBa0PAJwAOaBHWawCF7UWXMhORcM8ZrFfiM1OkstWpLWLZsJXtNNeh6lsvJqZsuaUw6+Xwrex5N2XAu0MKtgFM9AfGbQ8Vuk4LLMPPPgnWvJSgvlHkKloes9xhvhbtPGSpdeOu/67vORx8NmN8N2i/t6jJsoACf8XCP8xFd4AV8ADbt0pcL5QVP8/T+RUkvBEbeJvpeqPkN9ypPdhnfGCz9mU09Go5OrE/PHTHvEGEdoAH+gAK/9HKPM/OeFDQf9fRf8zZvxVguRtlf9xoflly/+20P+W1v/WwP6z7O68+/z+//+4"),
        ("422", 19, 13,
         "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAUDBAQEAwUEBAQFBQUGBwwIBwcHBw8LCwkMEQ8SEhEPERETFhwXExQaFRERGCEYGh0dHx8fExciJCIeJBweHx7/2wBDAQUFBQcGBw4ICA4eFBEUHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh7/wAARCAANABMDASEAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDxLRPA8ISFpRtAHJwSN47cHdnqe4yRg816Do/gWWREheIQlCVmOzaCCC20A/iBg9T1xXyOIxv1hdte+/l/wde+x7fB/ESUo3tq9r9Ou/Xyv6JanVad4FR7KJpreNpCPmO4jn8DiivLmqkZNKH4M/aY502t/wADovD2i2SyIyoQoLIVJJyB94ZzkA/0HOOD6f4Z8OWc0LznaGBOflPOMjHB6d8H2rz8qqzm4X62/r+v87/xdwtmFWUuWLtb/g/5a+ep2tl4fs47SJFZwNoOBjvz3zRX0c7KT1f3n66sS+q/F/5n/9k=",
         "EAQYBwAHIRMQEwAAPREGPgMAPQAAaRcbZgIOeAUWoiIvjgEKshYXthQPuiETrwkA1xgF3xIA4hQABAIACRIABCEFGzceGBwLJwYAXQkHZQAAgzYabhwAozcRpyIBtBkA1CsU0iYSvwgA6SAZ7h0Z8BwYHhIcSzQ8OAgIQAoATygLQisMREc0U0Y+gDs+hykflTYKv1geoSsAmwwAzh0T5Cgp0xwh4zA0+ERFABcCFzsXHlsWG1gTDjYROz0wXy40dCcvYxYMeC4Rn10poVwZn00Du0sbuR4m4DRKxCgb1kEh6VMuA1wCAFIAEmAKL3weFWsAQooaP2MAZGkXdFwgeVcpe2A1e2I5hmc5kVMiyVEc/2w92D8f7FI4/GFCAFYAI4YPLYkmA0wAKFYAW3ATfoE0gm4vfE0Zp3lFe2knh30/lntQiFo24aJvvWI1x1Aw5V9G+XJUCYk2AGgGLIcGSYwLWowpOl0NXHstQGIYaJdPXXk/d1k3qmhI2INK1XdB7ZJ32ntn4n9Y64VV84tWFIgBDogCBIoHKKYoJZAPNooYOnkgVYo4erJXe7ZKZqkleKkpqLRQp5FGuItQ1Ito3ndy7Hd/+YKEBqYAEbQLD7gXJr8pIpEOWLEzecpHXKgsb7xSgbxekKpRk5xJo6xdwsGAzbmGy6mG0qqR2q2a9MewALIAAKIANLgmL6gdKboXS9U3Srg1XbI7hsxQgMFLfcNhjMdtsNBvmahTtb+CxMuVub5+wcR92d2RHt4RKN0WJsYML8IZVepSHK0UX+k8e/VUfd5qftRpeNVRjuVitPiRotmFxPClzN6g6NKh+9Cl/92tH9QALusTIPItFdwhKcQOXOY5Os4vYvVcVeA9de1XhuRql+d4l+hvout/s/Cgttul09u26eLF9u3MH+sAGOcBEegPLvw1RPxGP+o6TfU+WfNFdPZiee5ikv9yqP9+v/qM0v+mx/uwz/i84/PE/f/V///S"),
        ("420", 19, 13,
         "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/2wBDAQkJCQwLDBgNDRgyIRwhMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjL/wAARCAANABMDASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDzuy8NIFjLjAA5OM/N6dc//rrqLPww7qqMgQrkP8uAc5OOfxHB6muw0/TrdXUheBlSMn8fz/oK7HTNIgkRpDgHnt6Z469K+bp4uVe1+pw5NxBUTVjzm38MK1uhkiUuRzzj+RxRXs8OlQJAigsBjtRWsqWu59uuIanb8f8AgH//2Q==",
         "AwwHBAkCGhMLFgYALAwAKQAARwwAVw8BbRYMXwAApjMshwQAqxQLsAwAzh4RtgAA1gwK3w8P4hISAAUAAQwAFxgIMCUTNx4IPBYBRhIAWBcDeywddBgLlioepSkduSsfvyMU1y0evQkA7Csm8Ckm6iMeDykQHTQYHi0QMzYXKh8ARi0OVC0OcD0gfj4lhTcgp0g0skMwjQ4AnhEAuR4K4DsozBoO5Cwg+kM1ACMAFz4PJEQVLkIRKjACRD0PUDsQWDcOWCsEWyEAn1Q0slc4qDwgxk0yrScMzTsiySoV3jkl7kkzAEEAIV4YPG8qLVYSP1kYWWcpcnM3bGEpbVghd1MhkF0ukU4jo1AouFYxz2M/2mJA1Usv6Vk++GlLBV8AFmwLKnUYEVAAKlwHP2QUYn0wYW4mV1oTjINAinI0nnY7uX9NlU4g3YpgxWI7vEQi2lc58nBQB3oAE4EGKYwXNo4eQYwjQX8cRHcYR3AUcpA4eIo2XWARd2sjtZdXqX9F46t61Idd8IJh/4Rp/4dqDJcABowACYQAMqEeMJIXNIgWMnwNT44jhLlRcJo2j6pNjZlFralfrZpYo4RNyZVm0X9a54Zm8pFwCqsACKQAG6sLRMkyGI4EU748Z8dKV6wzbrlCgsJQjb5TfZ8+oLJeuLpxyb+Cw655yKh527aK68aZALUAA7IAH8QQFa4ILLUfNrQlWstFVbw3dtVTcsRGfcJLir9TrM9zp7xtub9/yseQwrqJ0seZ4NSkDtMAH98OMeYlErsKS+NCPsozXN1NbuVXgu5kc9VOhNlYnOFtu+2KsNOBwdaT196o18yf59Wt8t+1DN8AJvQYI+QZJtofON42RuBCTdxEbvJeaeFObttMheVfjd1iqueAteKNx+aixtOd5d609+W//+7GC+oAFu8KF+MQOPc3JdUoR+lITONIYe1WcvNbf/Vhn/95ovh5vP+V0f+u6P/K1+m17Ou//fHJ//nP"),
        ("420big", 37, 29,
         "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAA0JCgsKCA0LCgsODg0PEyAVExISEyccHhcgLikxMC4pLSwzOko+MzZGNywtQFdBRkxOUlNSMj5aYVpQYEpRUk//2wBDAQ4ODhMREyYVFSZPNS01T09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT0//wAARCAAdACUDASIAAhEBAxEB/8QAFwABAQEBAAAAAAAAAAAAAAAABAUABv/EACsQAAIBAwMCBQMFAAAAAAAAAAERAgADIQQSMSJRBRNBYfAykbFxocHR4f/EABkBAAIDAQAAAAAAAAAAAAAAAAMFAAIEB//EACcRAAEEAQIDCQAAAAAAAAAAAAEAAgMEERMxUdHwEiEyQXGBgpHh/9oADAMBAAIRAxEAPwDg4aWaRgWuXx8/il29O2CJdReSn/VUo6Y7ox2CSAcjHARFN02ikSy8YwSEfcn9P2qsA1UKvcAUu1oJH6gCAUZE/al2dDKUWEey+e1V4aeNgSt+W9uTEDn4KRb005nMhkhDOT645orxAw9jxHgE+rWyVNh4dMwBvR5a6W81qrnw6IjFgyw3EVqDiPzjA+X4m4td26n2dKTKJictBIv8VRjY8qCiIykR0hd0aRprYWVnCSFLt24zkJTA4Bxjsc/essM5ZWDm7k46+lyeCyS7BRbGjAAJiA2SSsDvyKZasyubYxxZQHAf+elLlZEbwtsox3crikxAtm1txK4C5DCCoD5tNpY04Dd+J9E/rTuICINILXRsMgmAXitVW1ZtbSNq2nbgr8VqjIZyMtY3HvzCbNskjrmv/9k=",
         "AQ4FEh0VBxEIGBsUAwAAIBURHwoHLxEPSiIjPg0QQgcLVxYcZRwjXxIaWwoTZQsLdhEAix8FewkAcAAAhAUWhQAcfgAYkgApmgAsrQgzqAAiwBIprQAHwxEPvQgAzxQB8SQR4wwA8xoJ7RAA4AAAAAsBAxAGCxUMCA4EFhMMGxAMIg8LHwMCTSYnNAYILQAASAcNYhsjYRUfUgINTwAAZgEAdwsBeQkHewYPhwwhigcmjAAnlgMvowc2sRA6rQUpwxYyswQVxhUdvQsLzRIN5xwY3wsI+SIg9x0c8BEUBBQHAA8CFyMXCBADLi4kIhkSMB4aHQMCOBQUOQwPRg8VVhkgXRojWhEcYBIfcRsoYwEQawITfxInjhw2ixQykRQ2nRY+nRA6pA85rBE5qggvvhY5uA4ryBo1whAoyxEo2RMu1AUh8B887hw55g8uBBkGCBsIFygWEh0NKy8hKCQZMSQeJhEOOhwcRx4iWCctYyozYCEsXBgnaiEygjBGcBMyaQUpgRk8kSVJgBA2iRI4oCFKnBhAnhE8og88pgo6thRGvxdLyR5TxhdOyhJO0g9RyABD5Rhd5xhc5BNXABYACiQJCB4HFiUQDBUEIiQWIhsRKxwXUjo4RiMnPxQdThwnYik4aSo9YR0yWhAreyZNZw85dRlCgiFKdA42fxI5myZQnyRQoh5QoxhRrhlbtRhlxiJ4ySB9yx1/yRR/1BOGxgB35BqS7SKY8yeaACEAETMSBiMEGTIVAxIAIywZHyASMikgPCooOiAjPRkjSB4sVyY5YCpBYihBYyJAgjpgciVPdSRNgi1XgyhTjClXoTdnrzxzqzBvrSlyvjCGvSWJ0DKhyCSd0CeozByl3iK00hCl7im+8izB9Cq8Ej0QGkMXGD4VGTsWGjMVKjwkLzsnNTcqJR0aPS0wUjhDVDJDTSY7UiZBaDdVfUdngkdnfT1feDRZiUFpnk9+m0R5mzt6r0WNpTGEqSyKxDyovi+l1j/CySy32TfI1i3E7TXT5ynJ/0Xm/z7d8CnKHVIaFUoUI1MhETwPL1MtKUYnOk03LjosQEI9SUNHTz9KTTZKTjBKUzJRWTRWXTNXc0RoeERqcTpkhUd6pmCcl0qOhC18mDiRkCaImSaOvT6vtzKp1EjDxza13knJ4ES/9Eq3+Uiw/23V/2LL/0WwA0QCJ2gmHVkdEUgRE0QVJE4oASIFNEs5R1ZPVlteOTdEZVxxQzNQc12BZEpxgmOPUStcZDlvXjBwj1qipGa5kUqmoVG0jzefx2bRs0qzvkuy1l6/11izzEuez0qZ102A0T9A2kIt30Iv4UEx3jouCVgJKHQpH2YgGF0cI18pPXJEHUopTG9ZFjEoMUVGPkhUUVNqQj1dTUVsTUBrXEp+ZkmMcU6edk6kkWS/nGXKlVa/o1vHplfArFS4q0ymsEuZvlSUxlaGvkxuvkljz1VU2VEn5FYY61ke7Vgg6U8dAFQAFnAZFWoZFmYdHmgpOn1IGlQsQHBWPGRZR2ZoVGp3P09oSlN0TE94XV6MXFOSb1q3cVTChmTUiWHRjV3Nl2LOn2DIunXQs2a0wG+qsFiApUpcultZwWBNyGVG7H5d0k414lRA71xM81xR8FVQAFgADHERE3MaFHEgD2UeJHQ5B0wfJWJDKl9PKlZVLFBcJkJaS1+CZHWhdoK0a26zcWLJaVLHim7fgGDLhmDDnnLLlWKttny3g0RvrmiCq15kqlhNznhdy3FMsVYnxl470VFS5Fdq8GB39WF79V59B3gMF4geHYkmFX0kAGARGnQ0C10sLXdUGVlILGRhMGBsQmqDSmqQY3+uWnGlUl+jeXPTbl/GiXXUf2q5i3GupIWxi2eBmm95mGVht3xup2NOolY+zHtg1H1iwmdM13Bp5WmN9W6m/HKt9mum9WWjFI8bFI4fEYYdBXcXAFYCE3cxF3E9OoxmNH1pSouHUImUXIulRnCWTnKiT3CmY3u5g4bTe3W/fXWxem+XiHqJmIV/hGxSfV02u5JkxpNmtnhTtGxU1YJ634aK4YCR+I+u8n2y/4TD/4LC8G+w6GOkEZIbCIcSB4MVBX0ZAGMNIIpAHH5FL4dfKnljJGtlN3WAPHKMUoKqS3emapPJh6bcipfEjI+ucnSBc3Vog4FajIZIk4Y3gGoUkXAfo3Yzwodf4JeO6JKt1nitzGSz0mW06Hu0+ou2/Iu37nuk53CYGJsbDI4UE5ElI5s3FYstPaxdJ4tXIX9bUqiNKHVtRIibQX2fhLzhU4iwYZTBVoKfj6yqmq6Vb39aeIJOh4xKj41AsKVTmYY3uZ5ZrIdTuIZvxYeMuW2TuWOk3H7U/5/m2nmM8pGK/puV95GM9o2HD48GE5ETFY4nEogoFYoiIZE7MZhtPJuDL41rJ31wTJa5V5vMN3mZY6W7VpOvYJuVZZhVXIUlZ4gvfpNEhItIjohUoJJtp5N7jnZsxKaoy6ez2a7CyZSw25/ByISr146V0YNF5ZQ4+adR/69f/6ReHaEPI6UhJ6I6IJk4GZMmHZI5K5VxNpuJPKB8NJCBUJ/GXqfaRZClc77DZqy0bLGUb7FHbacfeqUyiaNIjZdanJh1pZeOmoaRrpitxq/JwqrCy7DB3LnA6sLA0aGVyZJpyYkv1JEg4Zow7aNA86ZOAIgABY8ED5MlEZQuD5ElFZE7I5VzNJ+PPaaHN5qIRZq3WKjLTZyhd8S6Zq+mZa6BWaItYqIWeao0ja5VnKt0tbWbwbi5s6S3oZGst6fBvq65qZeTuaGHtptuwJ5hyKBa469m4qhf4qZg7Kxs/bt/KMAgJrwpJbU8IK5CF6M2D5RBDolqF4p9NqeLOqSQO5inUqq4TqWUbMCfVKWFTJxfc8VJcbwugrxLj7hpiZ5ziY+BkI+VjYeVtK66vrq5wsCrl5JqqZ9hpJRGzrle68t47ryL7bGP56iJ6KeL9a+WAKQAAJ4BAaEbF7I9KMBTL8BxOL2gQ8G2PbSeUMGtQ6qnW7yxWbiOaMOKTqZsQ5pJY749XrErfb9dn8+RoLyjn6+su8TJ1tzaxM62t8OTq7hwi5g8ucBZvr1T29Jr686C97ql/7W7/6+49qWu+KKvH9IfEsMbDrwpFcBAFrxODqteDZ2CFZyVOr6pX9vDSbukX8unXMWCYMNwUK9dS6tKYsZIW7k/c75riMKSfKKVdY+Oi6CZobWZmLNwoL5cpMRHnbgzuMtNusJSycZp3smI8sOl/8i9/8e6+ris86+iDs8SCsoVEM0rHdZKHtBgGMN3JcKnPtHJLbqqYObLQcCVVc2NUcRlUr9UVbxTXsVaYs1ZbdJsidublda2mcjCrdXNwuXHu+Cbgq84ptc9tuY4wu1Fv9tSwtFsx8aN6eGw2c+H59uF5tl91sZm0sFXAMAAAMMFBs8fEdY+CslVBLhuGsOmPd3VILirXO3OOcSDSs9yR8ROSsFBXMtScd9uXdBpdeGMh+KpesaifLejodO2o9OZeKpLjMU2oNwvltAZuepAveFd1eiOxMea19Wk7vSK9/118PNm3uBO3t5CAM4EA9oTDOIiEuM/HOZuKOeaJNe3GsS5QePWM8+qQtqFNcZPUNlNY+JTUcZCZ9xqZt6Hdumkdtufgtmio+y1nd6ak893qeV0oeBUq+pRot1Dp9pNsddo1eya/v/U7/Cuu7g31c8v59096dw47945FfMkF/UmEfAjDOc1EuRnIOmZJuS+JNnKQOrfRuvBWv2UReJTSdo/Utk/ScY8bOR2Z+OadOyvcN6XdtiFj+WEi9drgcdTlNVfsO98t/OCruV9uemGuuGGyOSP4vSizNZ25Odm9PRi+vVl8OhZ6d1NDe0bC+4aB+wVBeYqDuVjHeyaKPDCLerULuDSP+28T/yASfBLTeZAX+xPWtxUe/iQaeendPC0dOeMdeFpiuxbkuhRk99YoeV2p+OZsOSztOK9yvTGye2lxeZ+2fVswdxRyuR51OuQ4POZ5fWc7PadANsIAOILBe0NDPMrFvJqHvKbIu65I+jKHtnIL+SvK+JWP+47UvRGdf9rbPFxefmYdPS7ffu+fvWNe+xeiPBBm/hHqPhhsPSHndafq9zGuOPc0/niye2nveFn2v1L1PZI2vmS1/Sx3/e56v7D8v/JB+kZDPEYFv8XHv82Hv9yHPaYGuyvHObAHt7JO/e8J+VNQ/s7TPNBbv9uZO51auyUg//Oh//Iif+UfO5Ye+Utk/I2pvhYo+hzqOKnvOzUyPLm1PvcuN6LqM1B1Pkv4P8+6/+L4e6m4uus8PTB+fXP"),
        ("gray", 19, 13,
         "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAYEBQYFBAYGBQYHBwYIChAKCgkJChQODwwQFxQYGBcUFhYaHSUfGhsjHBYWICwgIyYnKSopGR8tMC0oMCUoKSj/wAALCAANABMBAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEBAAA/APJNL8JRhYjINoA5OM/MO3Bz7+mTxXbab4RkdUjaMRlSVk+XaCDk4wfxHB6mujs/CKvaxtLChcjk5I/kcVu6PpVsroVU7QWQjJPHf8D/AEH0r0HQ9Dt5Y3kOARnsecZ469P/AK1dZa6LbpbxqpYDaOlf/9k=",
         "AAAAAwMDHR0dAAAAExMTHh4eCgoKLS0tJycnHBwcUFBQLi4uQ0NDR0dHVFRUMTExTExMT09PUVFRCgoKCAgICwsLMzMzJCQkCgoKISEhISEhR0dHOjo6SUlJSEhITU1NTk5OW1tbQUFBX19fYGBgXV1dAwMDRkZGGBgYISEhLCwsLi4uPz8/RkZGS0tLS0tLYGBgY2NjOzs7PT09SkpKaGhoVVVVZ2dnfHx8HR0dJiYmNzc3Ozs7KioqOTk5OTk5Pz8/MzMzLy8vZGRkdHR0YGBgZ2dnTU1NaWlpV1dXZ2dnd3d3NDQ0MDAwXl5eRkZGREREX19fX19fYWFhYGBgWFhYY2NjYGBgYmJiY2Njd3d3iIiIbm5ufX19i4uLKCgoT09PVFRUKysrSEhIX19fbm5uaWlpWFhYd3d3bm5ue3t7h4eHXl5elZWVhISEbGxsgICAlZWVXFxcRUVFWVlZe3t7YWFhTk5OaGhoU1NTdnZ2dHR0XFxccHBwm5ubiYmJrq6umZmZlpaWn5+fpaWlVlZWVFRUVVVVa2trYmJiZmZmYGBgbGxsoqKiiIiIk5OTiYmJnJycmJiYjIyMoKCgkJCQnZ2dq6urYWFhampqdnZ2ioqKW1tbkZGRoqKifX19l5eXpaWlnZ2dlZWVoaGht7e3tra2sLCwqqqqv7+/y8vLampqXFxcfn5+cnJyenp6g4ODlZWVlZWVpKSkmJiYpKSknZ2durq6paWltra2vLy8tbW1ycnJ0tLSgoKCjIyMioqKg4ODo6OjgYGBqKiora2tvLy8qqqqvLy8vb291tbWu7u7zc3N19fXx8fH2dnZ4ODgkZGRkpKSn5+fkJCQkpKSp6enmZmZubm5qqqqr6+vtra2v7+/wsLCzs7O0NDQzMzM2NjY6urq7+/vi4uLmZmZh4eHrKysk5OTnJyctLS0srKyu7u7wsLCy8vL09PT2dnZ8PDw8fHx3Nzc4+Pj9PT0+fn5"),
        ("restart", 40, 24,
         "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAoHBwgHBgoICAgLCgoLDhgQDg0NDh0VFhEYIx8lJCIfIiEmKzcvJik0KSEiMEExNDk7Pj4+JS5ESUM8SDc9Pjv/2wBDAQoLCw4NDhwQEBw7KCIoOzs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozv/wAARCAAYACgDASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/90ABAAC/9oADAMBAAIRAxEAPwDzKLTjwWO4HoNp6ev/ANbmr9tpg+7tC7vu7gDu6dAeR/n0rct9NOFCLnCD5Bjv7evPWtO20cKChQnaM/MMMBk9+mPWscM/bnHhswS1uc7b6WS+BufBBXIII9zWpHpGIPMCgAcDIxt55zj8BW+lmkCmMRl265A6e/XOT/ntU8Wnz5CkrEeDgDOD9T2/rjnrXRV+qU5cjvKXZfq/6fkfTYTMG7O5/9DNXSQhRiAP4WBPHpznn1/P8yupi0qJRyqurEAhRuwv0HSiueU6XWEY+Tkr/ofdQzDmirNlK1sVkZGRASrZ2k8e3P4mtNLQxpu+RXcfLgcgYGc8f4UUVwYerOlg5zi9Vb8Wv8z8Fw9WV7XP/9Hp7bS1QMUxkAdeAOemOh7dqvQWblWWE7ECAAg55H4dv8KKK8KcpU4U6cHbm37njYWvUbabLa6dCuGAAkxyu3P68fkOelFFFeXPFVac5U6dkotrZfqmfSYepOdNNs//2Q==",
         "CQgGEhEPFhIPDgoHEQkGGRALHAoIFQAAGgAAMwsLLwAAUBUXNwAAUgcMRAAAVwAQdg02cwQudgEbhA8Xiw8NeQAAgQAApCEmgQAIkgccmQUdthownwAOugkd0RUmzgoU3BIS4RAL6Q8OzwAA/xYg6QAD/x0s6AACCAoFBQcCDg8KFxgSEA8KBwIAFgkDMR4YKAwJHwAAMAIEPgcKby4ydC0zeSw0aRUiWAARagMedgkcfgsYgQkSeQADfQAIlRYhoR4spB0uvC9AtiE0qAcXwRUlvQcUyg8atgAA3xch2goY8Bcq5gIb9w4r/xs6/xc2DBkPCBYJAAoAAAYAERkOLC8kLiohHxUMOCUfQCQgMw0MRhgaPAUIVhkeUg8WXxcaVQYAaBMMcBAbdQ4jhhc3kB0+kh04mCM2liAsiRAXtDM4nhUcuyUu2TlBwhkg2is42yxJ7Tlg5CZS1xFEzQA11AA6+SFg/y5tAAoABRwIDyYSABUCAAwADBkIIScZKykdHBIJQi8pQiYja0dHQhUYXSovSA8WXiIiaywbaCAUWwoTYggihSBKlStZjyVJjSI8pjxKlSguqjU7lBcfxz1N0DtRtRUxvBc/vRpR4Tt7xxhd/0mTzgta/jeK4BZq9Cp+JEkqAB0AABIAFjcaLEgvHTMcGCcUKjIjNzcrLiUeNCIeOiAhWzs+ZT1Fa0BJYjM5gU1PdTpAZSI0byRChjFYhyxVgCVIiixHokNXqUdWrURVpTNNzUt5uyxquSBwuBpxwCN8wSF76D+a3iyK9j2b3iCA6yyL6CmIDDwSDDsRHEkiLFYwIEUjDCsMGjIaPE06REw9NDYrIRkWMCAhQywyY0VPYkFMYDtMaD1Ybj1dczxcgEBihz9ley9WgC1Zm0ZwfidSnEFtq0l4u0+JyE6bty+Rzjuw2D2930DA4j+87EC67j2y1h6O4yiR5CiJ/06sADIAC0QPDkQSAzQFCjcMIEgjIEEiDykQESIQO0M4Ozw3cmlsTDxGb1tnVj5Oak1rRyReWTFwZDZlazdedztfezhhhTpzmUmQkj2SmT6dtFK1yV7Ivke7w0DCvS+/yS/N1i7Zzx/K/07x9zvO/1DR9jSk/j2a/0yhAEEAE1QSIF4fGlQaE0gUG0oeKFArL1AzNUw4RVVKU1lXRkVKNy86Nyo7VEVYcFx/Y0uHcFGXakOCZDdwfkeAl1mYnVakm1Ctq1nIizOurk7Tx2DlwE/S5mvqtjSuvS6q+17h5jzA7j6690Gw+UCe/0WS5Cpn9DxwAEEAADwAGmAXJmcjMW0xGk8bK1gvLVIxLko0LUE2WmZkQkdNOjlHT0peZ193UEdmdGqPVkR4ZEaQmW7IhU6ziEmyl1O6rGPOoFDJm0XKsVPns07cuU/Jylu3vEx+6XOLtTJA3FFY51Rc4UZM8E1S+1VX70dH3zU1AFUAH3MbMYEsAUsACU8JL2wxTYNSLVs3KEszNFBCS19eRlRdbHWGVlx0RUlmYmKEUE93XlWKhG+6eVa0qXnmmF7PoWHTi0e2jUW1rGDNmkmyw27JynCwxWeLz29x1XJV33dA4HMy0lsj0lIj9GpG/3de/2pb81tQAGMAEXILHXgYBFoBDVwNHmUjNHM+LGM7IEwxKE4/RWNhUGhyfZKlY3SOSVh3YGuYXmOljozVc2mogm2ukG66wZLuo2vYr3HcwoTao2edo2pxpGdS2ZVwgzgRsl5GtWE9yXw0x3ooyXAu2nZF9IJq+H14+XeD/4OYCXoEBXYCEHoOH4MgKYUuG28kIm0yOn5PUYpqMGNSS3VzOV9oPWBzVnWRco+vaICwVmetYWq1dHS0f3avp5LNl3i0kWmol2uehFhvroR2qIFKi18UfkoA1ZhZtGpHrWRBxYtMw4pHzYdW449164mK2GyD3GmU/Ye7AHwAF5gZFpAZCX0QFH8fJok2J4A8LHxJUZl0OntnW5SOR3yERHWGUoGbZJGyUXujfJzPZn66hpDYmZrdoJbLjH2UnYx4nItVeGcVhnMXln0rtJFNq31M0px2r3BP05Z5zp+DvIt6un161IqZ6JC24X636H7I/5zvAHcAGKYeE5wbBocRD4gfKZpAGoA2FnM6KH1UNIJqTZSMSYyScK/AV5WuP3qaVIqwd6TNb5TBZH2zfo24T1VlfH5oh4c/iYcgjIoRrKUzva1Yl31EzKWIp3Zn4KibvIV+x5qfyZuo0pms4p2565m934Sv5IKz/5zOAJAAFrIhDqIaGqkrKKw8Mq5MHo9BMppdQaB0QJh/PY6FI3F1T5urVZ+4VJu7b7DWZJ7GaZq6iLC4aot2iaFtgJJGl6JGe4Efrq9RsaxajYJCuaN6upmIrYCFx5Go5K3MzZy85LLN87jM8a636p2X2INv03pY4IdbAJwFFLslAJoGAJMJCpooLbNUJ6VUR7t8UruQRqiRXrq1O5SaQZekZrvPb8HZQIugbKiygbeqZJdsZ5RPe6JFlLJOi6BBoq5csbN0tLCAvbOQo5F7q5CJzKuytI2iwZapuZGPxpuKx5N7z5Jz7qZ+/7aC/7Jw/7BmA7QcA7IXGscgA6oSK8VVAJA5HqdZPb5+O6+IRLCgN52iRqi1N5WfWre/c83WarqvSoVPbZ5MdahJfrFKhLRHqtJvka5emKdwhIdqx8C2taenvKmt2sjI5NPMu66e4tSnwa9N07lCyaU11aRHzI1K7aZy86d2/7OFArsfALkUFM0YC74cI8dUB6RLJLdmP8qHSMmgVcu7RbW5XMfRV8C8atLHbdPIY76VgMRhhr4/dbIzYZwkX5krgrVZl7t7xt+4lJ6TtbW3xrzFsKan082/ycmnw8qWwcdx2NVQ18ky38g+1rBD+8SB/byW/7ym66OUFtwxCc4cENMVE9ElEMBDErhUMdB2TOKYKraFTM60Qr24V87IS8GnSL+ZR7uWV8B+YLU8ZbAge8dBh9Bao+mHmtiNhLSEi6+TpLqurbqxwce5p62RsbuHsMB5tMtwlqlAyM9fy8VV59Vv58d68sKc26GW/bvF/9bnFucsCtsdDtwXJew3CcU7GMpcKNJvN9qJSOCnQ9OvGJ+OP8OsZuu2cPOvTdCMQ7xff+Vbb8wzcs5HY7tLi9+JjtibjMqhk8Wosdm+xuXFuNKjts+Np8Nsy+qCuN5lpcZR0+SE9vun7OeT386I0K+G+s267ru32qOmANUMANcOCuMWMf9IEdlDG9thFcxgFcZsGL17OtioLcKkSNmwR9qJQtVtPM1kV95lZN1EeehMlP9/dN12g+eef9mjfM2igsmdisWPreCblMJokbxRnctPwfFqq95Rrtxgq8t4wteS1OCM/v+q//Op//e0/N6e/t+fAN4LAOIPBOQUIPs9EeJGIepmIOBxKeKFMOCYTfTAQ+G+YfvFXvuQX/11VPBpV+pbae9Se/dhg/2EZdt9dOWjivK/iuu4lOqrmeeTsfaLru1rlM9Bxf9sw/1qwv1xw/mBxPGgxeqd7f+i+f+Z//+V0stg4NRo+Od9Bu0TCe8aAOMXCukuEupJJfVtL/WGR/+qG8+ISfTAV/nUYv/EN9xcON48Su9NV/NUavZfa+9oZOh7aOiVgPq9n//biPWyjfGZl/J5mOxZq/hSputCvv9iuPVpwfyEs+yDuPGTz/+a1f94qcww0eZN/v9z//+D2dJQAN0AAusVA+gcDOwzI/5aJ/pvJ/CAOfqhPfKtS/jDQ+fET/KxNt5TTPdHW/9USulEbv5obvd2Zu2HdPmqdvO7iP/JcuScj/uWjvBlhuE7nfE5y/9fsPRTy/+Azv+buvaUyf+kw/+Hv/VX4f9b1/NG4fBL4+ZR//9y"),
    ]
    static let progressiveJPEG = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/2wBDAQkJCQwLDBgNDRgyIRwhMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjL/wgARCAANABMDASIAAhEBAxEB/8QAFgABAQEAAAAAAAAAAAAAAAAABQYA/8QAFgEBAQEAAAAAAAAAAAAAAAAABQID/9oADAMBAAIQAxAAAAGdUYYNwnNaam//xAAaEAACAwEBAAAAAAAAAAAAAAAAAwECBBEi/9oACAEBAAEFAqZimYrm8rXUWqJIVHP/xAAYEQACAwAAAAAAAAAAAAAAAAAAAgQFFf/aAAgBAwEBPwGHYMaDH//EABcRAAMBAAAAAAAAAAAAAAAAAAABAgP/2gAIAQIBAT8BnV2OT//EABcQAQEBAQAAAAAAAAAAAAAAABABESH/2gAIAQEABj8Ch2Gn/8QAGhABAAMAAwAAAAAAAAAAAAAAAQARITFh8P/aAAgBAQABPyEKt5ioCVXOQUUXAJnUOYKTZ//aAAwDAQACAAMAAAAQEz//xAAZEQEAAgMAAAAAAAAAAAAAAAABABFRoeH/2gAIAQMBAT8QIlQxb5P/xAAYEQACAwAAAAAAAAAAAAAAAAAAESExQf/aAAgBAgEBPxBK9JbP/8QAIBABAAICAgEFAAAAAAAAAAAAAREhADFBgVFxkbHB8f/aAAgBAQABPxA6GALYn0bn9wcrkahmWL7KduKKmXcfDGKRQlEvfv8ARj0gb48TW9YPkEcZ/9k="

    func testJPEGMatchesPillow() throws {
        for c in Self.jpegRefs {
            let jpeg = [UInt8](Data(base64Encoded: c.jpeg)!)
            let want = [UInt8](Data(base64Encoded: c.rgb)!)
            let img = try ImageDecoder.decode(bytes: jpeg, file: "\(c.name).jpg")
            XCTAssertEqual(img.width, c.width); XCTAssertEqual(img.height, c.height)
            var maxDiff = 0, differing = 0
            for i in 0..<want.count {
                let d = abs(Int(want[i]) - Int(img.pixels[i]))
                maxDiff = max(maxDiff, d); if d != 0 { differing += 1 }
            }
            XCTAssertLessThanOrEqual(maxDiff, 1, "\(c.name)")
            XCTAssertEqual(differing, 0, "\(c.name): \(differing) samples differ from Pillow, max \(maxDiff)")
        }
        let prog = [UInt8](Data(base64Encoded: Self.progressiveJPEG)!)
        XCTAssertThrowsError(try ImageDecoder.decode(bytes: prog, file: "p.jpg")) { e in
            XCTAssertTrue("\(e)".contains("p.jpg") && "\(e)".contains("progressive"), "\(e)")
        }
    }

    func testJPEGCorruptInputs() throws {
        let seeds = Self.jpegRefs.map { [UInt8](Data(base64Encoded: $0.jpeg)!) }
        // Truncation at every length of one file.
        for n in 0..<seeds[0].count - 2 {
            do { _ = try ImageDecoder.decode(bytes: Array(seeds[0][0..<n]), file: "t.jpg") } catch let e as MM1Error {
                XCTAssertEqual(e.file, "t.jpg")
            }
        }
        // Huge declared size: refused from the frame header.
        var big = seeds[0]
        if let sof = (0..<(big.count - 1)).first(where: { big[$0] == 0xff && big[$0 + 1] == 0xc0 }) {
            big[sof + 5] = 0xff; big[sof + 6] = 0xff; big[sof + 7] = 0xff; big[sof + 8] = 0xff
            XCTAssertThrowsError(try ImageDecoder.decode(bytes: big, file: "big.jpg",
                                                         limits: ImageDecodeLimits(maxPixels: 1 << 20))) { e in
                XCTAssertTrue("\(e)".contains("limit"), "\(e)")
            }
        } else { XCTFail("no SOF0") }
        var g = SplitMix64(state: 99)
        var decoded = 0, thrown = 0
        for iter in 0..<3000 {
            var b = seeds[iter % seeds.count]
            for _ in 0..<(1 + g.int(4)) {
                switch g.int(3) {
                case 0: b[g.int(b.count)] = UInt8(g.int(256))
                case 1: b[g.int(b.count)] ^= UInt8(1 << g.int(8))
                default: b.removeSubrange((b.count - g.int(min(40, b.count)))..<b.count)
                }
                if b.isEmpty { b = [0] }
            }
            do {
                let img = try ImageDecoder.decode(bytes: b, file: "m.jpg", limits: ImageDecodeLimits(maxPixels: 1 << 20))
                XCTAssertEqual(img.pixels.count, img.width * img.height * 3)
                decoded += 1
            } catch let e as MM1Error {
                XCTAssertEqual(e.file, "m.jpg")
                thrown += 1
            }
        }
        print("jpeg mutations: \(decoded) decoded, \(thrown) refused")
    }
}
