import CZstd
import Foundation
import XCTest

@testable import MM1Pack

/// Writes zarr v2 arrays the way TensorStore does (edge chunks padded to full size), plus AXLearn `index` files.
struct ZarrWriter {
    var root: String

    /// One zstd frame; `contentSize: false` leaves the size out of the frame header (as streaming writers do).
    func zstd(_ bytes: [UInt8], contentSize: Bool = true) -> [UInt8] {
        let cap = ZSTD_compressBound(bytes.count)
        var out = [UInt8](repeating: 0, count: cap)
        let cctx = ZSTD_createCCtx()
        defer { ZSTD_freeCCtx(cctx) }
        _ = ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, contentSize ? 1 : 0)
        let n = out.withUnsafeMutableBytes { o in
            bytes.withUnsafeBytes { i in ZSTD_compress2(cctx, o.baseAddress, cap, i.baseAddress, bytes.count) }
        }
        precondition(ZSTD_isError(n) == 0)
        return Array(out[0..<n])
    }

    /// Writes `gda/<path>` for an array given row-major `data`. Returns the chunk keys written.
    @discardableResult
    func array(
        _ path: String, shape: [Int], chunks: [Int], dtype: String, elementSize: Int, data: [UInt8],
        compress: Bool = true, fill: String = "null", separator: String? = nil, skip: Set<String> = [],
        extraMeta: String = "", order: String = "C", compressorJSON: String? = nil
    ) -> [String] {
        let dir = root + "/gda/" + path
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let comp = compressorJSON ?? (compress ? "{\"id\": \"zstd\", \"level\": 1}" : "null")
        let sepJSON = separator.map { ", \"dimension_separator\": \"\($0)\"" } ?? ""
        let meta = """
            {"chunks": [\(chunks.map(String.init).joined(separator: ", "))], "compressor": \(comp), \
            "dtype": "\(dtype)", "fill_value": \(fill), "filters": null, "order": "\(order)", \
            "shape": [\(shape.map(String.init).joined(separator: ", "))], "zarr_format": 2\(sepJSON)\(extraMeta)}
            """
        FileManager.default.createFile(atPath: dir + "/.zarray", contents: Data(meta.utf8))
        let rank = shape.count
        let grid = zip(shape, chunks).map { ($0 + $1 - 1) / $1 }
        var keys: [String] = []
        if grid.contains(0) { return [] }
        var ci = [Int](repeating: 0, count: rank)
        let chunkElems = chunks.reduce(1, *)
        var strides = [Int](repeating: 1, count: rank)
        for i in stride(from: rank - 2, through: 0, by: -1) { strides[i] = strides[i + 1] * shape[i + 1] }
        var cstrides = [Int](repeating: 1, count: rank)
        for i in stride(from: rank - 2, through: 0, by: -1) { cstrides[i] = cstrides[i + 1] * chunks[i + 1] }
        while true {
            // Padding bytes are 0xAB so that a reader using them shows up in the values.
            var chunk = [UInt8](repeating: 0xAB, count: chunkElems * elementSize)
            for e in 0..<chunkElems {
                var rem = e
                var src = 0
                var inside = true
                for a in 0..<rank {
                    let k = rem / cstrides[a]
                    rem %= cstrides[a]
                    let g = ci[a] * chunks[a] + k
                    if g >= shape[a] { inside = false }
                    src += g * strides[a]
                }
                if inside {
                    for b in 0..<elementSize { chunk[e * elementSize + b] = data[src * elementSize + b] }
                }
            }
            let key = rank == 0 ? "0" : ci.map(String.init).joined(separator: separator ?? ".")
            if !skip.contains(key) {
                let p = dir + "/" + key
                try! FileManager.default.createDirectory(
                    atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                FileManager.default.createFile(atPath: p, contents: Data(compress ? zstd(chunk) : chunk))
                keys.append(key)
            }
            if rank == 0 { return keys }
            var a = rank - 1
            while true {
                ci[a] += 1
                if ci[a] < grid[a] { break }
                ci[a] = 0
                if a == 0 { return keys }
                a -= 1
            }
        }
    }

    /// `index` as AXLearn writes it: json.dumps of [path, value] pairs, shapes as Python tuple strings.
    func index(step: Int, arrays: [(String, String, [Int])], extra: [String] = []) {
        var items = ["[\"step\", \(step)]"]
        for (p, dt, shape) in arrays {
            let s = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
            items.append("[\"\(p)\", {\"dtype\": \"\(dt)\", \"shape\": \"\(s)\"}]")
        }
        items += extra
        FileManager.default.createFile(atPath: root + "/index", contents: Data(("[" + items.joined(separator: ", ") + "]").utf8))
    }
}

