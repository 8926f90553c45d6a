import Foundation
import XCTest
@testable import MM1Pack

/// Image encoder and connectors against the PyTorch references in `fixtures/<name>/reference/`
/// (scripts/make_references.py), plus unit tests of the convolution, pooling and interpolation kernels.
final class VisionTests: XCTestCase {
    static let imageFixtures = ["llava-llama", "llava-mixtral", "honeybee-dense", "honeybee-moe", "axlearn-dense",
                                "axlearn-moe", "openclip-vit"]

    /// max |a − b|
    func maxAbsDiff(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
        precondition(a.count == b.count)
        return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
    }

    func maxAbs(_ a: ArraySlice<Float>) -> Float { a.reduce(0) { max($0, abs($1)) } }

    // MARK: Fixtures against PyTorch

    func testEncoderAndConnectorMatchReferences() throws {
        let out = makeTempDir("vision")
        var table: [String] = []
        var checked = 0
        for fixture in Self.imageFixtures {
            let refDir = TestPaths.fixture(fixture) + "/reference"
            guard let files = try? FileManager.default.contentsOfDirectory(atPath: refDir) else {
                XCTFail("\(fixture): no reference directory \(refDir)")
                continue
            }
            let bundlePath = "\(out)/\(fixture).mm1"
            _ = try Converter.convert(source: TestPaths.fixture(fixture), output: bundlePath, options: quietOptions(.f32))
            let weights = try ModelWeights(path: bundlePath)
            let encoder = try VisionEncoder(weights: weights)
            let connector = weights.config["connector"] is [String: Any] ? try Connector(weights: weights) : nil
            let probes = files.filter { $0.hasSuffix(".pixel_values.npy") }.map { String($0.dropLast(".pixel_values.npy".count)) }.sorted()
            XCTAssertFalse(probes.isEmpty, "\(fixture): no image probes")
            for probe in probes {
                let px = try NPY.read("\(refDir)/\(probe).pixel_values.npy")
                let vf = try NPY.read("\(refDir)/\(probe).vit_features.npy")
                XCTAssertEqual(px.shape.count, 4)
                let (n, c, s) = (px.shape[0], px.shape[1], px.shape[2])
                XCTAssertEqual(px.shape[3], s)
                XCTAssertEqual(vf.shape[0], n)
                let per = c * s * s, fPer = vf.shape[1] * vf.shape[2]
                var vitErr: Float = 0, vitRef: Float = 0, connErr: Float = 0, connRef: Float = 0
                let conn = connector == nil ? nil : try NPY.read("\(refDir)/\(probe).connector.npy")
                for i in 0..<n {
                    let r = try encoder.forward(pixels: Array(px.data[(i * per)..<((i + 1) * per)]), size: s)
                    XCTAssertEqual([r.tokens, r.width], Array(vf.shape[1...]), "\(fixture) \(probe) features shape")
                    guard r.features.count == fPer else { continue }
                    let ref = vf.data[(i * fPer)..<((i + 1) * fPer)]
                    vitErr = max(vitErr, maxAbsDiff(r.features[...], ref))
                    vitRef = max(vitRef, maxAbs(ref))
                    if let connector, let conn {
                        let y = try connector.forward(features: Array(ref), tokens: vf.shape[1])
                        let cPer = conn.shape[1] * conn.shape[2]
                        XCTAssertEqual(y.count, cPer, "\(fixture) \(probe) connector shape")
                        guard y.count == cPer else { continue }
                        let cref = conn.data[(i * cPer)..<((i + 1) * cPer)]
                        connErr = max(connErr, maxAbsDiff(y[...], cref))
                        connRef = max(connRef, maxAbs(cref))
                    }
                }
                XCTAssertLessThanOrEqual(vitErr, 1e-4 * max(1, vitRef), "\(fixture) \(probe) vit_features")
                XCTAssertLessThanOrEqual(connErr, 1e-4 * max(1, connRef), "\(fixture) \(probe) connector")
                table.append(String(format: "%-15@ %-11@ images %d  vit max|Δ| %.3g (max|ref| %.3g)  connector max|Δ| %@",
                                    fixture as NSString, probe as NSString, n, vitErr, vitRef,
                                    connector == nil ? "—" : String(format: "%.3g (max|ref| %.3g)", connErr, connRef)))
                checked += 1
            }
        }
        print("VisionTests errors:\n" + table.joined(separator: "\n"))
        XCTAssertGreaterThanOrEqual(checked, Self.imageFixtures.count)
    }

