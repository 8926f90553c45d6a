import CMM1Bundle
import CZstd
import Foundation
import XCTest

@testable import MM1Pack

/// Hand-built bundles (formats/bundle.md v1), written byte by byte here so that the reader is tested against the
/// spec and not against the project's writer.
private enum TestBundle {
    struct Tensor {
        var name: String
        var dtype: String
        var shape: [Int]
        var bytes: [UInt8]
        var quant: [String: Any]? = nil
    }

    struct Section {
        var name: String
        var encoding: String
        var stored: [UInt8]
        var raw: [UInt8]
    }

    static func sha256(_ bytes: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        bytes.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                mm1b_sha256(src.baseAddress, src.count, dst.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        return out
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    static func f32(_ values: [Float]) -> [UInt8] {
        values.flatMap { v -> [UInt8] in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } }
    }

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    /// The header dictionary and the data section for the given payloads, laid out per the spec.
    static func layout(tensors: [Tensor], sections: [Section], alignment: Int = 64) -> (header: [String: Any], data: [UInt8]) {
        var data: [UInt8] = []
        var ttab: [[String: Any]] = []
        var stab: [[String: Any]] = []
        for t in tensors {
            while data.count % alignment != 0 { data.append(0) }
            var e: [String: Any] = [
                "name": t.name, "dtype": t.dtype, "shape": t.shape, "offset": data.count, "length": t.bytes.count,
                "sha256": hex(sha256(t.bytes)),
            ]
            if let q = t.quant { e["quant"] = q }
            ttab.append(e)
            data += t.bytes
        }
        for s in sections {
            while data.count % alignment != 0 { data.append(0) }
            stab.append([
                "name": s.name, "encoding": s.encoding, "offset": data.count, "length": s.stored.count,
                "raw_length": s.raw.count, "sha256": hex(sha256(s.raw)),
            ])
            data += s.stored
        }
        let header: [String: Any] = [
            "format": "mm1pack", "format_version": 1, "alignment": alignment,
            "config": ["llm": ["hidden_size": 4, "rope_theta": 10000.5, "name": "tiny/model"]] as [String: Any],
            "tensors": ttab, "sections": stab,
            "provenance": [
                "tool": "mm1pack", "tool_version": "0.0.0", "source_layout": "synthetic",
                "source_files": [["path": "model.safetensors", "size": 10, "sha256": String(repeating: "0", count: 64)]],
                "options": ["dtype": "f32", "layout": "synthetic", "allow_unused": false],
            ] as [String: Any],
            "metadata": ["unused_tensors": [String]()],
        ]
        return (header, data)
    }

    static func json(_ header: [String: Any]) -> [UInt8] {
        let d = try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys, .withoutEscapingSlashes])
        return [UInt8](d)
    }

    /// Prefix + header + zero padding + data, with every prefix field computed from the parts.
    static func assemble(header: [UInt8], data: [UInt8]) -> [UInt8] {
        let dataOffset = (96 + header.count + 4095) / 4096 * 4096
        var out: [UInt8] = Array("MM1PACK".utf8) + [0]
        out += le(UInt32(1)) + le(UInt32(0)) + le(UInt64(header.count)) + le(UInt64(dataOffset))
        out += le(UInt64(data.count)) + sha256(header) + [UInt8](repeating: 0, count: 24)
        out += header
        out += [UInt8](repeating: 0, count: dataOffset - out.count)
        return out + data
    }

    static func build(tensors: [Tensor] = standardTensors, sections: [Section] = [],
                      edit: (inout [String: Any]) -> Void = { _ in }) -> [UInt8] {
        var (header, data) = layout(tensors: tensors, sections: sections)
        edit(&header)
        return assemble(header: json(header), data: data)
    }

    /// Edits member `key` of tensor entry `i`.
    static func setTensor(_ header: inout [String: Any], _ i: Int, _ key: String, _ value: Any?) {
        var tab = header["tensors"] as! [[String: Any]]
        tab[i][key] = value
        header["tensors"] = tab
    }

    static func setU32(_ b: inout [UInt8], at o: Int, _ v: UInt32) { b.replaceSubrange(o..<o + 4, with: le(v)) }
    static func setU64(_ b: inout [UInt8], at o: Int, _ v: UInt64) { b.replaceSubrange(o..<o + 8, with: le(v)) }

    static var standardTensors: [Tensor] { [
        Tensor(name: "llm.embed.weight", dtype: "f32", shape: [2, 3], bytes: f32([1, 2, 3, 4, 5, 6])),
        Tensor(name: "llm.norm.weight", dtype: "f16", shape: [3], bytes: [0x00, 0x3c, 0x00, 0x40, 0x00, 0x42]),
        Tensor(name: "llm.layers.0.scale", dtype: "bf16", shape: [], bytes: [0x80, 0x3f]),
    ] }

    static func zstd(_ raw: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: ZSTD_compressBound(raw.count))
        let n = raw.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in ZSTD_compress(dst.baseAddress, dst.count, src.baseAddress, src.count, 3) }
        }
        precondition(ZSTD_isError(n) == 0)
        return Array(out[0..<n])
    }
}