final class AXLearnReaderTests: XCTestCase {
    var base = ""
    var step = ""

    override func setUp() {
        base = makeTempDir("axl")
        step = base + "/checkpoints/step_00000100"
        try! FileManager.default.createDirectory(atPath: step, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: base) }

    let emb: [Float] = (0..<70).map { Float($0) * 0.25 - 5 }  // [10, 7]
    let stacked: [Float] = (0..<96).map { Float($0) }  // [6, 4, 4]
    let emb16: [Float16] = (0..<12).map { Float16(Float($0) - 6) }  // [12]
    let bnorm: [UInt16] = (0..<15).map { bf16(Float($0) / 4) }  // [3, 5]
    let ints: [Int32] = [7, -1, 3, 42, 0]

    func writeStandard(_ w: ZarrWriter, separator: String? = nil) {
        w.array("model/decoder/emb/token_emb/weight", shape: [10, 7], chunks: [4, 3], dtype: "<f4", elementSize: 4,
                data: bytesOf(emb), separator: separator)
        w.array("model/decoder/transformer/repeat/layer/feed_forward/linear1_0/weight", shape: [6, 4, 4],
                chunks: [2, 4, 4], dtype: "<f4", elementSize: 4, data: bytesOf(stacked))
        w.array("model/decoder/output_norm/scale", shape: [12], chunks: [5], dtype: "<f2", elementSize: 2,
                data: bytesOf(emb16))
        w.array("model/decoder/x/bf", shape: [3, 5], chunks: [2, 2], dtype: "bfloat16", elementSize: 2,
                data: bytesOf(bnorm))
        w.array("model/decoder/x/ids", shape: [5], chunks: [5], dtype: "<i4", elementSize: 4, data: bytesOf(ints),
                compress: false)
        w.array("model/decoder/x/scalar", shape: [], chunks: [], dtype: "<f4", elementSize: 4, data: bytesOf([Float(3.5)]))
        w.array("learner/optimizer/0/mu/decoder/emb/token_emb/weight", shape: [10, 7], chunks: [10, 7], dtype: "<f4",
                elementSize: 4, data: bytesOf(emb))
        w.array("prng_key", shape: [2], chunks: [2], dtype: "<u4", elementSize: 4, data: bytesOf([UInt32(1), 2]))
        w.index(
            step: 100,
            arrays: [
                ("learner/optimizer/0/mu/decoder/emb/token_emb/weight", "float32", [10, 7]),
                ("model/decoder/emb/token_emb/weight", "float32", [10, 7]),
                ("model/decoder/output_norm/scale", "float16", [12]),
                ("model/decoder/transformer/repeat/layer/feed_forward/linear1_0/weight", "float32", [6, 4, 4]),
                ("model/decoder/x/bf", "bfloat16", [3, 5]),
                ("model/decoder/x/ids", "int32", [5]),
                ("model/decoder/x/scalar", "float32", []),
                ("prng_key", "uint32", [2]),
            ],
            extra: ["[\"input_iter\", \"<class 'tensorflow.python.data.ops.iterator_ops.OwnedIterator'>\"]"])
    }

