import Foundation
import XCTest
@testable import MM1Pack

/// The converter reads boxes of unmapped sources one ahead on another thread: they must arrive in order with the
/// right bytes, a failed read must surface at its own request, and stopping early must not hang.
final class BoxReadsTests: XCTestCase {
    /// One f32 tensor "t" of 64 rows × 16 whose element (r, c) is r·16 + c; reads of row 13 fail.
    final class Rows: TensorSource {
        let root = "memory"
        let tensors = ["t": SourceTensorInfo(name: "t", dtype: .f32, shape: [64, 16], file: "t")]
        let files = ["t"]
        let lock = NSLock()
        var reads = 0

        func read(_ name: String, lower: [Int], upper: [Int], into: UnsafeMutableRawBufferPointer) throws {
            lock.withLock { reads += 1 }
            if (lower[0]..<upper[0]).contains(13) { throw MM1Error(file: "memory", tensor: name, "row 13 is unreadable") }
            let f = into.bindMemory(to: Float.self)
            var k = 0
            for r in lower[0]..<upper[0] {
                for c in lower[1]..<upper[1] {
                    f[k] = Float(r * 16 + c)
                    k += 1
                }
            }
        }

        func mappedBytes(_ name: String) throws -> UnsafeRawBufferPointer? { nil }
        func release(_ name: String) {}
    }

    func request(_ r: Range<Int>) -> BoxReads.Request {
        .init(source: "t", lower: [r.lowerBound, 2], upper: [r.upperBound, 10], bytes: r.count * 8 * 4)
    }

    func testBoxesArriveInOrderWithTheirBytes() throws {
        let ranges = (0..<6).map { ($0 * 2)..<($0 * 2 + 2) } + [20..<30, 40..<64]
        let boxes = BoxReads(source: Rows(), requests: ranges.map(request))
        defer { boxes.stop() }
        for r in ranges {
            let b = try boxes.next(request(r)).bindMemory(to: Float.self)
            XCTAssertEqual(b.count, r.count * 8)
            for (i, row) in r.enumerated() {
                XCTAssertEqual(Array(b[(i * 8)..<(i * 8 + 8)]), (2..<10).map { Float(row * 16 + $0) })
            }
        }
    }

    func testAFailedReadSurfacesAtItsOwnRequest() throws {
        let ranges = [0..<4, 4..<8, 8..<12, 12..<16, 16..<20]
        let source = Rows()
        let boxes = BoxReads(source: source, requests: ranges.map(request))
        defer { boxes.stop() }
        for r in ranges.prefix(3) { _ = try boxes.next(request(r)) }
        XCTAssertThrowsError(try boxes.next(request(12..<16))) { e in
            XCTAssertEqual(e as? MM1Error, MM1Error(file: "memory", tensor: "t", "row 13 is unreadable"))
        }
        boxes.stop()
        XCTAssertEqual(source.lock.withLock { source.reads }, 4, "nothing is read after the failure")
    }

    func testOutOfOrderRequestIsAnError() throws {
        let boxes = BoxReads(source: Rows(), requests: [request(0..<2), request(2..<4)])
        defer { boxes.stop() }
        XCTAssertThrowsError(try boxes.next(request(2..<4)))
    }

    /// The converter stops after its first box (a later tensor failed); the reader, blocked with both buffers
    /// full, lets go and `stop` returns.
    func testStoppingEarlyReturns() throws {
        let ranges = (0..<6).map { ($0 * 2)..<($0 * 2 + 2) }
        let source = Rows()
        let boxes = BoxReads(source: source, requests: ranges.map(request))
        _ = try boxes.next(request(ranges[0]))
        boxes.stop()
        XCTAssertLessThanOrEqual(source.lock.withLock { source.reads }, 3)
    }
}
