import Crypto
import Foundation
import XCTest
@testable import MM1Pack

/// Builds are deterministic: converting a committed fixture twice gives byte-identical bundles, and their SHA-256
/// equals the digest committed in checksums/fixtures.sha256 (regenerate with scripts/update-checksums.sh when a
/// format or tool-version change is intended).
final class ChecksumTests: XCTestCase {
    func committed() throws -> [String: String] {
        let text = try String(contentsOfFile: TestPaths.repo + "/checksums/fixtures.sha256", encoding: .utf8)
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 2 else { continue }
            out[String(parts[1])] = String(parts[0])
        }
        return out
    }

    func testFixtureBundlesAreDeterministicAndMatchCommittedDigests() throws {
        let want = try committed()
        let dir = makeTempDir("checksums")
        XCTAssertEqual(Set(want.keys), Set(TestPaths.fixtureNames.map { "\($0).mm1" }))
        for fixture in TestPaths.fixtureNames {
            let a = dir + "/\(fixture)-a.mm1", b = dir + "/\(fixture)-b.mm1"
            _ = try Converter.convert(source: TestPaths.fixture(fixture), output: a, options: quietOptions())
            _ = try Converter.convert(source: TestPaths.fixture(fixture), output: b, options: quietOptions())
            let da = try Data(contentsOf: URL(fileURLWithPath: a)), db = try Data(contentsOf: URL(fileURLWithPath: b))
            XCTAssertEqual(da, db, "\(fixture): two conversions differ")
            let digest = SHA256.hash(data: da).map { String(format: "%02x", $0) }.joined()
            XCTAssertEqual(digest, want["\(fixture).mm1"], "\(fixture): bundle digest differs from checksums/fixtures.sha256")
        }
    }
}