    func testReadsValuesShapesAndBoxes() throws {
        let w = ZarrWriter(root: step)
        writeStandard(w)
        let r = try AXLearnReader(path: step)
        XCTAssertEqual(r.step, 100)
        XCTAssertEqual(Set(r.tensors.keys).count, 6)
        XCTAssertTrue(r.tensors.keys.allSatisfy { $0.hasPrefix("model/") })
        XCTAssertEqual(
            r.ignoredPaths,
            ["step", "learner/optimizer/0/mu/decoder/emb/token_emb/weight", "prng_key", "input_iter"])
        let e = "model/decoder/emb/token_emb/weight"
        XCTAssertEqual(r.tensors[e], SourceTensorInfo(name: e, dtype: .f32, shape: [10, 7], file: "gda/" + e))
        XCTAssertEqual(r.tensors["model/decoder/x/bf"]?.dtype, .bf16)
        XCTAssertEqual(r.tensors["model/decoder/x/ids"]?.dtype, .i32)
        XCTAssertTrue(r.files.contains("index"))
        XCTAssertTrue(r.files.contains("gda/\(e)/.zarray"))
        XCTAssertTrue(r.files.contains("gda/\(e)/2.2"))
        XCTAssertFalse(r.files.contains { $0.hasPrefix("gda/learner") })
        XCTAssertNil(try r.mappedBytes(e))

        XCTAssertEqual(try readAll(r, e), bytesOf(emb))
        for (lo, hi) in [([3, 2], [9, 7]), ([0, 0], [1, 7]), ([8, 6], [10, 7]), ([4, 3], [8, 6]), ([5, 1], [5, 4])] {
            XCTAssertEqual(try readBox(r, e, lo, hi), bytesOf(boxOf(emb, shape: [10, 7], lo, hi)), "\(lo)..<\(hi)")
        }
        let s = "model/decoder/transformer/repeat/layer/feed_forward/linear1_0/weight"
        for layer in 0..<6 {
            XCTAssertEqual(
                try readBox(r, s, [layer, 0, 0], [layer + 1, 4, 4]),
                bytesOf(boxOf(stacked, shape: [6, 4, 4], [layer, 0, 0], [layer + 1, 4, 4])))
        }
        XCTAssertEqual(try readBox(r, s, [1, 1, 1], [5, 3, 4]), bytesOf(boxOf(stacked, shape: [6, 4, 4], [1, 1, 1], [5, 3, 4])))
        XCTAssertEqual(try readAll(r, "model/decoder/output_norm/scale"), bytesOf(emb16))
        XCTAssertEqual(try readBox(r, "model/decoder/output_norm/scale", [4], [11]), bytesOf(Array(emb16[4..<11])))
        XCTAssertEqual(try readAll(r, "model/decoder/x/bf"), bytesOf(bnorm))
        XCTAssertEqual(try readAll(r, "model/decoder/x/ids"), bytesOf(ints))
        XCTAssertEqual(try readAll(r, "model/decoder/x/scalar"), bytesOf([Float(3.5)]))
        r.release(e)
        XCTAssertEqual(try readAll(r, e), bytesOf(emb))
    }

    func testNestedSeparatorAndCheckpointsDirectory() throws {
        writeStandard(ZarrWriter(root: step), separator: "/")
        // A later step without its index (still being written) must be skipped.
        let later = base + "/checkpoints/step_00000200"
        try FileManager.default.createDirectory(atPath: later + "/gda", withIntermediateDirectories: true)
        let older = base + "/checkpoints/step_00000050"
        try FileManager.default.createDirectory(atPath: older, withIntermediateDirectories: true)
        ZarrWriter(root: older).index(step: 50, arrays: [])
        for p in [base, base + "/checkpoints"] {
            let r = try AXLearnReader(path: p)
            XCTAssertEqual(r.root, step)
            XCTAssertEqual(r.step, 100)
            XCTAssertTrue(r.files.contains("gda/model/decoder/emb/token_emb/weight/2/2"))
            XCTAssertEqual(try readAll(r, "model/decoder/emb/token_emb/weight"), bytesOf(emb))
        }
        try FileManager.default.removeItem(atPath: older + "/index")
        try FileManager.default.removeItem(atPath: step + "/index")
        assertMM1Error(["no complete checkpoint", "step_00000200"]) { _ = try AXLearnReader(path: base) }
    }

