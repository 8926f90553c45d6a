import Crypto
import Foundation
import XCTest
@testable import MM1Pack

/// The provenance's source-file digests (formats/bundle.md §4.1) equal digests recomputed from the files alone,
/// whether the converter reused the bundle's tensor digests (tensors copied unchanged) or hashed the bytes itself
/// (tensors converted, stacked or skipped), for single files and shards.
final class SourceDigestTests: XCTestCase {
    static let safetensorsFixtures = ["honeybee-dense", "honeybee-moe", "llama-text", "llava-llama", "llava-mixtral",
                                      "llava-mixtral-v5", "openclip-vit"]

    static func sha256(_ bytes: some DataProtocol) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    /// `sha256_segments` written from the specification, sharing no code with the converter.
    static func recomputeSegments(_ path: String) throws -> String {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = data.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as! [String: Any]
        var ranges: [(Int, Int)] = []
        for (name, value) in header where name != "__metadata__" {
            let offsets = (value as! [String: Any])["data_offsets"] as! [Int]
            if offsets[1] > offsets[0] { ranges.append((8 + n + offsets[0], 8 + n + offsets[1])) }
        }
        var segments = [(0, 8 + n)]
        var pos = 8 + n
        for (b, e) in ranges.sorted(by: { $0.0 < $1.0 }) + [(data.count, data.count)] {
            if b > pos { segments.append((pos, b)) }
            if e > b { segments.append((b, e)) }
            pos = e
        }
        let listing = segments.map { b, e in "\(b) \(e - b) \(sha256(data.subdata(in: b..<e)))\n" }.joined()
        return sha256(Array(listing.utf8))
    }