    /// Stopping at `feature_layer` runs only the blocks needed; the hooks see exactly those.
    func testFeatureLayerStopsEarly() throws {
        let out = makeTempDir("vision-fl")
        let path = "\(out)/llava.mm1"
        _ = try Converter.convert(source: TestPaths.fixture("llava-llama"), output: path, options: quietOptions(.f32))
        let enc = try VisionEncoder(path: path)
        let layers = enc.numLayers
        let fl = enc.featureLayer
        XCTAssertEqual(enc.blocksToRun, fl < 0 ? layers + 1 + fl : fl)
        let rec = HookRecorder()
        let s = enc.imageSize
        var rng = SplitMix64(seed: 3)
        let px = (0..<(3 * s * s)).map { _ in rng.uniform() }
        let r = try enc.forward(pixels: px, size: s, hooks: rec)
        let blocks = rec.order.filter { $0.description.hasPrefix("vit.blocks.") }
        XCTAssertEqual(blocks.count, enc.blocksToRun)
        XCTAssertEqual(rec[.named("vit.features")]?.data, r.features)
    }

    // MARK: Kernels

    func testAdaptivePoolBins() {
        XCTAssertEqual(Conv.adaptiveBins(input: 7, output: 3), [0..<3, 2..<5, 4..<7])
        for (n, m) in [(7, 3), (27, 12), (24, 12), (48, 12), (5, 5), (3, 7)] {
            let bins = Conv.adaptiveBins(input: n, output: m)
            XCTAssertEqual(bins.count, m)
            for (i, b) in bins.enumerated() {
                let start = Int((Double(i * n) / Double(m)).rounded(.down))
                let end = Int((Double((i + 1) * n) / Double(m)).rounded(.up))
                XCTAssertEqual(b, start..<end, "\(n)→\(m) bin \(i)")
            }
        }
        // 27 → 12: twelve windows of 3 (36 taps over 27 inputs), so neighbours overlap.
        let b = Conv.adaptiveBins(input: 27, output: 12)
        XCTAssertEqual(b[0], 0..<3)
        XCTAssertEqual(b[1], 2..<5)
        XCTAssertEqual(b[11], 24..<27)
        XCTAssertEqual(Set(b.map(\.count)), [3])
        XCTAssertEqual(b[3], 6..<9)
        XCTAssertEqual(b[4], 9..<12)

        // Pool values against a direct loop.
        var rng = SplitMix64(seed: 7)
        let (h, w, c) = (7, 7, 5)
        let x = (0..<(h * w * c)).map { _ in rng.uniform() }
        let y = Conv.adaptiveAvgPool(x, height: h, width: w, channels: c, outHeight: 3, outWidth: 3)
        let bins = Conv.adaptiveBins(input: 7, output: 3)
        for oy in 0..<3 { for ox in 0..<3 { for ch in 0..<c {
            var s: Double = 0
            for iy in bins[oy] { for ix in bins[ox] { s += Double(x[(iy * w + ix) * c + ch]) } }
            s /= Double(bins[oy].count * bins[ox].count)
            XCTAssertEqual(Double(y[(oy * 3 + ox) * c + ch]), s, accuracy: 1e-6)
        } } }
    }

