import Foundation
import XCTest

@testable import MM1Pack

/// Builds safetensors files, good or deliberately broken.
struct STWriter {
    struct T {
        var name: String
        var dtype: String
        var shape: [Int]
        var bytes: [UInt8]
    }

    /// A well-formed file: header padded with spaces to a multiple of 8, tensors packed in order.
    static func file(_ tensors: [T], metadata: [String: String]? = nil) -> Data {
        var parts: [String] = []
        if let metadata {
            let m = metadata.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\"\($0.value)\"" }.joined(separator: ",")
            parts.append("\"__metadata__\":{\(m)}")
        }
        var offset = 0
        var data: [UInt8] = []
        for t in tensors {
            parts.append(
                "\"\(t.name)\":{\"dtype\":\"\(t.dtype)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],"
                    + "\"data_offsets\":[\(offset),\(offset + t.bytes.count)]}")
            offset += t.bytes.count
            data += t.bytes
        }
        return raw(header: "{" + parts.joined(separator: ",") + "}", data: data)
    }

    /// Header text and data exactly as given; `declaredLength` overrides the length field.
    static func raw(header: String, data: [UInt8], declaredLength: UInt64? = nil, pad: Bool = true) -> Data {
        var h = Array(header.utf8)
        if pad { while h.count % 8 != 0 { h.append(0x20) } }
        return raw(headerBytes: h, data: data, declaredLength: declaredLength)
    }

    static func raw(headerBytes h: [UInt8], data: [UInt8], declaredLength: UInt64? = nil) -> Data {
        var out = Data()
        var n = (declaredLength ?? UInt64(h.count)).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(contentsOf: h)
        out.append(contentsOf: data)
        return out
    }
}

func bytesOf<T>(_ values: [T]) -> [UInt8] {
    values.withUnsafeBytes { Array($0) }
}

func bf16(_ f: Float) -> UInt16 { UInt16(f.bitPattern >> 16) }