    static func recompute(_ path: String, key: String) throws -> String {
        key == "sha256_segments" ? try recomputeSegments(path) : sha256(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Converts and checks every `source_files` entry against the files; returns the conversion report.
    @discardableResult
    func convertAndCheck(_ source: String, root: String, dtype: ConvertOptions.TargetDType = .auto,
                         kind: SourceDigestKind = .segments, file: StaticString = #filePath,
                         line: UInt = #line) throws -> ConvertReport {
        let out = makeTempDir("source-digest") + "/out.mm1"
        defer { try? FileManager.default.removeItem(atPath: (out as NSString).deletingLastPathComponent) }
        var o = quietOptions(dtype)
        o.sourceDigestKind = kind
        let report = try Converter.convert(source: source, output: out, options: o)
        let provenance = try BundleReader(path: out).provenance
        XCTAssertEqual((provenance["options"] as? [String: Any])?["source_digests"] as? String, kind.rawValue,
                       file: file, line: line)
        let entries = try XCTUnwrap(provenance["source_files"] as? [[String: Any]], file: file, line: line)
        XCTAssertFalse(entries.isEmpty, file: file, line: line)
        for e in entries {
            let rel = try XCTUnwrap(e["path"] as? String, file: file, line: line)
            let path = root + "/" + rel
            XCTAssertEqual(e["size"] as? Int, try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int,
                           rel, file: file, line: line)
            let keys = Set(e.keys).subtracting(["path", "size"])
            let want: Set<String> = switch kind {
            case .none: []
            case .full: ["sha256"]
            case .segments: [rel.hasSuffix(".safetensors") ? "sha256_segments" : "sha256"]
            }
            XCTAssertEqual(keys, want, rel, file: file, line: line)
            for k in keys {
                XCTAssertEqual(e[k] as? String, try SourceDigestTests.recompute(path, key: k), "\(rel) \(k)",
                               file: file, line: line)
            }
        }
        return report
    }

    func testFixturesInEveryDTypeMatchRecomputation() throws {
        for name in SourceDigestTests.safetensorsFixtures {
            let root = TestPaths.fixture(name)
            // The fixtures are f32: auto copies them, f16 and bf16 convert every tensor.
            for dtype in [ConvertOptions.TargetDType.auto, .f16, .bf16] {
                try convertAndCheck(root, root: root, dtype: dtype)
            }
        }
    }

    func testFullAndNone() throws {
        for name in ["llava-mixtral", "openclip-vit", "axlearn-dense"] {
            let root = TestPaths.fixture(name)
            let stepRoot = try Converter.open(root).source.root
            let full = try convertAndCheck(root, root: stepRoot, kind: .full)
            XCTAssertGreaterThan(full.sourceBytesHashed, 0)
            let none = try convertAndCheck(root, root: stepRoot, kind: .none)
            XCTAssertEqual(none.sourceBytesHashed, 0)
        }
    }

    /// AXLearn files are not safetensors: `segments` records their plain `sha256`.
    func testAXLearnGetsWholeFileDigests() throws {
        for name in ["axlearn-dense", "axlearn-moe"] {
            let root = TestPaths.fixture(name)
            try convertAndCheck(root, root: try Converter.open(root).source.root)
        }
    }

    /// A sharded bf16 Llama whose tensors are large enough for the writer's copy_file_range path, plus a RoPE
    /// buffer the layout ignores. Unchanged, only headers, the index and the ignored buffer are hashed again;
    /// converted to f32, every byte is.
    func testShardedSourceCopiedAndConverted() throws {
        let root = makeTempDir("source-digest-src")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let layout = try SourceDigestTests.writeLlama(root)
        XCTAssertGreaterThan(layout.files.count, 2, "the source should be sharded")

        let copied = try convertAndCheck(root, root: root)
        let fileBytes = layout.files.reduce(0) { $0 + ((try? FileManager.default.attributesOfItem(atPath: root + "/" + $1)[.size] as? Int) ?? 0) }
        XCTAssertEqual(copied.sourceBytesHashed, fileBytes - layout.reusableTensorBytes,
                       "only the bytes no bundle tensor holds unchanged are hashed again")
        let converted = try convertAndCheck(root, root: root, dtype: .f32)
        XCTAssertEqual(converted.sourceBytesHashed, fileBytes)
        try convertAndCheck(root, root: root, kind: .full)
    }

    /// Changing one byte of a copied tensor changes its file's digest, though the converter never rehashed it.
    func testDigestFollowsTensorBytes() throws {
        let root = makeTempDir("source-digest-src")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let layout = try SourceDigestTests.writeLlama(root)
        func digests() throws -> [String: String] {
            let out = root + "/../\((root as NSString).lastPathComponent).mm1"
            defer { try? FileManager.default.removeItem(atPath: out) }
            _ = try Converter.convert(source: root, output: out, options: quietOptions())
            let entries = try BundleReader(path: out).provenance["source_files"] as! [[String: Any]]
            return Dictionary(uniqueKeysWithValues: entries.map { ($0["path"] as! String, ($0["sha256_segments"] ?? $0["sha256"]) as! String) })
        }
        let before = try digests()
        let shard = layout.files.first { $0.hasSuffix(".safetensors") }!
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: root + "/" + shard))
        let size = try h.seekToEnd()
        try h.seek(toOffset: size - 2)  // inside the shard's last tensor, a finite bf16 either way
        let old = try h.read(upToCount: 1)![0]
        try h.seek(toOffset: size - 2)
        try h.write(contentsOf: Data([old ^ 1]))
        try h.close()
        let after = try digests()
        for f in layout.files {
            if f == shard {
                XCTAssertNotEqual(before[f], after[f], f)
                XCTAssertEqual(after[f], try SourceDigestTests.recomputeSegments(root + "/" + f), f)
            } else {
                XCTAssertEqual(before[f], after[f], f)
            }
        }
    }

    /// scripts/source_digest.py agrees with the converter (skipped without python3).
    func testPythonScriptChecksBundles() throws {
        guard SourceDigestTests.run(["python3", "-c", "pass"]).status == 0 else { throw XCTSkip("no python3") }
        let root = makeTempDir("source-digest-src")
        defer { try? FileManager.default.removeItem(atPath: root) }
        _ = try SourceDigestTests.writeLlama(root)
        for (source, dtype) in [(root, ConvertOptions.TargetDType.auto), (root, .f32),
                                (TestPaths.fixture("llava-mixtral"), .f16), (TestPaths.fixture("axlearn-moe"), .auto)] {
            let out = root + ".mm1"
            defer { try? FileManager.default.removeItem(atPath: out) }
            _ = try Converter.convert(source: source, output: out, options: quietOptions(dtype))
            let (status, text) = SourceDigestTests.run(["python3", TestPaths.repo + "/scripts/source_digest.py", "--check", out,
                                                        try Converter.open(source).source.root])
            XCTAssertEqual(status, 0, "\(source) \(dtype): \(text)")
            XCTAssertFalse(text.contains("DIFF"), text)
            XCTAssertTrue(text.contains(" digests match"), text)
        }
    }

