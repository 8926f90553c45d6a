import Foundation
import XCTest
@testable import MM1Pack

/// Every fixture was written by PyTorch / transformers / timm / open_clip / tensorstore (scripts/make_fixtures.py),
/// which also computed the canonical tensors independently and stored their digests in expected.json. A converted
/// bundle must hold exactly those tensors: bit-exact for f32, and exactly rounded (nearest-even) for f16 and bf16.
final class FixtureConversionTests: XCTestCase {
    func expected(_ fixture: String) throws -> (layout: String, sourceDTypes: Set<String>, tensors: [String: [String: Any]]) {
        let data = try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture(fixture) + "/expected.json"))
        let obj = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let types = Set((obj["source_dtype"] as! String).split(separator: "+").map(String.init))
        return (obj["layout"] as! String, types, obj["tensors"] as! [String: [String: Any]])
    }

    func testEveryFixtureInEveryDType() throws {
        let out = makeTempDir("fixtures")
        for fixture in TestPaths.fixtureNames {
            let exp = try expected(fixture)
            for dtype in [ConvertOptions.TargetDType.f32, .f16, .bf16] {
                let path = "\(out)/\(fixture)-\(dtype).mm1"
                let report = try Converter.convert(source: TestPaths.fixture(fixture), output: path, options: quietOptions(dtype))
                let b = try BundleReader(path: path)
                XCTAssertEqual(Set(b.tensors.map(\.name)), Set(exp.tensors.keys), "\(fixture): tensor names")
                XCTAssertEqual(b.checkAll(), [], "\(fixture) \(dtype): stored digests must match the data")
                for t in b.tensors {
                    guard let e = exp.tensors[t.name] else { continue }
                    XCTAssertEqual(t.shape, e["shape"] as? [Int], "\(fixture) \(t.name) shape")
                    XCTAssertEqual(t.dtypeName, dtype.rawValue)
                    XCTAssertEqual(t.sha256, e["sha256_\(dtype.rawValue)"] as? String, "\(fixture) \(dtype) \(t.name) values")
                }
                XCTAssertEqual(report.tensors, exp.tensors.count)
            }
        }
    }

    func testAutoDTypeKeepsSourceTypes() throws {
        let out = makeTempDir("auto")
        for fixture in TestPaths.fixtureNames {
            let exp = try expected(fixture)
            let path = "\(out)/\(fixture).mm1"
            _ = try Converter.convert(source: TestPaths.fixture(fixture), output: path, options: quietOptions())
            let b = try BundleReader(path: path)
            for t in b.tensors {
                XCTAssertTrue(exp.sourceDTypes.contains(t.dtypeName), "\(fixture) \(t.name) became \(t.dtypeName)")
                XCTAssertEqual(t.sha256, exp.tensors[t.name]?["sha256_\(t.dtypeName)"] as? String, "\(fixture) \(t.name)")
            }
            XCTAssertEqual(b.provenance["source_layout"] as? String, exp.layout == "hf_causal_lm" ? "llava" : exp.layout)
            XCTAssertEqual(Set(b.tensors.map(\.dtypeName)), exp.sourceDTypes, fixture)
        }
    }
}
