import Crypto
import Foundation
import XCTest
@testable import MM1Pack

final class VerifyTests: XCTestCase {
    static let work: String = {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("mm1pack-verify-tests-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    static func quiet() -> VerifyOptions {
        var o = VerifyOptions()
        o.quiet = true
        return o
    }

    /// An f32 bundle of a fixture, converted once per test run (shared with QuantizeTests).
    static func f32Bundle(_ fixture: String) throws -> String { try QuantizeTests.bundle(fixture) }

    static func quantized(_ fixture: String, bits: Int) throws -> String {
        let out = work + "/\(fixture)-q\(bits).mm1"
        if !FileManager.default.fileExists(atPath: out) {
            var o = QuantizeOptions(recipe: try Recipe.builtIn(bits: bits))
            o.quiet = true
            _ = try Quantizer.quantize(source: try f32Bundle(fixture), output: out, options: o)
        }
        return out
    }

    // MARK: the reference itself

    func testF32BundleAgainstItsOwnSourceIsExactOnEveryLayout() throws {
        for f in TestPaths.fixtureNames {
            var o = VerifyTests.quiet()
            o.reference = TestPaths.fixture(f)
            let r = try Verifier.verify(try VerifyTests.f32Bundle(f), options: o)
            XCTAssertTrue(r.passed, f)
            XCTAssertEqual(r.referenceKind, "live")
            if f == "openclip-vit" {
                XCTAssertNil(r.overall.flatMap { $0.all.count > 0 ? $0 : nil }, f)
                XCTAssertEqual(r.stages.first { $0.stage == "vit.features" }?.nmse, 0, f)
                continue
            }
            let all = try XCTUnwrap(r.overall?.all, f)
            XCTAssertGreaterThan(all.count, 0, f)
            XCTAssertEqual(all.maxKLD, 0, accuracy: 1e-12, f)
            XCTAssertEqual(all.top1, 1, f)
            XCTAssertEqual(all.top5, 1, f)
            XCTAssertEqual(all.maxAbsDeltaLogit, 0, f)
            for s in r.stages { XCTAssertEqual(s.relative, 0, "\(f) \(s.stage)") }
            for e in r.experts { XCTAssertEqual(e.same, e.total, f) }
        }
    }

    func testNarrowedBundleShowsSmallNonZeroError() throws {
        let out = VerifyTests.work + "/honeybee-dense-f16.mm1"
        _ = try Converter.convert(source: TestPaths.fixture("honeybee-dense"), output: out, options: quietOptions(.f16))
        var o = VerifyTests.quiet()
        o.reference = TestPaths.fixture("honeybee-dense")
        let r = try Verifier.verify(out, options: o)
        let all = try XCTUnwrap(r.overall?.all)
        XCTAssertGreaterThan(all.meanKLD, 0)
        XCTAssertLessThan(all.maxKLD, 1e-6)
        XCTAssertTrue(r.passed)
        // Text and image-conditioned positions are reported apart; the image rows come from the probes with images.
        XCTAssertEqual(r.overall!.text.count + r.overall!.image.count, all.count)
        XCTAssertGreaterThan(r.overall!.image.count, 0)
        XCTAssertGreaterThan(r.overall!.text.count, 0)
    }

    /// The KL divergence over the top k and "the rest" never exceeds the full one, and top-1 / top-5 are the same.
    func testTopKReferenceBoundsTheFullDivergence() throws {
        let model = try MultimodalModel(path: try VerifyTests.quantized("llava-llama", bits: 4))
        let refModel = try MultimodalModel(path: try VerifyTests.f32Bundle("llava-llama"))
        let probes = try VerifyProbes.builtIn(model: refModel)
        let full = try VerifyReference.compute(model: refModel, probes: probes, source: "t", logitsTopK: nil, maxRows: nil)
        let top = try VerifyReference.compute(model: refModel, probes: probes, source: "t", logitsTopK: 8, maxRows: nil)
        for (i, p) in probes.enumerated() {
            let cap = try ProbeRunner.run(model, probe: p, maxRows: nil, logitsTopK: nil)
            let a = try ProbeComparison.compare(reference: full.captures[i], packed: cap, file: "t")
            let b = try ProbeComparison.compare(reference: top.captures[i], packed: cap, file: "t")
            XCTAssertEqual(a.tokens.count, b.tokens.count)
            for (x, y) in zip(a.tokens, b.tokens) {
                XCTAssertLessThanOrEqual(y.0.kld, x.0.kld * (1 + 1e-6) + 1e-12)
                XCTAssertEqual(x.0.top1Agrees, y.0.top1Agrees)
                XCTAssertEqual(x.0.top5Common, y.0.top5Common)
                XCTAssertEqual(x.0.deltaTopP, y.0.deltaTopP, accuracy: 1e-7)  // the stored log-sum-exp is f32
            }
            XCTAssertGreaterThan(a.tokens.map(\.0.kld).reduce(0, +), 0)
        }
    }

    func testKLDMatchesAHandComputedValue() {
        // p = softmax([0, ln 3]) = [1/4, 3/4]; q = softmax([0, 0]) = [1/2, 1/2].
        let p: [Float] = [0, Float(log(3.0))], q: [Float] = [0, 0]
        let expected = 0.25 * log(0.25 / 0.5) + 0.75 * log(0.75 / 0.5)
        let t = p.withUnsafeBufferPointer { pp in
            q.withUnsafeBufferPointer { VerifyMath.compare(packed: $0, refFull: pp, refIDs: [], refValues: [], refLSE: 0) }
        }
        XCTAssertEqual(t.kld, expected, accuracy: 1e-7)
        XCTAssertEqual(t.deltaTopP, 0.75 - 0.5, accuracy: 1e-7)
        XCTAssertEqual(VerifyMath.percentile([5, 1, 4, 2, 3], 0.5), 3)
        XCTAssertEqual(VerifyMath.percentile(Array(1...100).map(Double.init), 0.99), 99)
    }

    // MARK: embedded reference

    func testQuantizedBundlesCarryAReferenceAndPassTheirRecipe() throws {
        for f in ["axlearn-moe", "llava-mixtral", "honeybee-dense", "openclip-vit"] {
            for bits in [8, 4] {
                let path = try VerifyTests.quantized(f, bits: bits)
                let r = try Verifier.verify(path, options: VerifyTests.quiet())
                XCTAssertEqual(r.referenceKind, "embedded", f)
                XCTAssertTrue(r.passed, "\(f) int\(bits): \(r.text())")
                XCTAssertTrue(r.thresholds.contains { $0.origin == "recipe mm1-int\(bits)" }, f)
                if f == "openclip-vit" {
                    let nmse = try XCTUnwrap(r.stages.first { $0.stage == "vit.features" }).nmse
                    XCTAssertGreaterThan(nmse, 0)
                    continue
                }
                let all = try XCTUnwrap(r.overall?.all)
                XCTAssertGreaterThan(all.meanKLD, 0, "\(f) int\(bits) must differ from the fp reference")
                XCTAssertLessThan(all.meanKLD, bits == 8 ? 1e-5 : 1e-3, f)
                if bits == 8 { XCTAssertGreaterThanOrEqual(all.top1, 0.98, f) }  // near-ties of random-init models may flip
            }
        }
    }

    /// The embedded reference comes from the unquantized model: verifying the f32 bundle it was computed from
    /// with the q4 bundle's own stored probes gives the same numbers as the embedded check.
    func testEmbeddedReferenceEqualsALiveRunOfTheSourceBundle() throws {
        let q4 = try VerifyTests.quantized("axlearn-moe", bits: 4)
        let embedded = try Verifier.verify(q4, options: VerifyTests.quiet())
        var o = VerifyTests.quiet()
        o.reference = try VerifyTests.f32Bundle("axlearn-moe")
        let live = try Verifier.verify(q4, options: o)
        XCTAssertEqual(embedded.overall!.all.count, live.overall!.all.count)
        XCTAssertEqual(embedded.overall!.all.meanKLD, live.overall!.all.meanKLD, accuracy: 1e-9)
        XCTAssertEqual(embedded.overall!.all.top1, live.overall!.all.top1)
        // Sampled rows (embedded) against all rows (live): the same stages, errors of the same size.
        XCTAssertEqual(embedded.stages.map(\.stage), live.stages.map(\.stage))
        for (a, b) in zip(embedded.stages, live.stages) {
            XCTAssertEqual(a.relative, b.relative, accuracy: 0.5 * b.relative + 1e-9, a.stage)
        }
    }

    func testVerifyWorksWithTheSourceDeleted() throws {
        let dir = VerifyTests.work + "/deleted"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: TestPaths.fixture("llava-llama"), toPath: dir + "/src")
        _ = try VerifyReference.convert(source: dir + "/src", output: dir + "/m.mm1", options: quietOptions(.f16), probes: "built-in")
        var q = QuantizeOptions(recipe: try Recipe.builtIn(bits: 4))
        q.quiet = true
        _ = try Quantizer.quantize(source: dir + "/m.mm1", output: dir + "/m-q4.mm1", options: q)
        try FileManager.default.removeItem(atPath: dir + "/src")
        try FileManager.default.removeItem(atPath: dir + "/m.mm1")
        let r = try Verifier.verify(dir + "/m-q4.mm1", options: VerifyTests.quiet())
        XCTAssertTrue(r.passed)
        // The reference was carried over from the conversion: the f32 source, not the f16 bundle.
        XCTAssertTrue(r.referenceDescription.contains("source checkpoint src"), r.referenceDescription)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["m-q4.mm1"])
    }

    func testConvertWithProbesStoresTheF32SourceReference() throws {
        let out = VerifyTests.work + "/probes-f16.mm1"
        _ = try VerifyReference.convert(source: TestPaths.fixture("honeybee-moe"), output: out, options: quietOptions(.f16),
                                        probes: TestPaths.fixture("honeybee-moe") + "/reference/probes.jsonl")
        let r = try Verifier.verify(out, options: VerifyTests.quiet())
        let all = try XCTUnwrap(r.overall?.all)
        XCTAssertGreaterThan(all.meanKLD, 0, "f16 rounding must show against the f32 source")
        XCTAssertTrue(r.passed)
        let ref = try XCTUnwrap(try VerifyReference.load(from: BundleReader(path: out)))
        XCTAssertEqual(ref.probes.map(\.id), try ProbeFile.load(TestPaths.fixture("honeybee-moe") + "/reference/probes.jsonl").map(\.id))
        XCTAssertEqual(ref.maxRows, VerifyReference.defaultMaxRows)
        XCTAssertNil(ref.logitsTopK, "a 96-token vocabulary is stored whole")
        XCTAssertTrue(r.probes.contains { $0.tokens.image.count > 0 })
    }

    func testQuantizeHoldsOutCalibrationLinesAsProbesOrStoresNone() throws {
        let calib = TestPaths.fixture("llava-mixtral") + "/reference/probes.jsonl"
        let all = try ProbeFile.load(calib).map(\.id)
        var o = QuantizeOptions(recipe: try Recipe.builtIn(bits: 8))
        o.quiet = true
        o.calibrationPath = calib
        o.samples = 1
        let held = VerifyTests.work + "/held-out.mm1"
        _ = try Quantizer.quantize(source: try VerifyTests.f32Bundle("llava-mixtral"), output: held, options: o)
        let ref = try XCTUnwrap(try VerifyReference.load(from: BundleReader(path: held)))
        XCTAssertEqual(ref.probes.map(\.id), Array(all.dropFirst(1).prefix(3)), "the lines after the calibration sample")
        XCTAssertTrue(ref.source.contains("held out"), ref.source)
        XCTAssertTrue(try Verifier.verify(held, options: VerifyTests.quiet()).passed)

        o.probes = .none
        let none = VerifyTests.work + "/no-probes.mm1"
        _ = try Quantizer.quantize(source: try VerifyTests.f32Bundle("llava-mixtral"), output: none, options: o)
        XCTAssertNil(try VerifyReference.load(from: BundleReader(path: none)))
        XCTAssertFalse(try BundleReader(path: none).sections.contains { $0.name.hasPrefix("verify.") })
    }

    func testBundleWithoutReferenceNeedsReference() throws {
        XCTAssertThrowsError(try Verifier.verify(try VerifyTests.f32Bundle("llama-text"), options: VerifyTests.quiet())) { e in
            XCTAssertTrue("\(e)".contains("--reference"), "\(e)")
        }
        var o = VerifyTests.quiet()
        o.integrityOnly = true
        let r = try Verifier.verify(try VerifyTests.f32Bundle("llama-text"), options: o)
        XCTAssertTrue(r.passed)
        XCTAssertTrue(r.integrityOnly)
    }

    func testThresholdOverridesAndUnknownRecipeMetrics() throws {
        var o = VerifyTests.quiet()
        o.overrides[.maxMeanKLD] = 1e-12
        o.overrides[.minExpertAgreement] = 1.0
        let r = try Verifier.verify(try VerifyTests.quantized("axlearn-moe", bits: 4), options: o)
        XCTAssertFalse(r.passed)
        let t = try XCTUnwrap(r.thresholds.first { $0.metric == .maxMeanKLD })
        XCTAssertEqual(t.origin, "--max-mean-kld")
        XCTAssertFalse(t.passed)
        XCTAssertTrue(t.excess.contains("× the limit"))
        XCTAssertTrue(r.text().contains("FAIL  mean KLD"))
        XCTAssertTrue(r.thresholds.contains { $0.metric == .minTop1 && $0.origin == "recipe mm1-int4" })
    }

    // MARK: damage

    /// A copy of `src` whose tensor `name` has its bytes changed by `edit`, its digest left stale (the header is
    /// untouched).
    static func staleCopy(_ src: String, _ dst: String, tensor name: String, edit: (inout [UInt8]) -> Void) throws {
        let b = try BundleReader(path: src)
        let t = try XCTUnwrap(b.tensor(named: name))
        var all = [UInt8](try Data(contentsOf: URL(fileURLWithPath: src)))
        var bytes = Array(all[t.offset..<(t.offset + t.length)])
        edit(&bytes)
        all.replaceSubrange(t.offset..<(t.offset + t.length), with: bytes)
        try Data(all).write(to: URL(fileURLWithPath: dst))
    }

    /// A copy of `src` whose tensor `name` has its bytes changed by `edit` and a correct digest, so that only the
    /// numbers betray it.
    static func resealedCopy(_ src: String, _ dst: String, tensor name: String, edit: (inout [UInt8], BundleTensor) -> Void) throws {
        let b = try BundleReader(path: src)
        let w = try BundleWriter(path: dst, tensors: b.tensors.map(BundleWriter.TensorEntry.init), sections: try BundleWriter.Section.all(of: b), config: b.config, provenance: b.provenance, metadata: b.metadata)
        for t in b.tensors {
            try w.beginTensor(t.name)
            var bytes = [UInt8](t.data)
            if t.name == name { edit(&bytes, t) }
            try bytes.withUnsafeBytes { try w.write($0) }
        }
        try w.finish()
    }

    func testStaleDigestIsAnErrorNamingTheTensor() throws {
        let src = try VerifyTests.quantized("axlearn-moe", bits: 4)
        let dst = VerifyTests.work + "/stale.mm1"
        let name = "llm.layers.2.attn.o.weight"
        try VerifyTests.staleCopy(src, dst, tensor: name) { $0[7] ^= 0xFF }
        XCTAssertThrowsError(try Verifier.verify(dst, options: VerifyTests.quiet())) { e in
            XCTAssertTrue("\(e)".contains("tensor '\(name)'"), "\(e)")
            XCTAssertTrue("\(e)".contains("stale.mm1"), "\(e)")
        }
        var o = VerifyTests.quiet()
        o.integrityOnly = true
        XCTAssertThrowsError(try Verifier.verify(dst, options: o))
    }

    func testResealedDamageFailsAndPointsAtTheDamagedLayer() throws {
        // Each with the digest recomputed, so integrity passes and only the numbers fail; the stage where the
        // error grows most must be the damaged one:
        // - int4: the high byte of one group's f16 scale set to a huge exponent (one byte changed);
        // - f32: one byte flipped, the sign and exponent byte of the first weight (0.02 becomes about 100);
        // - int8: a ViT weight scaled by 16 (4 added to the exponent of every f16 scale).
        let cases: [(fixture: String, bits: Int?, tensor: String, stage: String, edit: (inout [UInt8], BundleTensor) -> Void)] = [
            ("axlearn-moe", 4, "llm.layers.2.attn.o.weight", "llm.layers.2", { b, t in
                let i = t.quant!.scales.lowerBound + 1
                b[i] = (b[i] & 0x83) | 0x78
            }),
            ("llava-llama", nil, "llm.layers.1.mlp.down.weight", "llm.layers.1", { b, _ in b[3] ^= 0xFF }),
            ("honeybee-dense", 8, "vit.blocks.1.mlp.fc1.weight", "vit.blocks.1", { b, t in
                for i in stride(from: t.quant!.scales.lowerBound, to: t.quant!.scales.upperBound, by: 2) {
                    let h = UInt16(b[i]) | UInt16(b[i + 1]) << 8
                    let scaled = h & 0x7C00 == 0 ? h : h + 0x1000  // normal values only; these stay far from overflow
                    (b[i], b[i + 1]) = (UInt8(scaled & 0xFF), UInt8(scaled >> 8))
                }
            }),
        ]
        for c in cases {
            var src: String
            if let bits = c.bits {
                src = try VerifyTests.quantized(c.fixture, bits: bits)
            } else {
                src = VerifyTests.work + "/\(c.fixture)-ref.mm1"
                _ = try VerifyReference.convert(source: TestPaths.fixture(c.fixture), output: src, options: quietOptions(.f32), probes: "built-in")
            }
            let dst = VerifyTests.work + "/resealed-\(c.fixture).mm1"
            try VerifyTests.resealedCopy(src, dst, tensor: c.tensor, edit: c.edit)
            let r = try Verifier.verify(dst, options: VerifyTests.quiet())
            XCTAssertFalse(r.passed, "\(c.fixture): \(r.text())")
            XCTAssertEqual(r.largestGrowth?.stage, c.stage, "\(c.fixture): \(r.text())")
            XCTAssertTrue(r.text().contains("grows most at \(c.stage)"), r.text())
        }
    }

    /// A weight made infinite behind a recomputed digest makes the model compute NaN: verify must fail (not pass,
    /// not crash) and still write its reports.
    func testNonFiniteOutputsFailAndStillReport() throws {
        let src = try VerifyTests.quantized("llama-text", bits: 8)
        let dst = VerifyTests.work + "/inf.mm1"
        try VerifyTests.resealedCopy(src, dst, tensor: "llm.layers.0.attn.o.weight") { b, t in
            let i = t.quant!.scales.lowerBound
            (b[i], b[i + 1]) = (0x00, 0x7C)  // +inf as the first group's f16 scale
        }
        let r = try Verifier.verify(dst, options: VerifyTests.quiet())
        XCTAssertFalse(r.passed)
        XCTAssertTrue(r.thresholds.contains { $0.metric == .maxMeanKLD && !$0.passed })
        XCTAssertNoThrow(try CanonicalJSON.bytes(r.jsonSanitized()))
        XCTAssertTrue(r.html().contains("FAIL"))
    }

    // MARK: the command

    /// The built `mm1pack` executable next to the test bundle.
    static var executable: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("mm1pack").path
    }

    static func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        try p.run()
        let out = o.fileHandleForReading.readDataToEndOfFile(), err = e.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    func testExitStatusesAndReports() throws {
        guard FileManager.default.isExecutableFile(atPath: VerifyTests.executable) else {
            return XCTFail("no mm1pack executable at \(VerifyTests.executable); build the package first")
        }
        let q4 = try VerifyTests.quantized("axlearn-moe", bits: 4)
        let json = VerifyTests.work + "/r.json", html = VerifyTests.work + "/r.html"
        let ok = try VerifyTests.run(["verify", q4, "--json", json, "--html", html])
        XCTAssertEqual(ok.status, 0, ok.out + ok.err)
        XCTAssertTrue(ok.out.contains("verify: PASS"))
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        XCTAssertEqual(j["passed"] as? Bool, true)
        XCTAssertEqual((j["stages"] as? [Any])?.count, 8)  // 2 ViT blocks, ViT output, connector, 4 LLM layers
        let page = try String(contentsOfFile: html, encoding: .utf8)
        XCTAssertTrue(page.contains("<svg") && page.contains("class=\"total\""))
        XCTAssertEqual(page.components(separatedBy: "<polyline").count - 1, 4)  // all probes + 3 probes

        let fail = try VerifyTests.run(["verify", q4, "--max-mean-kld", "1e-12", "-q"])
        XCTAssertEqual(fail.status, 1)
        let stale = VerifyTests.work + "/cli-stale.mm1"
        try VerifyTests.staleCopy(q4, stale, tensor: "llm.layers.0.mlp.up.weight") { $0[0] ^= 1 }
        let bad = try VerifyTests.run(["verify", stale, "-q"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.err.contains("llm.layers.0.mlp.up.weight"), bad.err)
        let missing = try VerifyTests.run(["verify", VerifyTests.work + "/nope.mm1"])
        XCTAssertEqual(missing.status, 2)
    }
}
