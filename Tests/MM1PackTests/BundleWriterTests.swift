import Crypto
import Foundation
import XCTest
@testable import MM1Pack

/// Tensors written with `write(copying:)` are hashed in the background after they are complete; the fixtures'
/// tensors are too small for that path (under 1 MB), so this test writes large ones: whole, in several chunks,
/// mixed with bytes that are not kept, and with pages dropped by the caller right after writing, as the converter
/// does. Both ways of moving the bytes are run: copy_file_range, and the background threads' own writes used where
/// the kernel cannot copy (across file systems).
final class BundleWriterTests: XCTestCase {
    func testBackgroundDigestsEqualTheBytesDigests() throws {
        try backgroundDigestsEqualTheBytesDigests(kernelCopy: true)
    }

    func testBackgroundWritesWhereTheKernelCannotCopy() throws {
        try backgroundDigestsEqualTheBytesDigests(kernelCopy: false)
    }

    func backgroundDigestsEqualTheBytesDigests(kernelCopy: Bool) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mm1pack-writer-\(getpid())-\(kernelCopy)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mb = 1 << 20
        var rng = SplitMix64(state: 42)
        let source = (0..<(13 * mb)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        try Data(source).write(to: URL(fileURLWithPath: dir + "/source.bin"))
        let map = try MappedFile(path: dir + "/source.bin")
        func range(_ o: Int, _ n: Int) -> FileRange { FileRange(path: dir + "/source.bin", offset: o, length: n) }

        // name, length, how: whole copy / 3 copied chunks / copied chunk then a transient one / transient.
        let plan: [(String, Int, Int, String)] = [
            ("a", 0, 3 * mb, "whole"), ("b", 3 * mb, 4 * mb, "chunks"), ("c", 7 * mb, 2 * mb + 8, "mixed"),
            ("d", 9 * mb + 64, mb, "transient"), ("e", 10 * mb + 128, 3 * mb - 128, "whole"),
        ]
        // f32 tensors: lengths are whole numbers of 4-byte elements.
        let tensors = plan.map { BundleWriter.TensorEntry(name: $0.0, dtype: "f32", shape: [$0.2 / 4], length: $0.2) }
        let w = try BundleWriter(path: dir + "/out.mm1", tensors: tensors, sections: [], config: [:], provenance: [:], metadata: [:])
        w.kernelCopyWorks = kernelCopy
        for (name, off, n, how) in plan {
            try w.beginTensor(name)
            let bytes = map.slice(offset: off, length: n)
            switch how {
            case "whole":
                try w.write(copying: range(off, n), bytes: bytes)
            case "chunks":
                let third = n / 3 / 4 * 4
                for (o, k) in [(0, third), (third, third), (2 * third, n - 2 * third)] {
                    try w.write(copying: range(off + o, k), bytes: UnsafeRawBufferPointer(rebasing: bytes[o..<(o + k)]))
                }
            case "mixed":
                let half = n / 2 / 4 * 4
                try w.write(copying: range(off, half), bytes: UnsafeRawBufferPointer(rebasing: bytes[0..<half]))
                let copy = [UInt8](bytes[half..<n])
                try copy.withUnsafeBytes { try w.write($0) }
            default:
                let copy = [UInt8](bytes)
                try copy.withUnsafeBytes { try w.write($0) }
            }
            map.dropPages(offset: off, length: n)
        }
        let digests = try w.tensorDigests()
        try w.finish()
        for (i, (_, off, n, how)) in plan.enumerated() {
            XCTAssertEqual(digests[i], hex(SHA256.hash(data: source[off..<(off + n)])), how)
        }
        XCTAssertEqual(w.kernelCopyWorks, kernelCopy)
        let b = try BundleReader(path: dir + "/out.mm1")
        XCTAssertEqual(b.checkAll(), [])
        XCTAssertEqual(b.tensors.map(\.sha256), digests)
        for (i, (_, off, n, _)) in plan.enumerated() {
            XCTAssertEqual([UInt8](b.tensors[i].data), Array(source[off..<(off + n)]), plan[i].0)
        }
    }

    /// A check that fails on a background-hashed tensor is thrown when the digests are collected (the first
    /// failing tensor in table order), and the aborted output leaves no file.
    func testBackgroundCheckFailureIsThrownAndLeavesNoFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mm1pack-writer-check-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let n = 3 << 20
        var floats = [Float](repeating: 1, count: 3 * n / 4)
        floats[n / 4 + 100_003] = .nan  // in the second tensor, past its first 256 KB piece
        floats[2 * n / 4 + 7] = .nan    // and in the third
        try floats.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: dir + "/source.bin")) }
        let map = try MappedFile(path: dir + "/source.bin")
        let tensors = ["a", "b", "c"].map { BundleWriter.TensorEntry(name: $0, dtype: "f32", shape: [n / 4], length: n) }
        let w = try BundleWriter(path: dir + "/out.mm1", tensors: tensors, sections: [], config: [:], provenance: [:], metadata: [:])
        for (i, name) in ["a", "b", "c"].enumerated() {
            try w.beginTensor(name)
            let bytes = map.slice(offset: i * n, length: n)
            let start = Int(bitPattern: bytes.baseAddress!)
            try w.write(copying: FileRange(path: dir + "/source.bin", offset: i * n, length: n), bytes: bytes) { piece in
                let p = piece.bindMemory(to: Float.self)
                if let bad = p.firstIndex(where: { $0.isNaN }) {
                    throw MM1Error(tensor: name, "element \((Int(bitPattern: piece.baseAddress!) - start) / 4 + bad) is NaN")
                }
            }
        }
        XCTAssertThrowsError(try w.tensorDigests()) { e in
            XCTAssertEqual(e as? MM1Error, MM1Error(tensor: "b", "element 100003 is NaN"))
        }
        w.abort()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["source.bin"])
    }
}
