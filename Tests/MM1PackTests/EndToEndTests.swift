import Foundation
import XCTest
@testable import MM1Pack

/// The whole pipeline as a user runs it — image files decoded and preprocessed by mm1pack, ViT, connector,
/// splicing, language model — against the logits PyTorch computed (scripts/make_references.py).
final class EndToEndTests: XCTestCase {
    func compare(_ got: [Float], _ ref: [Float], _ what: String) {
        XCTAssertEqual(got.count, ref.count, what)
        guard got.count == ref.count else { return }
        let scale = max(1, ref.map(abs).max() ?? 0)
        let err = zip(got, ref).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(err, 1e-4 * scale, "\(what): max |Δ| \(err)")
    }

    func testLogitsFromImageFilesMatchPyTorch() throws {
        let dir = makeTempDir("e2e")
        for fixture in TestPaths.fixtureNames {
            let refDir = TestPaths.fixture(fixture) + "/reference"
            let bundle = dir + "/\(fixture).mm1"
            _ = try Converter.convert(source: TestPaths.fixture(fixture), output: bundle, options: quietOptions())
            let model = try MultimodalModel(path: bundle)
            var files = ["probes.jsonl"]
            if FileManager.default.fileExists(atPath: refDir + "/probes_text.jsonl") { files.append("probes_text.jsonl") }
            for file in files {
                for probe in try ProbeFile.load(refDir + "/" + file) {
                    let r = try model.run(probe)
                    let refName = model.llm == nil ? "vit_features" : "logits"
                    let ref = try NPY.read(refDir + "/\(probe.id).\(refName).npy")
                    XCTAssertEqual(r.shape.reduce(1, *), ref.shape.reduce(1, *), "\(fixture)/\(file)/\(probe.id) size")
                    compare(r.data, ref.data, "\(fixture)/\(file)/\(probe.id)")
                }
            }
        }
    }

    /// A copy of the AXLearn MoE fixture whose config turns MM1.5 splitting on.
    func splitBundle(indicator: String) throws -> String {
        let dir = makeTempDir("split")
        let src = dir + "/src"
        try FileManager.default.copyItem(atPath: TestPaths.fixture("axlearn-moe"), toPath: src)
        var cfg = try SourceConfig.readJSON(src + "/mm1pack_config.json")
        cfg["image_split"] = ["tile_size": 28, "n_min": 1, "n_max": 4, "indicator": indicator]
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: src + "/mm1pack_config.json"))
        _ = try Converter.convert(source: src, output: dir + "/m.mm1", options: quietOptions())
        return dir + "/m.mm1"
    }

    func testSplittingExpandsEachImageIntoTilesAndOverview() throws {
        let model = try MultimodalModel(path: try splitBundle(indicator: "none"))
        let image = TestPaths.repo + "/fixtures/images/c_45x61.png"
        let probe = Probe(id: "split", inputIDs: [1, 5, model.imageTokenID!, 6], text: nil, images: [image])
        let choice = try ImageSplitting.selectGrid(height: 61, width: 45, tileSize: 28, nMin: 1, nMax: 4)
        let n = choice.grid.rows * choice.grid.cols
        let pieces = n + (n > 1 ? 1 : 0)
        let r = try model.run(probe)
        XCTAssertEqual(r.shape[0], 3 + pieces * 9, "3 text tokens + \(pieces) pieces of 9 tokens")
        // Three images in one sample are not split: each becomes one tile.
        let three = Probe(id: "three", inputIDs: [1, model.imageTokenID!, model.imageTokenID!, model.imageTokenID!],
                          text: nil, images: [image, image, image])
        XCTAssertEqual(try model.run(three).shape[0], 1 + 3 * 9)
    }

    func testTextIndicatorsNeedATokenizer() throws {
        let model = try MultimodalModel(path: try splitBundle(indicator: "seps"))
        let probe = Probe(id: "s", inputIDs: [1, model.imageTokenID!], text: nil,
                          images: [TestPaths.repo + "/fixtures/images/c_45x61.png"])
        XCTAssertThrowsError(try model.run(probe)) { XCTAssertTrue("\($0)".contains("tokenizer.json"), "\($0)") }
    }
}