    /// Runs a command found on PATH; status 127 when it cannot be started.
    static func run(_ args: [String]) -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        guard (try? p.run()) != nil else { return (127, "") }
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }

    struct LlamaSource {
        var files: [String]
        /// Bytes of the tensors a conversion to the stored dtype holds unchanged.
        var reusableTensorBytes: Int
    }

    /// Writes a 2-layer Llama (width 512, vocab 1024, bf16) in shards of at most 3 MiB of tensor data.
    static func writeLlama(_ dir: String) throws -> LlamaSource {
        let width = 512, ff = 1024, vocab = 1024, kvHeads = 2, headDim = 128, layers = 2
        let config: [String: Any] = [
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": width,
            "intermediate_size": ff, "vocab_size": vocab, "num_hidden_layers": layers, "num_attention_heads": 4,
            "num_key_value_heads": kvHeads, "head_dim": headDim, "hidden_act": "silu", "rms_norm_eps": 1e-5,
            "max_position_embeddings": 256, "rope_theta": 10000.0, "tie_word_embeddings": true,
            "torch_dtype": "bfloat16", "attention_bias": false, "mlp_bias": false,
        ]
        try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys])
            .write(to: URL(fileURLWithPath: dir + "/config.json"))
        var tensors = [SafetensorsWriter.Tensor(name: "model.embed_tokens.weight", dtype: .bf16, shape: [vocab, width])]
        for i in 0..<layers {
            let p = "model.layers.\(i)."
            tensors += [
                .init(name: p + "input_layernorm.weight", dtype: .bf16, shape: [width]),
                .init(name: p + "self_attn.q_proj.weight", dtype: .bf16, shape: [width, width]),
                .init(name: p + "self_attn.k_proj.weight", dtype: .bf16, shape: [kvHeads * headDim, width]),
                .init(name: p + "self_attn.v_proj.weight", dtype: .bf16, shape: [kvHeads * headDim, width]),
                .init(name: p + "self_attn.o_proj.weight", dtype: .bf16, shape: [width, width]),
                .init(name: p + "self_attn.rotary_emb.inv_freq", dtype: .f32, shape: [headDim / 2]),
                .init(name: p + "post_attention_layernorm.weight", dtype: .bf16, shape: [width]),
                .init(name: p + "mlp.gate_proj.weight", dtype: .bf16, shape: [ff, width]),
                .init(name: p + "mlp.up_proj.weight", dtype: .bf16, shape: [ff, width]),
                .init(name: p + "mlp.down_proj.weight", dtype: .bf16, shape: [width, ff]),
            ]
        }
        tensors.append(.init(name: "model.norm.weight", dtype: .bf16, shape: [width]))
        let writer = try SafetensorsWriter(directory: dir, tensors: tensors, maxShardBytes: 3 << 20)
        var rng = SplitMix64(seed: 11)
        for t in tensors {
            try writer.beginTensor(t.name)
            let count = t.shape.reduce(1, *)
            if t.dtype == .f32 {
                let values = (0..<count).map { Float(1) / powf(10000, Float(2 * $0) / Float(headDim)) }
                try values.withUnsafeBytes { try writer.write($0) }
            } else {
                let norm = t.name.hasSuffix("norm.weight")
                let bits = (0..<count).map { _ in UInt16(truncatingIfNeeded: (norm ? 1 : rng.uniform() * 0.05).bitPattern >> 16) }
                try bits.withUnsafeBytes { try writer.write($0) }
            }
        }
        try writer.finish()
        let reusable = tensors.filter { !$0.name.hasSuffix("inv_freq") }.reduce(0) { $0 + $1.byteCount }
        let files = writer.files + (writer.files.count > 1 ? [SafetensorsWriter.indexFileName] : [])
        return LlamaSource(files: files.sorted(), reusableTensorBytes: reusable)
    }
}
