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
}