    func testDepthwiseConvMatchesDirectLoop() {
        var rng = SplitMix64(seed: 11)
        for (h, w, c, k, pad) in [(5, 6, 7, 3, 1), (3, 3, 16, 3, 1), (6, 4, 3, 3, 0), (4, 5, 9, 5, 2)] {
            // NCHW input for the direct loop, channels-last copy for the kernel.
            let nchw = (0..<(c * h * w)).map { _ in rng.uniform() }
            let weight = (0..<(c * k * k)).map { _ in rng.uniform() }
            let bias = (0..<c).map { _ in rng.uniform() }
            var nhwc = [Float](repeating: 0, count: h * w * c)
            for ch in 0..<c { for y in 0..<h { for x in 0..<w { nhwc[(y * w + x) * c + ch] = nchw[(ch * h + y) * w + x] } } }
            let r = Conv.depthwise(nhwc, height: h, width: w, channels: c, weight: weight, kernel: k, padding: pad, bias: bias)
            let oh = h + 2 * pad - k + 1, ow = w + 2 * pad - k + 1
            XCTAssertEqual(r.height, oh)
            XCTAssertEqual(r.width, ow)
            var err: Double = 0
            for ch in 0..<c { for oy in 0..<oh { for ox in 0..<ow {
                var s = Double(bias[ch])
                for ky in 0..<k { for kx in 0..<k {
                    let iy = oy - pad + ky, ix = ox - pad + kx
                    if iy >= 0 && iy < h && ix >= 0 && ix < w {
                        s += Double(weight[(ch * k + ky) * k + kx]) * Double(nchw[(ch * h + iy) * w + ix])
                    }
                } }
                err = max(err, abs(s - Double(r.output[(oy * ow + ox) * c + ch])))
            } } }
            XCTAssertLessThan(err, 1e-5, "depthwise \(h)×\(w)×\(c) k\(k) p\(pad)")
        }
    }

    func testPatchEmbedMatchesDirectConvolution() {
        var rng = SplitMix64(seed: 5)
        let (c, h, w, p, e) = (3, 10, 9, 4, 6)  // 2×2 patches; the ragged edge is ignored, as in PyTorch
        let img = (0..<(c * h * w)).map { _ in rng.uniform() }
        let weight = (0..<(e * c * p * p)).map { _ in rng.uniform() }
        let bias = (0..<e).map { _ in rng.uniform() }
        let r = Conv.patchEmbed(img, channels: c, height: h, width: w, patch: p, weight: weight, out: e, bias: bias)
        XCTAssertEqual(r.gh, 2)
        XCTAssertEqual(r.gw, 2)
        for gy in 0..<2 { for gx in 0..<2 { for o in 0..<e {
            var s = Double(bias[o])
            for ch in 0..<c { for ky in 0..<p { for kx in 0..<p {
                s += Double(weight[((o * c + ch) * p + ky) * p + kx]) * Double(img[(ch * h + gy * p + ky) * w + gx * p + kx])
            } } }
            XCTAssertEqual(Double(r.tokens[(gy * 2 + gx) * e + o]), s, accuracy: 1e-5)
        } } }
    }

    /// Heads run concurrently (DispatchQueue.concurrentPerform, sgemm per head) and must equal a serial loop.
    func testAttentionMatchesDirectLoop() {
        var rng = SplitMix64(seed: 23)
        for _ in 0..<3 {
            let (t, nh, dh) = (57, 8, 16)
            let e = nh * dh
            let q = (0..<(t * e)).map { _ in rng.uniform() }
            let k = (0..<(t * e)).map { _ in rng.uniform() }
            let v = (0..<(t * e)).map { _ in rng.uniform() }
            let y = VisionEncoder.attention(q: q, k: k, v: v, tokens: t, heads: nh, width: e)
            var err: Double = 0
            for h in 0..<nh { for i in 0..<t {
                var s = [Double](repeating: 0, count: t)
                for j in 0..<t {
                    for d in 0..<dh { s[j] += Double(q[i * e + h * dh + d]) * Double(k[j * e + h * dh + d]) }
                    s[j] /= Double(dh).squareRoot()
                }
                let m = s.max()!
                let z = s.map { Foundation.exp($0 - m) }, sum = z.reduce(0, +)
                for d in 0..<dh {
                    var o = 0.0
                    for j in 0..<t { o += z[j] / sum * Double(v[j * e + h * dh + d]) }
                    err = max(err, abs(o - Double(y[i * e + h * dh + d])))
                }
            } }
            XCTAssertLessThan(err, 1e-5)
        }
    }