    func testFillValueAndMissingChunks() throws {
        let w = ZarrWriter(root: step)
        let data: [Float] = (0..<10).map { Float($0) + 1 }
        w.array("model/a", shape: [10], chunks: [4], dtype: "<f4", elementSize: 4, data: bytesOf(data), fill: "0.5",
                skip: ["1"])
        w.array("model/b", shape: [10], chunks: [4], dtype: "<f4", elementSize: 4, data: bytesOf(data), skip: ["2"])
        w.index(step: 1, arrays: [("model/a", "float32", [10]), ("model/b", "float32", [10])])
        assertMM1Error(["gda/model/b/2", "model/b", "missing", "fill_value is null"]) { _ = try AXLearnReader(path: step) }
        let r = try AXLearnReader(path: step, missingChunks: .zeros)
        var a = data
        for i in 4..<8 { a[i] = 0.5 }
        XCTAssertEqual(try readAll(r, "model/a"), bytesOf(a))
        var b = data
        for i in 8..<10 { b[i] = 0 }
        XCTAssertEqual(try readAll(r, "model/b"), bytesOf(b))
        XCTAssertFalse(r.files.contains("gda/model/b/2"))
    }

    func testBrokenChunksAndMetadata() throws {
        let w = ZarrWriter(root: step)
        let data: [Float] = (0..<8).map { Float($0) }
        w.array("model/a", shape: [8], chunks: [4], dtype: "<f4", elementSize: 4, data: bytesOf(data))
        w.index(step: 1, arrays: [("model/a", "float32", [8])])
        let chunk1 = step + "/gda/model/a/1"

        // Corrupt zstd data: detected when the chunk is read.
        FileManager.default.createFile(atPath: chunk1, contents: Data([0x28, 0xB5, 0x2F, 0xFD, 1, 2, 3, 4, 5]))
        var r = try AXLearnReader(path: step)
        XCTAssertEqual(try readBox(r, "model/a", [0], [4]), bytesOf(Array(data[0..<4])))
        assertMM1Error(["gda/model/a/1", "model/a", "zstd"]) { _ = try readAll(r, "model/a") }
        FileManager.default.createFile(atPath: chunk1, contents: Data("not zstd at all".utf8))
        r = try AXLearnReader(path: step)
        assertMM1Error(["gda/model/a/1", "model/a", "not a valid zstd frame"]) { _ = try readAll(r, "model/a") }

        // A valid frame of the wrong size (declared in the frame header).
        FileManager.default.createFile(atPath: chunk1, contents: Data(w.zstd([UInt8](repeating: 1, count: 12))))
        r = try AXLearnReader(path: step)
        assertMM1Error(["gda/model/a/1", "model/a", "declares 12 bytes", "16"]) { _ = try readAll(r, "model/a") }

        // Frames without a declared size are checked by decoding into exactly one chunk.
        FileManager.default.createFile(
            atPath: chunk1, contents: Data(w.zstd([UInt8](repeating: 1, count: 12), contentSize: false)))
        r = try AXLearnReader(path: step)
        assertMM1Error(["gda/model/a/1", "model/a", "decompresses to 12 bytes"]) { _ = try readAll(r, "model/a") }
        FileManager.default.createFile(
            atPath: chunk1, contents: Data(w.zstd([UInt8](repeating: 1, count: 20), contentSize: false)))
        r = try AXLearnReader(path: step)
        assertMM1Error(["gda/model/a/1", "model/a", "zstd decompression failed"]) { _ = try readAll(r, "model/a") }
        FileManager.default.createFile(
            atPath: chunk1, contents: Data(w.zstd(bytesOf(Array(data[4..<8])), contentSize: false)))
        r = try AXLearnReader(path: step)
        XCTAssertEqual(try readAll(r, "model/a"), bytesOf(data))

        // Index and .zarray disagree.
        w.array("model/a", shape: [8], chunks: [4], dtype: "<f4", elementSize: 4, data: bytesOf(data))
        w.index(step: 1, arrays: [("model/a", "float32", [9])])
        assertMM1Error(["gda/model/a/.zarray", "model/a", "index says float32 [9]"]) { _ = try AXLearnReader(path: step) }
        w.index(step: 1, arrays: [("model/a", "bfloat16", [8])])
        assertMM1Error(["gda/model/a/.zarray", "model/a", "bfloat16"]) { _ = try AXLearnReader(path: step) }
        w.index(step: 1, arrays: [("model/a", "complex64", [8])])
        assertMM1Error(["index", "model/a", "complex64"]) { _ = try AXLearnReader(path: step) }

        // Unsupported layouts are refused by name.
        w.index(step: 1, arrays: [("model/a", "float32", [8])])
        w.array("model/a", shape: [8], chunks: [4], dtype: "<f4", elementSize: 4, data: bytesOf(data), order: "F")
        assertMM1Error(["gda/model/a/.zarray", "model/a", "Fortran"]) { _ = try AXLearnReader(path: step) }
        w.array("model/a", shape: [8], chunks: [4], dtype: "<f4", elementSize: 4, data: bytesOf(data),
                compressorJSON: "{\"id\": \"blosc\"}")
        assertMM1Error(["model/a", "blosc"]) { _ = try AXLearnReader(path: step) }
        w.array("model/a", shape: [8], chunks: [4], dtype: ">f4", elementSize: 4, data: bytesOf(data))
        assertMM1Error(["model/a", "big-endian"]) { _ = try AXLearnReader(path: step) }

        // Uncompressed chunk of the wrong size.
        w.array("model/a", shape: [8], chunks: [4], dtype: "<f4", elementSize: 4, data: bytesOf(data), compress: false)
        FileManager.default.createFile(atPath: chunk1, contents: Data([1, 2, 3]))
        r = try AXLearnReader(path: step)
        assertMM1Error(["gda/model/a/1", "3 bytes"]) { _ = try readAll(r, "model/a") }

        // Missing array directory.
        w.index(step: 1, arrays: [("model/a", "float32", [8]), ("model/gone", "float32", [2])])
        assertMM1Error(["gda/model/gone", "model/gone", "missing"]) { _ = try AXLearnReader(path: step) }
    }