final class BundleReaderTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("mm1b-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    private func write(_ bytes: [UInt8], _ name: String = "model.mm1") throws -> String {
        let url = dir.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }

    private func open(_ bytes: [UInt8]) throws -> BundleReader { try BundleReader(path: write(bytes)) }

    /// Asserts that opening fails with a message containing every fragment; returns the error.
    @discardableResult
    private func assertRefused(_ bytes: [UInt8], _ fragments: String..., tensor: String? = nil,
                               file: StaticString = #filePath, line: UInt = #line) -> MM1Error? {
        let path: String
        do { path = try write(bytes) } catch {
            XCTFail("cannot write: \(error)", file: file, line: line)
            return nil
        }
        do {
            _ = try BundleReader(path: path)
            XCTFail("bundle was accepted, expected: \(fragments)", file: file, line: line)
            return nil
        } catch let e as MM1Error {
            let text = e.description
            for f in fragments {
                XCTAssertTrue(text.contains(f), "message \"\(text)\" does not contain \"\(f)\"", file: file, line: line)
            }
            XCTAssertTrue(text.hasPrefix(path + ": "), "message \"\(text)\" does not start with the path", file: file, line: line)
            XCTAssertEqual(e.file, path, file: file, line: line)
            if let tensor { XCTAssertEqual(e.tensor, tensor, file: file, line: line) }
            return e
        } catch {
            XCTFail("unexpected error type: \(error)", file: file, line: line)
            return nil
        }
    }

    // MARK: - Valid bundles

    func testOpensValidBundle() throws {
        let tokenizer = Array(#"{"model":{"vocab":{"a":0,"b":1}}}"#.utf8)
        let preproc = Array(String(repeating: #"{"size":224,"mean":[0.5,0.5,0.5]}"#, count: 20).utf8)
        // q4 sym g8 of [4, 8]: 16 code bytes, padding to 64, then four f16 scales of 1.0 (formats/bundle.md §2.2).
        let quant: [String: Any] = ["scheme": "sym", "group_size": 8, "scale_dtype": "f16",
                                    "codes": ["offset": 0, "length": 16], "scales": ["offset": 64, "length": 8]]
        let qbytes = Array(0..<16) + [UInt8](repeating: 0, count: 48) + [0x00, 0x3c, 0x00, 0x3c, 0x00, 0x3c, 0x00, 0x3c]
        let tensors = TestBundle.standardTensors + [
            TestBundle.Tensor(name: "llm.q.weight", dtype: "q4", shape: [4, 8], bytes: qbytes, quant: quant),
        ]
        let sections = [
            TestBundle.Section(name: "tokenizer.json", encoding: "raw", stored: tokenizer, raw: tokenizer),
            TestBundle.Section(name: "preprocessor_config.json", encoding: "zstd", stored: TestBundle.zstd(preproc), raw: preproc),
        ]
        let bytes = TestBundle.build(tensors: tensors, sections: sections)
        let r = try open(bytes)

        XCTAssertEqual(r.formatVersion, 1)
        XCTAssertEqual(r.dataOffset, 4096)
        XCTAssertEqual(r.alignment, 64)
        XCTAssertEqual(r.fileSize, bytes.count)
        XCTAssertEqual(r.tensors.map(\.name), ["llm.embed.weight", "llm.norm.weight", "llm.layers.0.scale", "llm.q.weight"])

        let e = try XCTUnwrap(r.tensor(named: "llm.embed.weight"))
        XCTAssertEqual(e.dtype, .f32)
        XCTAssertEqual(e.dtypeName, "f32")
        XCTAssertEqual(e.shape, [2, 3])
        XCTAssertEqual(e.offset, 4096)
        XCTAssertEqual(e.relativeOffset, 0)
        XCTAssertEqual(e.length, 24)
        XCTAssertEqual(e.sha256, TestBundle.hex(TestBundle.sha256(TestBundle.f32([1, 2, 3, 4, 5, 6]))))
        XCTAssertEqual(Array(e.data.bindMemory(to: Float.self)), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(Int(bitPattern: e.data.baseAddress!) % 64, 0, "mapping gives 64-byte-aligned tensors")
        XCTAssertNil(e.quantJSON)

        let n = try XCTUnwrap(r.tensor(named: "llm.norm.weight"))
        XCTAssertEqual(n.dtype, .f16)
        XCTAssertEqual(n.offset, 4096 + 64)
        XCTAssertEqual(Array(n.data), [0x00, 0x3c, 0x00, 0x40, 0x00, 0x42])

        let s = try XCTUnwrap(r.tensor(named: "llm.layers.0.scale"))
        XCTAssertEqual(s.dtype, .bf16)
        XCTAssertEqual(s.shape, [])
        XCTAssertEqual(s.elementCount, 1)

        let q = try XCTUnwrap(r.tensor(named: "llm.q.weight"))
        XCTAssertNil(q.dtype)
        XCTAssertEqual(q.dtypeName, "q4")
        XCTAssertTrue(q.isQuantized)
        let qj = try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(q.quantJSON).utf8)) as? [String: Any]
        XCTAssertEqual(qj?["scheme"] as? String, "sym")
        XCTAssertEqual(qj?["group_size"] as? Int, 8)

        XCTAssertNil(r.tensor(named: "llm.missing"))
        XCTAssertNil(r.tensor(named: ""))

        for t in r.tensors { XCTAssertTrue(r.checkTensor(t), t.name) }
        XCTAssertEqual(r.checkAll(), [])

        XCTAssertEqual(r.sections.map(\.name), ["tokenizer.json", "preprocessor_config.json"])
        XCTAssertEqual(r.section(named: "tokenizer.json")?.encoding, .raw)
        XCTAssertEqual(r.section(named: "preprocessor_config.json")?.encoding, .zstd)
        XCTAssertEqual(r.section(named: "preprocessor_config.json")?.rawLength, preproc.count)
        XCTAssertEqual(try r.sectionData(named: "tokenizer.json"), tokenizer)
        XCTAssertEqual(try r.sectionData(named: "preprocessor_config.json"), preproc)
        XCTAssertThrowsError(try r.sectionData(named: "nope.json"))

        XCTAssertEqual(r.headerJSON["format"] as? String, "mm1pack")
        let llm = r.config["llm"] as? [String: Any]
        XCTAssertEqual(llm?["hidden_size"] as? Int, 4)
        XCTAssertEqual(llm?["name"] as? String, "tiny/model")
        XCTAssertEqual(r.provenance["tool"] as? String, "mm1pack")
        XCTAssertNotNil(r.metadata["unused_tensors"])
        let cfg = try JSONSerialization.jsonObject(with: Data(r.configJSONText.utf8)) as? [String: Any]
        XCTAssertEqual((cfg?["llm"] as? [String: Any])?["rope_theta"] as? Double, 10000.5)
        XCTAssertTrue(r.headerText.hasPrefix(#"{"alignment":64,"config":{"#), r.headerText)
    }

    func testEmptyBundle() throws {
        let r = try open(TestBundle.build(tensors: []))
        XCTAssertEqual(r.tensors.count, 0)
        XCTAssertEqual(r.sections.count, 0)
        XCTAssertEqual(r.dataLength, 0)
        XCTAssertEqual(r.checkAll(), [])
    }

    func testCAPIMemoryAndFind() throws {
        let bytes = TestBundle.build()
        var b: OpaquePointer?
        var err = [CChar](repeating: 0, count: 512)
        let rc = bytes.withUnsafeBytes { mm1b_open_memory($0.baseAddress, $0.count, "mem.mm1", &b, &err, err.count) }
        XCTAssertEqual(rc, MM1B_OK)
        defer { mm1b_close(b) }
        XCTAssertEqual(mm1b_tensor_count(b), 3)
        let t = try XCTUnwrap(mm1b_find_tensor(b, "llm.norm.weight"))
        XCTAssertEqual(t.pointee.index, 1)
        XCTAssertEqual(t.pointee.dtype, MM1B_DTYPE_F16)
        XCTAssertEqual(t.pointee.rank, 1)
        XCTAssertEqual(t.pointee.shape.0, 3)
        XCTAssertNil(mm1b_find_tensor(b, "llm.norm"))
        XCTAssertNil(mm1b_tensor_at(b, 3))
        XCTAssertEqual(mm1b_check_tensor(b, t), MM1B_OK)
        XCTAssertEqual(mm1b_format_version(b), 1)
        XCTAssertEqual(mm1b_data_offset(b), 4096)
        var len = 0
        XCTAssertNotNil(mm1b_header_json(b, &len))
        XCTAssertGreaterThan(len, 2)

        // The same bytes with one wrong byte in the prefix: message with the memory name.
        var bad = bytes
        bad[0] = 0x4E
        var b2: OpaquePointer?
        let rc2 = bad.withUnsafeBytes { mm1b_open_memory($0.baseAddress, $0.count, "mem.mm1", &b2, &err, err.count) }
        XCTAssertEqual(rc2, MM1B_EFORMAT)
        XCTAssertNil(b2)
        XCTAssertEqual(String(cString: err), "mem.mm1: bad magic: not an mm1pack bundle")
    }

    func testSHA256KnownVectors() {
        func h(_ s: String) -> String { TestBundle.hex(TestBundle.sha256(Array(s.utf8))) }
        XCTAssertEqual(h(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(h("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(h("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(h(String(repeating: "a", count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    // MARK: - Prefix

    func testBadMagic() {
        var b = TestBundle.build()
        b[3] = UInt8(ascii: "X")
        assertRefused(b, "bad magic")
    }

    func testTooSmall() {
        assertRefused(Array(TestBundle.build()[0..<50]), "smaller than the 96-byte prefix")
        assertRefused([], "smaller than the 96-byte prefix")
    }

    func testUnknownVersion() {
        var b = TestBundle.build()
        TestBundle.setU32(&b, at: 8, 2)
        assertRefused(b, "unsupported format_version 2")
    }

    func testNonzeroFlags() {
        var b = TestBundle.build()
        TestBundle.setU32(&b, at: 12, 1)
        assertRefused(b, "flags is 0x00000001, must be 0")
    }

    func testReservedNonzero() {
        var b = TestBundle.build()
        b[80] = 1
        assertRefused(b, "reserved prefix bytes")
    }

    func testHeaderLengthBounds() {
        var b = TestBundle.build()
        TestBundle.setU64(&b, at: 16, 67_108_865)
        assertRefused(b, "header_length 67108865 is out of range")
        TestBundle.setU64(&b, at: 16, 1)
        assertRefused(b, "header_length 1 is out of range")
        TestBundle.setU64(&b, at: 16, UInt64.max)
        assertRefused(b, "out of range")
    }

    func testDataOffsetNotMultipleOf4096() {
        var b = TestBundle.build()
        TestBundle.setU64(&b, at: 24, 4000)
        assertRefused(b, "data_offset 4000 is not a multiple of 4096")
    }

    func testDataOffsetInsideHeader() {
        let big = String(repeating: "x", count: 5000)
        var b = TestBundle.build { $0["metadata"] = ["note": big] }
        TestBundle.setU64(&b, at: 24, 4096)
        assertRefused(b, "data_offset 4096 is inside the header")
    }

    func testDataOffsetPlusLengthOverflows() {
        var b = TestBundle.build()
        TestBundle.setU64(&b, at: 32, UInt64.max - 100)
        assertRefused(b, "overflows")
    }

    func testTruncatedAndTrailing() {
        let b = TestBundle.build()
        assertRefused(Array(b.dropLast()), "file size is \(b.count - 1) bytes", "truncated")
        assertRefused(b + [0], "trailing bytes")
        assertRefused(Array(b[0..<4096]), "truncated")
    }

    func testPaddingBeforeDataNotZero() {
        var b = TestBundle.build()
        b[4000] = 7
        assertRefused(b, "padding between the header and data_offset is not zero")
    }

    // MARK: - Header

    func testHeaderShaMismatch() {
        var b = TestBundle.build()
        let i = b[96..<4096].firstIndex(of: UInt8(ascii: "4"))!  // "hidden_size":4
        b[i] = UInt8(ascii: "5")
        assertRefused(b, "header sha256 mismatch")
    }

    private func withHeader(_ text: [UInt8]) -> [UInt8] { TestBundle.assemble(header: text, data: []) }

    private func emptyHeaderText(_ replace: (String) -> String = { $0 }) -> [UInt8] {
        let (h, _) = TestBundle.layout(tensors: [], sections: [])
        return Array(replace(String(decoding: TestBundle.json(h), as: UTF8.self)).utf8)
    }

    func testInvalidUTF8() {
        var h = emptyHeaderText { $0.replacingOccurrences(of: "tiny/model", with: "tiny_model") }
        let i = h.firstIndex(of: UInt8(ascii: "_"))!
        h[i] = 0xFF
        assertRefused(withHeader(h), "invalid JSON", "invalid UTF-8")
        // Overlong encoding of '/', and an encoded surrogate.
        h[i] = 0xC0
        h.insert(0xAF, at: i + 1)
        assertRefused(withHeader(h), "invalid UTF-8")
        assertRefused(withHeader(emptyHeaderText { $0.replacingOccurrences(of: "tiny/model", with: "\\ud800") }),
                      "unpaired high surrogate")
    }

    func testInvalidJSON() {
        assertRefused(withHeader(emptyHeaderText { $0.replacingOccurrences(of: "}}", with: "},}") }), "invalid JSON")
        assertRefused(withHeader(emptyHeaderText { $0 + "x" }), "trailing characters")
        assertRefused(withHeader(Array("[1,2]".utf8)), "not a JSON object")
        assertRefused(withHeader(emptyHeaderText { $0.replacingOccurrences(of: "10000.5", with: "NaN") }), "invalid JSON")
        assertRefused(withHeader(emptyHeaderText { $0.replacingOccurrences(of: "10000.5", with: "1e999") }),
                      "out of the range of a double")
        assertRefused(withHeader(emptyHeaderText { $0.replacingOccurrences(of: "10000.5", with: "18446744073709551616") }),
                      "integer out of the int64 range")
        assertRefused(withHeader(Array(("\u{FEFF}" + String(decoding: emptyHeaderText(), as: UTF8.self)).utf8)),
                      "byte-order mark")
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        assertRefused(withHeader(emptyHeaderText { $0.replacingOccurrences(of: "10000.5", with: deep) }),
                      "nesting too deep")
    }

    func testDuplicateKey() {
        assertRefused(withHeader(emptyHeaderText { $0.replacingOccurrences(of: #""tool":"mm1pack""#, with: #""tool":"mm1pack","tool":"x""#) }),
                      "duplicate key")
        assertRefused(withHeader(emptyHeaderText { $0.replacingOccurrences(of: #""tool":"mm1pack""#, with: #""tool":"mm1pack","t\u006fol":"x""#) }),
                      "duplicate key")
        assertRefused(withHeader(emptyHeaderText { $0.replacingOccurrences(of: #""tool":"mm1pack""#, with: #""tool":"mm1pack","tool\u0000x":"x""#) }),
                      "\\u0000 in an object key")
    }

    func testMissingAndUnknownMembers() {
        assertRefused(TestBundle.build { $0["provenance"] = nil }, "header: missing member 'provenance'")
        assertRefused(TestBundle.build { $0["tensors"] = nil }, "header: missing member 'tensors'")
        assertRefused(TestBundle.build { $0["extra"] = 1 }, "header: unknown member 'extra'")
        assertRefused(TestBundle.build { $0["config"] = [1] }, "member 'config' must be an object")
        assertRefused(TestBundle.build { $0["format"] = "gguf" }, "format is 'gguf'")
        assertRefused(TestBundle.build { $0["format_version"] = 2 }, "format_version 2 differs")
        assertRefused(TestBundle.build { $0["alignment"] = 48 }, "alignment 48 is not a power of two")
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 1, "sha256", nil) },
                      "tensor 'llm.norm.weight': missing member 'sha256'", tensor: "llm.norm.weight")
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 1, "strides", [1]) }, "unknown member 'strides'")
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 1, "offset", "64") }, "member 'offset' must be an integer")
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 1, "offset", 64.5) }, "member 'offset' must be an integer")
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 1, "offset", -64) }, "offset is negative")
    }

    // MARK: - Tensor table

    func testDuplicateTensorName() {
        var t = TestBundle.standardTensors
        t[2].name = "llm.embed.weight"
        assertRefused(TestBundle.build(tensors: t), "tensor 'llm.embed.weight': duplicate tensor name", tensor: "llm.embed.weight")
    }

    func testBadNameCharacters() {
        for bad in ["llm/embed.weight", "llm embed", "llm-embed", "", "é", String(repeating: "a", count: 256)] {
            var t = TestBundle.standardTensors
            t[0].name = bad
            assertRefused(TestBundle.build(tensors: t), "tensor #0: name")
        }
        let ok = String(repeating: "a", count: 255)
        var t = TestBundle.standardTensors
        t[0].name = ok
        XCTAssertNoThrow(try open(TestBundle.build(tensors: t)))
    }

    func testUnknownDtype() {
        var t = TestBundle.standardTensors
        t[0].dtype = "f64"
        assertRefused(TestBundle.build(tensors: t), "tensor 'llm.embed.weight': unknown dtype 'f64'", tensor: "llm.embed.weight")
        t[0].dtype = "q4"  // reserved dtype without a quant object
        assertRefused(TestBundle.build(tensors: t), "quantized dtype 'q4' without a 'quant' object")
        t[0].dtype = "f32"
        t[0].quant = ["scheme": "x"]
        assertRefused(TestBundle.build(tensors: t), "'quant' is only allowed on quantized dtypes")
    }

    func testRankAndDims() {
        var t = TestBundle.standardTensors
        t[0].shape = [1, 1, 1, 1, 1, 1, 2, 3, 1]
        assertRefused(TestBundle.build(tensors: t), "rank 9 is more than 8")
        t[0].shape = [1, 1, 1, 1, 1, 1, 2, 3]
        XCTAssertNoThrow(try open(TestBundle.build(tensors: t)))
        t[0].shape = [6, 0]
        assertRefused(TestBundle.build(tensors: t), "shape[1] is 0")
        t[0].shape = [-6]
        assertRefused(TestBundle.build(tensors: t), "shape[0] is -6")
    }

    func testLengthMismatch() {
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 0, "length", 20) },
                      "tensor 'llm.embed.weight': length 20 is not 24 (6 elements of f32)")
    }

    func testNumelOverflow() {
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 0, "shape", [4_294_967_296, 4_294_967_296, 2]) },
                      "tensor 'llm.embed.weight'", "overflows")
        // numel fits 64 bits but numel × 4 does not
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 0, "shape", [4_611_686_018_427_387_904, 2]) },
                      "overflow")
        // A quantized tensor's element count must fit an Int too.
        var t = TestBundle.standardTensors
        t.append(TestBundle.Tensor(name: "q", dtype: "i8", shape: [4_611_686_018_427_387_904, 3], bytes: [1], quant: ["scheme": "x"]))
        assertRefused(TestBundle.build(tensors: t), "tensor 'q'", "overflows")
    }

    func testMisalignedOffset() {
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 1, "offset", 100) },
                      "model.mm1: tensor 'llm.norm.weight': offset 100 is not a multiple of 64", tensor: "llm.norm.weight")
    }

    func testOverlappingTensors() {
        // Second tensor moved onto the first one (offset 0 < end 24), keeping table order.
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 1, "offset", 0) },
                      "tensor 'llm.norm.weight'", "overlaps the previous tensor 'llm.embed.weight'")
    }

    func testDecreasingOrder() {
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 2, "offset", 0) },
                      "tensor 'llm.layers.0.scale'", "increasing offset order")
    }

    func testOutOfBoundsTensor() {
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 2, "offset", 4096) },
                      "tensor 'llm.layers.0.scale'", "out of the data section")
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 2, "offset", 9_223_372_036_854_775_744) },
                      "out of the data section")
    }

    func testHolesAndPadding() {
        // A hole of 64 bytes or more between tensors is refused, and so are unused bytes at the end; so is nonzero
        // padding.
        var (h, data) = TestBundle.layout(tensors: TestBundle.standardTensors, sections: [])
        XCTAssertNoThrow(try open(TestBundle.assemble(header: TestBundle.json(h), data: data)))
        assertRefused(TestBundle.assemble(header: TestBundle.json(h), data: data + [UInt8](repeating: 0, count: 64)),
                      "64 unused bytes after its last payload")
        XCTAssertNoThrow(try open(TestBundle.assemble(header: TestBundle.json(h), data: data + [0, 0, 0])))
        assertRefused(TestBundle.assemble(header: TestBundle.json(h), data: data + [0, 0, 1]),
                      "padding at the end of the data section is not zero")
        data.insert(contentsOf: [UInt8](repeating: 0, count: 64), at: 128)
        TestBundle.setTensor(&h, 2, "offset", 192)
        assertRefused(TestBundle.assemble(header: TestBundle.json(h), data: data), "tensor 'llm.layers.0.scale'",
                      "hole of 122 bytes before offset 192")
        var b = TestBundle.build()
        b[4096 + 30] = 1  // between the 24 bytes of tensor 0 and offset 64
        assertRefused(b, "tensor 'llm.norm.weight': padding before offset 64 is not zero")
    }

    func testBadDigestString() {
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 0, "sha256", String(repeating: "A", count: 64)) },
                      "sha256 must be 64 lowercase hex digits")
        assertRefused(TestBundle.build { TestBundle.setTensor(&$0, 0, "sha256", "abc") },
                      "sha256 must be 64 lowercase hex digits")
    }

    func testFlippedDataByteDetected() throws {
        var b = TestBundle.build()
        b[4096 + 64 + 1] ^= 0x01  // inside llm.norm.weight
        let r = try open(b)
        XCTAssertTrue(r.checkTensor(r.tensor(named: "llm.embed.weight")!))
        XCTAssertFalse(r.checkTensor(r.tensor(named: "llm.norm.weight")!))
        XCTAssertEqual(r.checkAll(), ["llm.norm.weight"])
    }

    // MARK: - Sections

    func testSections() throws {
        let raw = Array("hello tokenizer".utf8)
        let big = [UInt8](repeating: 7, count: 1000)
        func sec(_ s: [TestBundle.Section], edit: (inout [String: Any]) -> Void = { _ in }) -> [UInt8] {
            TestBundle.build(sections: s, edit: edit)
        }
        let ok = [TestBundle.Section(name: "tokenizer.json", encoding: "raw", stored: raw, raw: raw)]
        func setSection(_ h: inout [String: Any], _ key: String, _ v: Any?) {
            var tab = h["sections"] as! [[String: Any]]
            tab[0][key] = v
            h["sections"] = tab
        }
        assertRefused(sec(ok) { setSection(&$0, "encoding", "gzip") }, "section 'tokenizer.json': unknown encoding 'gzip'")
        assertRefused(sec(ok) { setSection(&$0, "raw_length", 3) }, "raw_length 3 differs from length")
        assertRefused(sec(ok) { setSection(&$0, "offset", 0) }, "section 'tokenizer.json'", "before the end")
        assertRefused(sec(ok) { setSection(&$0, "offset", 4096) }, "out of the data section")
        assertRefused(sec(ok) { setSection(&$0, "name", "../etc/passwd") }, "section #0: name")
        assertRefused(sec(ok + ok), "duplicate section name")

        // Digest of a raw section; zstd that decodes to more than raw_length; wrong digest of decoded bytes.
        var b = sec(ok)
        b[b.count - 1] ^= 0x20
        let r = try open(b)
        XCTAssertFalse(r.checkSection(r.sections[0]))
        XCTAssertThrowsError(try r.sectionData(named: "tokenizer.json")) { e in
            XCTAssertTrue("\(e)".contains("sha256 mismatch"), "\(e)")
        }
        XCTAssertEqual(r.checkAll(), ["section:tokenizer.json"])

        let z = TestBundle.zstd(big)
        let liar = TestBundle.Section(name: "big.bin", encoding: "zstd", stored: z, raw: Array(big[0..<10]))
        let r2 = try open(sec([liar]))
        XCTAssertThrowsError(try r2.sectionData(named: "big.bin")) { e in
            XCTAssertTrue("\(e)".contains("raw_length"), "\(e)")
        }
        XCTAssertThrowsError(try r2.sectionData(named: "big.bin", maxSize: 5)) { e in
            XCTAssertTrue("\(e)".contains("more than the 5 bytes allowed"), "\(e)")
        }
        var wrong = TestBundle.Section(name: "big.bin", encoding: "zstd", stored: z, raw: big)
        wrong.raw[0] = 8  // the digest is of different bytes of the same length
        let r3 = try open(sec([wrong]))
        XCTAssertThrowsError(try r3.sectionData(named: "big.bin")) { e in
            XCTAssertTrue("\(e)".contains("sha256 mismatch"), "\(e)")
        }
        let garbage = TestBundle.Section(name: "g.bin", encoding: "zstd", stored: [1, 2, 3, 4, 5, 6, 7, 8, 9], raw: big)
        XCTAssertThrowsError(try open(sec([garbage])).sectionData(named: "g.bin"))
        let two = TestBundle.Section(name: "two.bin", encoding: "zstd", stored: z + z, raw: big + big)
        XCTAssertThrowsError(try open(sec([two])).sectionData(named: "two.bin")) { e in
            XCTAssertTrue("\(e)".contains("exactly one frame"), "\(e)")
        }
    }

    /// The project's writer and this reader agree on the format (layout, padding, sections, digests).
    func testReadsBundleWriterOutput() throws {
        let path = dir.appendingPathComponent("written.mm1").path
        let text = Array(String(repeating: "tokenizer ", count: 200).utf8)
        let w = try BundleWriter(
            path: path,
            tensors: [
                .init(name: "a.weight", dtype: "f32", shape: [3], length: 12),
                .init(name: "b.weight", dtype: "bf16", shape: [2, 2], length: 8),
            ],
            sections: [.init(name: "tokenizer.json", raw: text), .init(name: "x.txt", raw: [1])],
            config: ["llm": ["hidden_size": 3]], provenance: ["tool": "mm1pack"], metadata: [:])
        for (name, bytes) in [("a.weight", TestBundle.f32([1, 2, 3])), ("b.weight", [UInt8](repeating: 0x3f, count: 8))] {
            try w.beginTensor(name)
            try bytes.withUnsafeBytes { try w.write($0) }
        }
        try w.finish()
        let r = try BundleReader(path: path)
        XCTAssertEqual(r.tensors.map(\.name), ["a.weight", "b.weight"])
        XCTAssertEqual(Array(r.tensor(named: "a.weight")!.data.bindMemory(to: Float.self)), [1, 2, 3])
        XCTAssertEqual(r.checkAll(), [])
        XCTAssertEqual(try r.sectionData(named: "tokenizer.json"), text)
        XCTAssertEqual(try r.sectionData(named: "x.txt"), [1])
    }

    // MARK: - Robustness

    /// Random mutations of a valid bundle never crash the parser (the C fuzz target does this at scale).
    func testRandomMutationsDoNotCrash() {
        let tensors = TestBundle.standardTensors
        let good = TestBundle.build(tensors: tensors, sections: [
            TestBundle.Section(name: "t.json", encoding: "raw", stored: Array("{}".utf8), raw: Array("{}".utf8)),
        ])
        var rng = SystemRandomNumberGenerator()
        var accepted = 0
        for _ in 0..<3000 {
            var b = good
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let i = Int.random(in: 0..<b.count, using: &rng)
                b[i] = UInt8.random(in: 0...255, using: &rng)
            }
            if Bool.random(using: &rng) {
                // Keep the header digest right so that the JSON checks are reached.
                let hl = Int(b[16]) | Int(b[17]) << 8
                if hl <= b.count - 96, b[18...23].allSatisfy({ $0 == 0 }) {
                    let d = TestBundle.sha256(Array(b[96..<96 + hl]))
                    b.replaceSubrange(40..<72, with: d)
                }
            }
            var h: OpaquePointer?
            var err = [CChar](repeating: 0, count: 256)
            let rc = b.withUnsafeBytes { mm1b_open_memory($0.baseAddress, $0.count, "m", &h, &err, err.count) }
            if rc == MM1B_OK {
                accepted += 1
                for i in 0..<mm1b_tensor_count(h) { _ = mm1b_check_tensor(h, mm1b_tensor_at(h, i)) }
                mm1b_close(h)
            } else {
                XCTAssertFalse(String(cString: err).isEmpty)
            }
        }
        XCTAssertGreaterThan(accepted, 0)
    }

    func testMissingFile() {
        XCTAssertThrowsError(try BundleReader(path: dir.appendingPathComponent("nope.mm1").path)) { e in
            XCTAssertTrue("\(e)".contains("cannot open"), "\(e)")
        }
        XCTAssertThrowsError(try BundleReader(path: dir.path)) { e in
            XCTAssertTrue("\(e)".contains("not a regular file"), "\(e)")
        }
    }
}