func makeTempDir(_ tag: String) -> String {
    let dir = NSTemporaryDirectory() + "mm1pack-\(tag)-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// Asserts that `body` throws an MM1Error whose description contains every fragment.
func assertMM1Error(
    _ fragments: [String], file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void
) {
    do {
        try body()
        XCTFail("expected an error containing \(fragments)", file: file, line: line)
    } catch let e as MM1Error {
        for f in fragments where !e.description.contains(f) {
            XCTFail("error '\(e.description)' does not mention '\(f)'", file: file, line: line)
        }
    } catch {
        XCTFail("expected MM1Error, got \(error)", file: file, line: line)
    }
}

func readAll(_ src: TensorSource, _ name: String) throws -> [UInt8] {
    let info = src.tensors[name]!
    var out = [UInt8](repeating: 0, count: info.byteCount)
    try out.withUnsafeMutableBytes {
        try src.read(name, lower: info.shape.map { _ in 0 }, upper: info.shape, into: $0)
    }
    return out
}

func readBox(_ src: TensorSource, _ name: String, _ lower: [Int], _ upper: [Int]) throws -> [UInt8] {
    let info = src.tensors[name]!
    let n = zip(lower, upper).reduce(1) { $0 * ($1.1 - $1.0) }
    var out = [UInt8](repeating: 0, count: n * info.dtype.byteSize)
    try out.withUnsafeMutableBytes { try src.read(name, lower: lower, upper: upper, into: $0) }
    return out
}

/// Row-major box of a float array held in Swift, for comparisons.
func boxOf(_ a: [Float], shape: [Int], _ lower: [Int], _ upper: [Int]) -> [Float] {
    var out: [Float] = []
    let rank = shape.count
    var strides = [Int](repeating: 1, count: rank)
    for i in stride(from: rank - 2, through: 0, by: -1) { strides[i] = strides[i + 1] * shape[i + 1] }
    var idx = lower
    if zip(lower, upper).contains(where: { $0 >= $1 }) { return [] }
    while true {
        out.append(a[zip(idx, strides).reduce(0) { $0 + $1.0 * $1.1 }])
        var k = rank - 1
        while k >= 0 {
            idx[k] += 1
            if idx[k] < upper[k] { break }
            idx[k] = lower[k]
            k -= 1
        }
        if k < 0 { break }
    }
    return out
}

final class SafetensorsReaderTests: XCTestCase {
    var dir = ""

    override func setUp() { dir = makeTempDir("st") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func write(_ name: String, _ data: Data) -> String {
        let p = (dir as NSString).appendingPathComponent(name)
        FileManager.default.createFile(atPath: p, contents: data)
        return p
    }

    let f32Values: [Float] = (0..<60).map { Float($0) * 0.5 - 3 }

    func goodTensors() -> [STWriter.T] {
        [
            .init(name: "a.f32", dtype: "F32", shape: [3, 4, 5], bytes: bytesOf(f32Values)),
            .init(name: "b.f16", dtype: "F16", shape: [4], bytes: bytesOf([Float16(1), 2.5, -3, 0.25])),
            .init(name: "c.bf16", dtype: "BF16", shape: [2, 2], bytes: bytesOf([1, -2, 0.5, 4].map { bf16($0) })),
            .init(name: "d.pos", dtype: "I64", shape: [3], bytes: bytesOf([Int64(0), 1, 2])),
            .init(name: "e.mask", dtype: "BOOL", shape: [2], bytes: [1, 0]),
            .init(name: "f.empty", dtype: "F32", shape: [0, 3], bytes: []),
        ]
    }

    func testValuesShapesAndDtypes() throws {
        let p = write("model.safetensors", STWriter.file(goodTensors(), metadata: ["format": "pt"]))
        let r = try SafetensorsReader(path: p)
        XCTAssertEqual(r.files, ["model.safetensors"])
        XCTAssertEqual(r.metadata["model.safetensors"], ["format": "pt"])
        XCTAssertEqual(r.tensors.count, 6)
        XCTAssertEqual(r.tensors["a.f32"], SourceTensorInfo(name: "a.f32", dtype: .f32, shape: [3, 4, 5], file: "model.safetensors"))
        XCTAssertEqual(r.tensors["d.pos"]?.dtype, .i64)
        XCTAssertEqual(r.tensors["e.mask"]?.dtype, .bool)
        for t in goodTensors() {
            XCTAssertEqual(try readAll(r, t.name), t.bytes, t.name)
            let m = try XCTUnwrap(try r.mappedBytes(t.name))
            XCTAssertEqual(Array(m), t.bytes, t.name)
            r.release(t.name)
        }
        // Reading after release still works (pages come back from the page cache).
        XCTAssertEqual(try readAll(r, "a.f32"), bytesOf(f32Values))
    }

    func testBoxReads() throws {
        let p = write("x.safetensors", STWriter.file(goodTensors()))
        let r = try SafetensorsReader(path: p)
        let boxes: [([Int], [Int])] = [
            ([1, 1, 2], [3, 3, 5]), ([0, 0, 0], [3, 4, 5]), ([1, 0, 0], [2, 4, 5]), ([0, 2, 0], [3, 3, 5]),
            ([2, 3, 4], [3, 4, 5]), ([0, 0, 1], [3, 4, 2]), ([1, 1, 1], [1, 3, 3]),
        ]
        for (lo, hi) in boxes {
            let got = try readBox(r, "a.f32", lo, hi)
            XCTAssertEqual(got, bytesOf(boxOf(f32Values, shape: [3, 4, 5], lo, hi)), "\(lo)..<\(hi)")
        }
        XCTAssertEqual(try readBox(r, "c.bf16", [1, 0], [2, 2]), bytesOf([0.5, 4].map { bf16($0) }))
        assertMM1Error(["x.safetensors", "a.f32", "outside"]) { _ = try readBox(r, "a.f32", [0, 0, 0], [4, 4, 5]) }
        assertMM1Error(["a.f32", "buffer"]) {
            var small = [UInt8](repeating: 0, count: 4)
            try small.withUnsafeMutableBytes { try r.read("a.f32", lower: [0, 0, 0], upper: [1, 1, 2], into: $0) }
        }
    }

    func testShardedIndex() throws {
        let t = goodTensors()
        _ = write("model-00001-of-00002.safetensors", STWriter.file(Array(t[0..<3])))
        _ = write("model-00002-of-00002.safetensors", STWriter.file(Array(t[3...])))
        var map: [String] = []
        for (i, x) in t.enumerated() {
            map.append("\"\(x.name)\": \"model-0000\(i < 3 ? 1 : 2)-of-00002.safetensors\"")
        }
        let index = "{\"metadata\": {\"total_size\": 1234}, \"weight_map\": {\(map.joined(separator: ", "))}}"
        _ = write("model.safetensors.index.json", Data(index.utf8))
        let r = try SafetensorsReader(path: dir)
        XCTAssertEqual(r.tensors.count, t.count)
        XCTAssertEqual(
            r.files,
            ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
        XCTAssertEqual(r.tensors["d.pos"]?.file, "model-00002-of-00002.safetensors")
        for x in t { XCTAssertEqual(try readAll(r, x.name), x.bytes) }

        // weight_map entry pointing at a tensor the shard lacks.
        let extra = index.replacingOccurrences(
            of: "\"weight_map\": {", with: "\"weight_map\": {\"ghost.weight\": \"model-00001-of-00002.safetensors\", ")
        _ = write("model.safetensors.index.json", Data(extra.utf8))
        assertMM1Error(["model-00001-of-00002.safetensors", "ghost.weight", "does not contain"]) {
            _ = try SafetensorsReader(path: dir)
        }
        // A tensor in a shard that the weight_map does not list.
        let fewer = index.replacingOccurrences(of: "\"d.pos\": \"model-00002-of-00002.safetensors\", ", with: "")
        _ = write("model.safetensors.index.json", Data(fewer.utf8))
        assertMM1Error(["model-00002-of-00002.safetensors", "d.pos", "not listed"]) { _ = try SafetensorsReader(path: dir) }
        // A tensor the weight_map assigns to the other shard.
        let moved = index.replacingOccurrences(
            of: "\"d.pos\": \"model-00002-of-00002.safetensors\"", with: "\"d.pos\": \"model-00001-of-00002.safetensors\"")
        _ = write("model.safetensors.index.json", Data(moved.utf8))
        assertMM1Error(["d.pos"]) { _ = try SafetensorsReader(path: dir) }
        // Missing shard.
        _ = write("model.safetensors.index.json", Data(index.utf8))
        try FileManager.default.removeItem(atPath: (dir as NSString).appendingPathComponent("model-00002-of-00002.safetensors"))
        assertMM1Error(["model-00002-of-00002.safetensors", "missing"]) { _ = try SafetensorsReader(path: dir) }
    }

    func testDirectoryChoiceAndExplicitFiles() throws {
        let t = goodTensors()
        _ = write("only.safetensors", STWriter.file(Array(t[0..<2])))
        XCTAssertEqual(try SafetensorsReader(path: dir).files, ["only.safetensors"])
        _ = write("second.safetensors", STWriter.file(Array(t[2...])))
        assertMM1Error(["only.safetensors", "second.safetensors"]) { _ = try SafetensorsReader(path: dir) }
        let r = try SafetensorsReader(
            files: ["only.safetensors", "second.safetensors"].map { (dir as NSString).appendingPathComponent($0) })
        XCTAssertEqual(r.tensors.count, t.count)
        XCTAssertEqual(r.files, ["only.safetensors", "second.safetensors"])
        // Duplicate tensor names across files.
        _ = write("dup.safetensors", STWriter.file([t[0]]))
        assertMM1Error(["a.f32", "dup.safetensors"]) {
            _ = try SafetensorsReader(files: ["only.safetensors", "dup.safetensors"], root: self.dir)
        }
        _ = write("model.safetensors", STWriter.file([t[3]]))
        XCTAssertEqual(try SafetensorsReader(path: dir).files, ["model.safetensors"])
    }

    // MARK: Broken files

    func check(_ data: Data, _ fragments: [String], file: StaticString = #filePath, line: UInt = #line) {
        let name = "broken-\(UUID().uuidString.prefix(8)).safetensors"
        let p = write(name, data)
        assertMM1Error([name] + fragments, file: file, line: line) { _ = try SafetensorsReader(path: p) }
    }

    func testBrokenFiles() {
        let one = STWriter.T(name: "w", dtype: "F32", shape: [2, 2], bytes: bytesOf([Float(1), 2, 3, 4]))
        let good = STWriter.file([one])

        check(Data([1, 2, 3]), ["too small"])
        check(good.prefix(good.count - 3), ["w", "truncated", "expected \(good.count)"])
        check(STWriter.raw(header: "{}", data: [], declaredLength: 4096), ["past the end"])
        check(STWriter.raw(header: "{}", data: [], declaredLength: 100_000_001), ["exceeds"])
        check(STWriter.raw(headerBytes: [0x7B, 0xFF, 0xFE, 0x7D], data: []), ["UTF-8"])
        check(STWriter.raw(header: "{\"w\": {\"dtype\": ", data: []), ["not valid JSON"])
        check(STWriter.raw(header: "[1, 2]", data: []), ["does not start with '{'"])
        check(
            STWriter.raw(
                header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    + "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                data: [UInt8](repeating: 0, count: 8)),
            ["duplicate", "w"])
        check(
            STWriter.raw(header: "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", data: [0, 0, 0, 0]),
            ["w", "F8_E4M3"])
        check(
            STWriter.raw(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data: [UInt8](repeating: 0, count: 8)),
            ["w", "does not match", "12"])
        check(
            STWriter.raw(
                header: "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    + "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                data: [UInt8](repeating: 0, count: 12)),
            ["overlaps", "'a'", "b"])
        check(
            STWriter.raw(
                header: "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    + "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                data: [UInt8](repeating: 0, count: 12)),
            ["gap", "'a'", "b"])
        check(
            STWriter.raw(header: "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", data: [UInt8](repeating: 0, count: 8)),
            ["gap", "b", "start"])
        check(good + Data([0, 0, 0]), ["3 trailing bytes"])
        check(
            STWriter.raw(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", data: []),
            ["w", "negative"])
        check(
            STWriter.raw(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", data: []),
            ["w", "begin after end"])
        check(
            STWriter.raw(
                header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}}", data: []),
            ["w", "overflow"])
        check(
            STWriter.raw(header: "{\"__metadata__\":{\"k\":1}}", data: []),
            ["__metadata__"])
    }

    func testEmptyHeaderIsValid() throws {
        let p = write("empty.safetensors", STWriter.raw(header: "{}", data: []))
        let r = try SafetensorsReader(path: p)
        XCTAssertTrue(r.tensors.isEmpty)
    }

    func testDuplicateKeyScanner() {
        func dup(_ s: String) -> String? {
            Array(s.utf8).withUnsafeBytes { JSONDuplicateKeyScanner.firstDuplicate(in: $0) }
        }
        XCTAssertNil(dup("{\"a\":1,\"b\":{\"a\":2},\"c\":[{\"a\":1},{\"a\":2}]}"))
        XCTAssertEqual(dup("{\"a\":1,\"b\":2,\"a\":3}"), "a")
        XCTAssertEqual(dup("{\"x\":{\"k\":\"}\",\"k\":2}}"), "k")
        XCTAssertEqual(dup("{\"a\":1,\"\\u0061\":2}"), "a")
        XCTAssertNil(dup("{\"a\\\"b\":1,\"a\\\"c\":2}"))
    }
}
