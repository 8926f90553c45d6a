import Foundation
import XCTest
@testable import MM1Pack

/// The GGUF writer and the GGUF reader were written independently (from the GGUF specification); each undoes the
/// other. A bundle exported to GGUF and converted back must give the same logits: Q4_0/Q8_0 blocks carry the
/// bundle's codes and scales, so dequantization is exact, and the q/k rows go through llama.cpp's RoPE order and
/// back.
final class GGUFRoundTripTests: XCTestCase {
    func testExportThenImportGivesTheSameLogits() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mm1pack-gguf-roundtrip-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (fixture, recipe) in [("llama-text", "gguf-q4_0"), ("llava-mixtral", "gguf-q8_0"), ("llava-llama", nil)] {
            let f32 = dir + "/\(fixture).mm1"
            _ = try Converter.convert(source: TestPaths.fixture(fixture), output: f32, options: quietOptions(.f32))
            var bundle = f32
            if let recipe {
                var o = QuantizeOptions(recipe: try Recipe(path: TestPaths.repo + "/recipes/\(recipe).json"))
                o.method = .rtn
                o.quiet = true
                o.probes = .none
                bundle = dir + "/\(fixture)-\(recipe).mm1"
                _ = try Quantizer.quantize(source: f32, output: bundle, options: o)
            }
            var e = GGUFExportOptions()
            e.showProgress = false
            e.requantize = .f32  // tensors without an exact GGUF block type (groups of 24 on the tiny fixtures) go as their exact f32 values
            let gguf = dir + "/\(fixture).gguf"
            _ = try GGUFExport.exportLanguageModel(bundle: bundle, output: gguf, options: e)
            let back = dir + "/\(fixture)-back.mm1"
            _ = try Converter.convert(source: gguf, output: back, options: quietOptions(.f32))

            let a = try MultimodalModel(path: bundle), b = try MultimodalModel(path: back)
            let ids = Array(0..<24).map { ($0 * 7 + 3) % a.llm!.config.vocabSize }.filter { !a.isImageToken($0) }
            let la = try a.llm!.forward(ids: ids), lb = try b.llm!.forward(ids: ids)
            XCTAssertEqual(la.count, lb.count, fixture)
            let scale = la.map { abs($0) }.max()!
            let worst = zip(la, lb).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(worst, 1e-5 * max(1, scale), "\(fixture) \(recipe ?? "f32"): max |Δlogit| \(worst)")
            // The weights themselves: every LLM matrix equal after the round trip (q/k un-permuted back).
            let wa = try ModelWeights(path: bundle), wb = try ModelWeights(path: back)
            for name in ["llm.layers.0.attn.q.weight", "llm.layers.0.attn.k.weight", "llm.layers.1.attn.o.weight"] {
                XCTAssertEqual(try wa.f32(name), try wb.f32(name), "\(fixture) \(name)")
            }
        }
    }
}