    func testShapeStrings() {
        XCTAssertEqual(AXLearnReader.parseShape("(4, 8)"), [4, 8])
        XCTAssertEqual(AXLearnReader.parseShape("(5,)"), [5])
        XCTAssertEqual(AXLearnReader.parseShape("()"), [])
        XCTAssertEqual(AXLearnReader.parseShape([3, 2]), [3, 2])
        XCTAssertNil(AXLearnReader.parseShape("(4,, 8)"))
        XCTAssertNil(AXLearnReader.parseShape("(-1,)"))
        XCTAssertNil(AXLearnReader.parseShape("[4, 8]"))
    }

    /// Real TensorStore-written fixtures, when present.
    func testTensorStoreFixture() throws {
        let here = URL(fileURLWithPath: #filePath)
        let fixture = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("fixtures/axlearn-dense").path
        guard FileManager.default.fileExists(atPath: fixture) else {
            throw XCTSkip("fixtures/axlearn-dense not present")
        }
        let r = try AXLearnReader(path: fixture)
        XCTAssertEqual(r.step, 100)
        XCTAssertFalse(r.tensors.isEmpty)
        XCTAssertTrue(r.ignoredPaths.contains("prng_key"))
        for (name, info) in r.tensors {
            let bytes = try readAll(r, name)
            XCTAssertEqual(bytes.count, info.byteCount)
        }
        // Tensors that the canonical layout keeps unchanged must hash like fixtures/axlearn-dense/expected.json.
        let expected = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: fixture + "/expected.json"))) as! [String: Any]
        let canon = expected["tensors"] as! [String: [String: Any]]
        let checks: [(String, String, String)] = [
            ("model/decoder/emb/token_emb/weight", "llm.embed.weight", "sha256_bf16"),
            ("model/decoder/output_norm/scale", "llm.norm.weight", "sha256_f32"),
        ]
        for (source, canonical, key) in checks {
            guard let want = canon[canonical]?[key] as? String else { continue }
            XCTAssertEqual(try sha256Hex(readAll(r, source)), want, source)
            // Row-by-row box reads give the same bytes.
            let shape = r.tensors[source]!.shape
            var rows: [UInt8] = []
            for i in 0..<shape[0] {
                rows += try readBox(r, source, [i] + shape.dropFirst().map { _ in 0 }, [i + 1] + shape.dropFirst())
            }
            XCTAssertEqual(try sha256Hex(rows), want, source)
        }
    }

    func sha256Hex(_ bytes: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "mm1pack-sha-\(UUID().uuidString)"
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        p.arguments = [path]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        p.waitUntilExit()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return String(out.prefix(64))
    }
}