    /// Direct 2-D cubic convolution: every output sums 4×4 clamped taps weighted by W(dy)·W(dx).
    func directBicubic(_ x: [Float], c: Int, ih: Int, iw: Int, oh: Int, ow: Int) -> [Double] {
        let a = -0.75
        func kernel(_ d: Double) -> Double {
            let t = abs(d)
            if t <= 1 { return ((a + 2) * t - (a + 3)) * t * t + 1 }
            if t < 2 { return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a }
            return 0
        }
        var y = [Double](repeating: 0, count: oh * ow * c)
        for oy in 0..<oh { for ox in 0..<ow {
            let sy = Double(ih) / Double(oh) * (Double(oy) + 0.5) - 0.5
            let sx = Double(iw) / Double(ow) * (Double(ox) + 0.5) - 0.5
            let fy = Int(sy.rounded(.down)), fx = Int(sx.rounded(.down))
            for ch in 0..<c {
                var s = 0.0
                for jy in (fy - 1)...(fy + 2) { for jx in (fx - 1)...(fx + 2) {
                    let cy = min(max(jy, 0), ih - 1), cx = min(max(jx, 0), iw - 1)
                    s += kernel(sy - Double(jy)) * kernel(sx - Double(jx)) * Double(x[(cy * iw + cx) * c + ch])
                } }
                y[(oy * ow + ox) * c + ch] = s
            }
        } }
        return y
    }

    func testBicubicMatchesDirectCubicConvolution() {
        var rng = SplitMix64(seed: 13)
        for (ih, iw, oh, ow) in [(7, 7, 12, 12), (27, 27, 48, 48), (5, 5, 3, 3), (2, 3, 4, 2), (24, 24, 37, 30)] {
            let c = 4
            let x = (0..<(ih * iw * c)).map { _ in rng.uniform() }
            let y = Interpolate.bicubic(x, channels: c, inHeight: ih, inWidth: iw, outHeight: oh, outWidth: ow)
            let d = directBicubic(x, c: c, ih: ih, iw: iw, oh: oh, ow: ow)
            XCTAssertEqual(y.count, d.count)
            let err = zip(y, d).reduce(0.0) { max($0, abs(Double($1.0) - $1.1)) }
            XCTAssertLessThan(err, 1e-5, "bicubic \(ih)×\(iw)→\(oh)×\(ow)")
        }
    }

