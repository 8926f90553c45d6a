import Foundation
import XCTest
@testable import MM1Pack

/// Damaged checkpoints must fail with an error that names the file and the tensor, and must leave no output file
/// (not even a partial one) behind.
final class BrokenSourceTests: XCTestCase {
    var dir = ""

    override func setUp() { dir = makeTempDir("broken") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A private copy of a fixture to damage.
    func copyFixture(_ name: String) throws -> String {
        let dst = dir + "/" + name
        try FileManager.default.copyItem(atPath: TestPaths.fixture(name), toPath: dst)
        return dst
    }

    /// A safetensors file split into its header (as a mutable dictionary) and its data bytes.
    func load(_ path: String) throws -> (header: [String: Any], data: [UInt8]) {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let n = Int(bytes[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)])) as! [String: Any]
        return (header, Array(bytes[(8 + n)...]))
    }

    func save(_ path: String, _ header: [String: Any], _ data: [UInt8]) throws {
        let h = String(decoding: try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]), as: UTF8.self)
        try STWriter.raw(header: h, data: data).write(to: URL(fileURLWithPath: path))
    }

    /// Converts and expects failure mentioning every fragment, with no output and no temporary file left.
    func expectFailure(_ src: String, _ fragments: [String], allowUnused: Bool = false,
                       file: StaticString = #filePath, line: UInt = #line) {
        let out = dir + "/out.mm1"
        var o = quietOptions()
        o.allowUnused = allowUnused
        XCTAssertThrowsError(try Converter.convert(source: src, output: out, options: o), file: file, line: line) { e in
            let msg = "\(e)"
            for f in fragments { XCTAssertTrue(msg.contains(f), "'\(f)' missing from: \(msg)", file: file, line: line) }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "an output file was left behind", file: file, line: line)
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: dir))?.filter { $0.contains("partial") } ?? []
        XCTAssertEqual(leftovers, [], "temporary files left behind", file: file, line: line)
    }

    func testTruncatedFile() throws {
        let src = try copyFixture("llava-llama")
        let f = src + "/model.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: f))
        try data.prefix(data.count - 10).write(to: URL(fileURLWithPath: f))
        expectFailure(src, ["model.safetensors", "truncated"])
    }

    func testLyingHeader() throws {
        let src = try copyFixture("llava-llama")
        let f = src + "/model.safetensors"
        var (h, d) = try load(f)
        var t = h["language_model.model.norm.weight"] as! [String: Any]
        t["shape"] = [4096]
        h["language_model.model.norm.weight"] = t
        try save(f, h, d)
        expectFailure(src, ["model.safetensors", "language_model.model.norm.weight"])
        (h, d) = try load(TestPaths.fixture("llava-llama") + "/model.safetensors")
        t = h["language_model.model.norm.weight"] as! [String: Any]
        t["dtype"] = "F16"
        h["language_model.model.norm.weight"] = t
        try save(f, h, d)
        expectFailure(src, ["model.safetensors", "language_model.model.norm.weight"])
    }

    func testOverlappingOffsets() throws {
        let src = try copyFixture("llava-llama")
        let f = src + "/model.safetensors"
        var (h, d) = try load(f)
        let names = h.keys.filter { $0 != "__metadata__" }.sorted {
            (((h[$0] as! [String: Any])["data_offsets"] as! [Int])[0]) < (((h[$1] as! [String: Any])["data_offsets"] as! [Int])[0])
        }
        // Move the second tensor's window back by 4 bytes: it now overlaps the first.
        var t = h[names[1]] as! [String: Any]
        let off = t["data_offsets"] as! [Int]
        t["data_offsets"] = [off[0] - 4, off[1] - 4]
        h[names[1]] = t
        try save(f, h, d)
        expectFailure(src, ["model.safetensors"])
    }

    func testMissingShard() throws {
        let src = try copyFixture("llava-mixtral")
        try FileManager.default.removeItem(atPath: src + "/model-00002-of-00003.safetensors")
        expectFailure(src, ["model-00002-of-00003.safetensors"])
    }

    func testUnknownDType() throws {
        let src = try copyFixture("llava-llama")
        let f = src + "/model.safetensors"
        var (h, d) = try load(f)
        var t = h["multi_modal_projector.linear_1.bias"] as! [String: Any]
        t["dtype"] = "Q3"
        h["multi_modal_projector.linear_1.bias"] = t
        try save(f, h, d)
        expectFailure(src, ["model.safetensors", "multi_modal_projector.linear_1.bias", "Q3"])
    }

    /// Appends one tensor to a safetensors file.
    func addTensor(_ f: String, name: String, dtype: String, shape: [Int], bytes: [UInt8]) throws {
        var (h, d) = try load(f)
        h[name] = ["dtype": dtype, "shape": shape, "data_offsets": [d.count, d.count + bytes.count]]
        d += bytes
        try save(f, h, d)
    }

    func testUnconsumedTensorIsAnErrorUnlessAllowed() throws {
        let src = try copyFixture("llava-llama")
        try addTensor(src + "/model.safetensors", name: "language_model.model.extra_adapter.weight", dtype: "F32",
                      shape: [2], bytes: bytesOf([Float(1), 2]))
        expectFailure(src, ["language_model.model.extra_adapter.weight", "--allow-unused"])
        var o = quietOptions()
        o.allowUnused = true
        let out = dir + "/allowed.mm1"
        _ = try Converter.convert(source: src, output: out, options: o)
        let b = try BundleReader(path: out)
        XCTAssertEqual(b.metadata["unused_tensors"] as? [String], ["language_model.model.extra_adapter.weight"])
    }

    func testMissingTensor() throws {
        let src = try copyFixture("llava-llama")
        let f = src + "/model.safetensors"
        var (h, d) = try load(f)
        // Drop the last tensor in data order so the rest stays contiguous.
        let last = h.keys.filter { $0 != "__metadata__" }.max {
            (((h[$0] as! [String: Any])["data_offsets"] as! [Int])[0]) < (((h[$1] as! [String: Any])["data_offsets"] as! [Int])[0])
        }!
        let off = (h[last] as! [String: Any])["data_offsets"] as! [Int]
        h[last] = nil
        d.removeSubrange(off[0]...)
        try save(f, h, d)
        let canonical = try Mapper.plan(source: SafetensorsReader(path: TestPaths.fixture("llava-llama")).tensors.filter { $0.key == last },
                                        layout: LayoutMapping.builtin("llava"), config: [:]).tensors.keys.first!
        expectFailure(src, ["does not have", canonical])
    }

    func testShapeThatDoesNotFitTheConfig() throws {
        let src = try copyFixture("llava-llama")
        var cfg = try SourceConfig.readJSON(src + "/config.json")
        var text = cfg["text_config"] as! [String: Any]
        text["intermediate_size"] = (text["intermediate_size"] as! Int) * 2
        cfg["text_config"] = text
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: src + "/config.json"))
        expectFailure(src, ["llm.layers.0.mlp.gate.weight", "language_model.model.layers.0.mlp.gate_proj.weight", "the config implies"])
    }

    func testNaNAndInfAreRefused() throws {
        for (bits, word) in [(UInt32(0x7FC0_0000), "NaN"), (UInt32(0x7F80_0000), "inf")] {
            let src = try copyFixture("llava-llama")
            let f = src + "/model.safetensors"
            var (h, d) = try load(f)
            let t = h["language_model.model.layers.1.self_attn.k_proj.weight"] as! [String: Any]
            let start = (t["data_offsets"] as! [Int])[0] + 4 * 5
            for i in 0..<4 { d[start + i] = UInt8(truncatingIfNeeded: bits >> (8 * UInt32(i))) }
            try save(f, h, d)
            expectFailure(src, ["model.safetensors", "language_model.model.layers.1.self_attn.k_proj.weight", "element 5", word])
            try FileManager.default.removeItem(atPath: src)
        }
    }

    func testOverflowToInfWhenNarrowingIsRefused() throws {
        let src = try copyFixture("llava-llama")
        let f = src + "/model.safetensors"
        var (h, d) = try load(f)
        let t = h["language_model.model.norm.weight"] as! [String: Any]
        let start = (t["data_offsets"] as! [Int])[0]
        let big = Float(1e6).bitPattern
        for i in 0..<4 { d[start + i] = UInt8(truncatingIfNeeded: big >> (8 * UInt32(i))) }
        try save(f, h, d)
        let out = dir + "/f16.mm1"
        XCTAssertThrowsError(try Converter.convert(source: src, output: out, options: quietOptions(.f16))) { e in
            XCTAssertTrue("\(e)".contains("too large for f16"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        // bf16 has f32's range: the same source converts.
        _ = try Converter.convert(source: src, output: out, options: quietOptions(.bf16))
    }

    func testCorruptZarrChunk() throws {
        let src = try copyFixture("axlearn-dense")
        let chunk = src + "/checkpoints/step_00000100/gda/model/decoder/emb/token_emb/weight/1.0"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: chunk)))
        bytes[bytes.count / 2] ^= 0xFF
        bytes.removeLast(3)
        try Data(bytes).write(to: URL(fileURLWithPath: chunk))
        expectFailure(src, ["model/decoder/emb/token_emb/weight"])
    }

    func testCommandLineExitCodeAndMessage() throws {
        let bin = productsDirectory.appendingPathComponent("mm1pack").path
        guard FileManager.default.isExecutableFile(atPath: bin) else { throw XCTSkip("mm1pack binary not built at \(bin)") }
        let src = try copyFixture("llava-mixtral")
        try FileManager.default.removeItem(atPath: src + "/model-00003-of-00003.safetensors")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = ["convert", src, "-o", dir + "/cli.mm1"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 2)
        XCTAssertTrue(text.hasPrefix("mm1pack: error: "), text)
        XCTAssertTrue(text.contains("model-00003-of-00003.safetensors"), text)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/cli.mm1"))
    }

    /// Ctrl-C (or SIGTERM) while the bundle is being written removes the temporary file: nothing is left in the
    /// output's directory, and the exit status is 128 + the signal.
    func testInterruptedConvertLeavesNoTemporaryFile() throws {
        let bin = productsDirectory.appendingPathComponent("mm1pack").path
        guard FileManager.default.isExecutableFile(atPath: bin) else { throw XCTSkip("mm1pack binary not built at \(bin)") }
        let src = try copyFixture("llama-text")
        for sig in [SIGINT, SIGTERM] {
            let out = dir + "/out-\(sig)"
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: bin)
            p.arguments = ["convert", src, "-o", out + "/x.mm1", "--quiet"]
            p.environment = ProcessInfo.processInfo.environment.merging(["MM1PACK_TEST_HOLD_OUTPUT_SECONDS": "30"]) { $1 }
            p.standardError = Pipe()
            p.standardOutput = Pipe()
            try p.run()
            // Wait until the temporary file exists, then interrupt.
            let deadline = Date().addingTimeInterval(20)
            while (try FileManager.default.contentsOfDirectory(atPath: out)).isEmpty && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.02)
            }
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out).count, 1, "the temporary file appeared")
            kill(p.processIdentifier, sig)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 128 + sig)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out), [])
        }
    }

    var productsDirectory: URL {
        for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") {
            return b.bundleURL.deletingLastPathComponent()
        }
        return Bundle.main.bundleURL
    }

    /// A state-dict dump of a tied model keeps lm_head: dropped when it equals the embedding, refused otherwise.
    func testTiedHeadPresentInTheSource() throws {
        let src = try copyFixture("llama-text")
        let f = src + "/model.safetensors"
        var (h, d) = try load(f)
        let emb = h["model.embed_tokens.weight"] as! [String: Any]
        let off = emb["data_offsets"] as! [Int]
        let embBytes = Array(d[off[0]..<off[1]])
        try addTensor(f, name: "lm_head.weight", dtype: emb["dtype"] as! String, shape: emb["shape"] as! [Int], bytes: embBytes)
        let out = dir + "/tied.mm1"
        _ = try Converter.convert(source: src, output: out, options: quietOptions())
        let b = try BundleReader(path: out)
        XCTAssertNil(b.tensor(named: "llm.head.weight"))
        XCTAssertNotNil((b.metadata["ignored_tensors"] as? [String: Any])?["lm_head.weight"])
        // Same tensor with one value changed: the config's tying is wrong, which must not pass silently.
        (h, d) = try load(f)
        let head = h["lm_head.weight"] as! [String: Any]
        d[(head["data_offsets"] as! [Int])[0]] ^= 0x01
        try save(f, h, d)
        expectFailure(src, ["lm_head.weight", "differs"])
    }

    func testInconsistentConfigIsRefused() throws {
        let src = try copyFixture("axlearn-moe")
        var cfg = try SourceConfig.readJSON(src + "/mm1pack_config.json")
        var llm = cfg["llm"] as! [String: Any]
        var moe = llm["moe"] as! [String: Any]
        moe["layers"] = nil
        llm["moe"] = moe
        cfg["llm"] = llm
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: src + "/mm1pack_config.json"))
        expectFailure(src, ["mm1pack_config.json", "moe", "layers"])
    }

    func testOpenClipPrefersItsOwnWeightsFile() throws {
        let src = try copyFixture("openclip-vit")
        // A transformers copy beside the open_clip weights (as hub repositories have) must not be picked.
        try STWriter.file([]).write(to: URL(fileURLWithPath: src + "/model.safetensors"))
        let out = dir + "/oc.mm1"
        _ = try Converter.convert(source: src, output: out, options: quietOptions())
        XCTAssertNotNil(try BundleReader(path: out).tensor(named: "vit.head.weight"))
    }
}