    /// Values from torch 2.15 `F.interpolate(x, size=(oh, ow), mode="bicubic", align_corners=False)` with
    /// x[c, y, x] = sin(1.3y + 0.7x + c) + 0.1·y·x, flattened channels-last.
    func testBicubicMatchesTorch() {
        let cases: [((Int, Int, Int, Int), [Float])] = [
            ((3, 3, 5, 5), [-0.159862, 0.83021164, 0.15018022, 0.9543345, 0.60917014, 1.0637172, 0.91101086, 0.90050894,
                            1.0592475, 0.74396461, 0.36298093, 0.90143269, 0.57602268, 0.87677449, 0.85549557, 0.76937759,
                            0.92572343, 0.47460684, 0.92332041, 0.25702339, 0.95916736, 0.79414541, 1.0088029, 0.59103477,
                            1.0092974, 0.24112001, 0.77885711, -0.14463522, 0.59071594, -0.38464797, 0.78896081, 0.051013764,
                            0.66851664, -0.13727483, 0.44375268, -0.39877817, 0.14905712, -0.51623505, -0.04339014,
                            -0.55620909, 0.52270281, -0.53244853, 0.29838729, -0.67051721, -0.050581776, -0.80806547,
                            -0.33347249, -0.6871568, -0.48975152, -0.55911058]),
            ((4, 4, 3, 3), [0.22336285, 0.86219323, 0.90399939, 0.77950001, 0.78592408, 0.010446143, 0.90700883, 0.12142742,
                            0.37138334, -0.56002879, -0.29634136, -0.53305757, -0.54048431, -0.86531657, -0.51250845,
                            -0.015722541, 0.36697921, 1.2370725]),
            ((2, 3, 4, 2), [0.043953292, 0.9114176, 0.95349193, 0.85475093, 0.32730496, 0.83333778, 0.88201505, 0.53248107,
                            0.79400188, 0.70473576, 0.76428854, 0.0016836103, 1.0773535, 0.626656, 0.69281161, -0.32058626]),
        ]
        for ((ih, iw, oh, ow), expected) in cases {
            let c = 2
            var x = [Float](repeating: 0, count: ih * iw * c)
            for y in 0..<ih { for xx in 0..<iw { for ch in 0..<c {
                x[(y * iw + xx) * c + ch] = Float(sin(1.3 * Double(y) + 0.7 * Double(xx) + Double(ch)) + 0.1 * Double(y * xx))
            } } }
            let y = Interpolate.bicubic(x, channels: c, inHeight: ih, inWidth: iw, outHeight: oh, outWidth: ow)
            XCTAssertEqual(y.count, expected.count)
            let err = zip(y, expected).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            XCTAssertLessThan(err, 2e-6, "torch bicubic \(ih)×\(iw)→\(oh)×\(ow)")
        }
    }

    func testPositionEmbeddingIdentityAndClassRow() throws {
        var rng = SplitMix64(seed: 17)
        let (g, e) = (7, 8)
        let pos = (0..<((g * g + 1) * e)).map { _ in rng.uniform() }
        XCTAssertEqual(try Interpolate.positionEmbedding(pos, width: e, classToken: true, toHeight: g, width: g), pos)
        XCTAssertEqual(Interpolate.bicubic(Array(pos[e...]), channels: e, inHeight: g, inWidth: g, outHeight: g, outWidth: g),
                       Array(pos[e...]))
        // The identity also holds through the general path (t = 0 gives weights 0, 1, 0, 0).
        XCTAssertEqual(Interpolate.cubicWeights(0).0, 0)
        XCTAssertEqual(Interpolate.cubicWeights(0).1, 1)
        XCTAssertEqual(Interpolate.cubicWeights(0).2, 0)
        XCTAssertEqual(Interpolate.cubicWeights(0).3, 0)
        let resized = try Interpolate.positionEmbedding(pos, width: e, classToken: true, toHeight: 12, width: 12)
        XCTAssertEqual(resized.count, (144 + 1) * e)
        XCTAssertEqual(Array(resized[0..<e]), Array(pos[0..<e]), "class-token row kept aside")
        let grid = Interpolate.bicubic(Array(pos[e...]), channels: e, inHeight: g, inWidth: g, outHeight: 12, outWidth: 12)
        XCTAssertEqual(Array(resized[e...]), grid)
        let noCls = try Interpolate.positionEmbedding(Array(pos[e...]), width: e, classToken: false, toHeight: 12, width: 12)
        XCTAssertEqual(noCls, grid)
    }

    /// A forward pass at a resolution other than the trained one resizes the position embeddings.
    func testEncoderRunsAtOtherResolution() throws {
        let out = makeTempDir("vision-res")
        let path = "\(out)/openclip.mm1"
        _ = try Converter.convert(source: TestPaths.fixture("openclip-vit"), output: path, options: quietOptions(.f32))
        let enc = try VisionEncoder(path: path)
        var rng = SplitMix64(seed: 19)
        let s = enc.imageSize + 2 * enc.patchSize
        let px = (0..<(3 * s * s)).map { _ in rng.uniform() }
        let r = try enc.forward(pixels: px, size: s)
        XCTAssertEqual(r.tokens, enc.outputTokens(size: s))
        XCTAssertTrue(r.features.allSatisfy(\.isFinite))
    }
}

