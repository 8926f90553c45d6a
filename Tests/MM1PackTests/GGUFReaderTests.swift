import Foundation
import XCTest
@testable import MM1Pack

/// Builds GGUF files byte by byte, so that tests can write exactly the (possibly broken) file they need.
struct GGUFBuilder {
    enum Value {
        case u32(UInt32), f32(Float), string(String), bool(Bool), strings([String]), i32s([Int32]), zeroI32s(Int)
    }
    struct Tensor {
        var name: String
        var dims: [UInt64]  // ggml order (innermost first)
        var type: UInt32
        var offset: UInt64? = nil  // nil: packed after the previous tensor
        var data: [UInt8]
        /// false: the info claims the offset but the data is not written there (a lying offset).
        var placeData = true
    }

    var magic: [UInt8] = Array("GGUF".utf8)
    var version: UInt32 = 3
    var kv: [(String, Value)] = [("general.architecture", .string("llama"))]
    var tensors: [Tensor] = []
    var alignment = 32
    var tensorCountOverride: UInt64? = nil
    var kvCountOverride: UInt64? = nil

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    static func str(_ s: String) -> [UInt8] { le(UInt64(s.utf8.count)) + Array(s.utf8) }

    func bytes() -> [UInt8] {
        var out = magic + Self.le(version)
        out += Self.le(tensorCountOverride ?? UInt64(tensors.count)) + Self.le(kvCountOverride ?? UInt64(kv.count))
        for (k, v) in kv {
            out += Self.str(k)
            switch v {
            case .u32(let x): out += Self.le(UInt32(4)) + Self.le(x)
            case .f32(let x): out += Self.le(UInt32(6)) + Self.le(x.bitPattern)
            case .bool(let b): out += Self.le(UInt32(7)) + [b ? 1 : 0]
            case .string(let s): out += Self.le(UInt32(8)) + Self.str(s)
            case .strings(let a):
                out += Self.le(UInt32(9)) + Self.le(UInt32(8)) + Self.le(UInt64(a.count))
                for s in a { out += Self.str(s) }
            case .zeroI32s(let n):
                out += Self.le(UInt32(9)) + Self.le(UInt32(5)) + Self.le(UInt64(n)) + [UInt8](repeating: 0, count: 4 * n)
            case .i32s(let a):
                out += Self.le(UInt32(9)) + Self.le(UInt32(5)) + Self.le(UInt64(a.count))
                for x in a { out += Self.le(x) }
            }
        }
        var offsets: [UInt64] = []
        var pos: UInt64 = 0
        for t in tensors {
            let o = t.offset ?? pos
            offsets.append(o)
            guard t.placeData else { continue }
            pos = o &+ UInt64(t.data.count)
            pos &+= (UInt64(alignment) - pos % UInt64(alignment)) % UInt64(alignment)
        }
        for (t, o) in zip(tensors, offsets) {
            out += Self.str(t.name) + Self.le(UInt32(t.dims.count))
            for d in t.dims { out += Self.le(d) }
            out += Self.le(t.type) + Self.le(o)
        }
        while out.count % alignment != 0 { out.append(0) }
        let start = out.count
        for (t, o) in zip(tensors, offsets) where t.placeData {
            let at = start + Int(o)
            if out.count < at + t.data.count { out += [UInt8](repeating: 0, count: at + t.data.count - out.count) }
            out.replaceSubrange(at..<(at + t.data.count), with: t.data)
        }
        while out.count % alignment != 0 { out.append(0) }
        return out
    }

    /// A valid file with two small F32 tensors.
    static func simple() -> GGUFBuilder {
        var b = GGUFBuilder()
        let floats: [Float] = (0..<8).map { Float($0) }
        let data = floats.flatMap { le($0.bitPattern) }
        b.tensors = [Tensor(name: "a.weight", dims: [8], type: 0, data: data),
                     Tensor(name: "b.weight", dims: [4, 2], type: 0, data: data)]
        return b
    }
}

final class GGUFReaderTests: XCTestCase {
    var dir = ""

    override func setUp() { dir = makeTempDir("gguf") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    static let types = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"]

    func bitsEqual(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        guard a.count == b.count else { return }
        let bad = (0..<a.count).filter { a[$0].bitPattern != b[$0].bitPattern }
        XCTAssertTrue(bad.isEmpty, "\(what): \(bad.count) element(s) differ, first at \(bad.first ?? -1): \(bad.first.map { "\(a[$0]) vs \(b[$0])" } ?? "")", file: file, line: line)
    }

    /// Every supported type against the `gguf` package's own NumPy dequantization (scripts/make_gguf_fixtures.py).
    func testEveryTypeMatchesGGUFPackage() throws {
        let r = try GGUFReader(path: TestPaths.fixture("gguf/types.gguf"))
        XCTAssertEqual(r.entries.map(\.typeName), Self.types)
        for t in Self.types {
            let expected = try NPY.read(TestPaths.fixture("gguf/expected/\(t).npy"))
            let info = try XCTUnwrap(r.tensors["t.\(t)"])
            XCTAssertEqual(info.shape, [2, 512])
            XCTAssertEqual(expected.shape, [2, 512])
            bitsEqual(try r.dequantized("t.\(t)"), expected.data, t)
            // Through the TensorSource interface: a box that cuts rows (row 1, columns 200 ..< 480).
            var box = [UInt8](repeating: 0, count: 280 * info.dtype.byteSize)
            try box.withUnsafeMutableBytes { try r.read("t.\(t)", lower: [1, 200], upper: [2, 480], into: $0) }
            let got: [Float]
            switch info.dtype {
            case .f32: got = box.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            case .f16: got = box.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }.map { NPY.halfToFloat($0) }
            case .bf16: got = box.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }.map { Float(bitPattern: UInt32($0) << 16) }
            default: XCTFail("dtype \(info.dtype)"); return
            }
            bitsEqual(got, Array(expected.data[(512 + 200)..<(512 + 480)]), "\(t) box")
        }
    }

    /// An f32 tensor of a bundle.
    func floats(_ b: BundleReader, _ name: String) throws -> [Float] {
        let t = try XCTUnwrap(b.tensor(named: name), name)
        XCTAssertEqual(t.dtypeName, "f32", name)
        return Array(t.data.bindMemory(to: Float.self))
    }

    static func f16(_ x: Float) -> [UInt8] { GGUFBuilder.le(Float16(x).bitPattern) }

    /// Q4_K packed by hand from the layout description (independent of both gguf-py and the C kernel): scales and
    /// mins above 15 so that the high bits of sub-blocks 4-7 matter.
    func testQ4KHandPacked() throws {
        let sc: [UInt8] = [1, 7, 15, 63, 33, 48, 17, 62], mn: [UInt8] = [0, 5, 63, 9, 40, 16, 31, 57]
        var packed = [UInt8](repeating: 0, count: 12)
        for i in 0..<4 {
            packed[i] = (sc[i] & 63) | ((sc[i + 4] >> 4) << 6)
            packed[i + 4] = (mn[i] & 63) | ((mn[i + 4] >> 4) << 6)
            packed[i + 8] = (sc[i + 4] & 15) | ((mn[i + 4] & 15) << 4)
        }
        let q: [UInt8] = (0..<256).map { UInt8(($0 * 7 + $0 / 32) % 16) }
        var qs = [UInt8](repeating: 0, count: 128)
        for g in 0..<4 {
            for l in 0..<32 { qs[32 * g + l] = q[64 * g + l] | (q[64 * g + 32 + l] << 4) }
        }
        let d: Float = 0.375, dmin: Float = 0.0625
        let block = Self.f16(d) + Self.f16(dmin) + packed + qs
        XCTAssertEqual(block.count, 144)
        var b = GGUFBuilder()
        b.tensors = [.init(name: "k", dims: [256], type: 12, data: block)]
        let path = dir + "/q4k.gguf"
        try Data(b.bytes()).write(to: URL(fileURLWithPath: path))
        let got = try GGUFReader(path: path).dequantized("k")
        let want: [Float] = (0..<256).map { e in
            let s = e / 32
            return (d * Float(sc[s])) * Float(q[e]) - dmin * Float(mn[s])
        }
        bitsEqual(got, want, "Q4_K")
    }

    /// Q6_K packed by hand: 6-bit codes split into ql/qh, signed 8-bit scales per 16 elements.
    func testQ6KHandPacked() throws {
        let q: [UInt8] = (0..<256).map { UInt8(($0 * 11 + 5) % 64) }
        let scales: [Int8] = (0..<16).map { Int8(($0 - 8) * 15) }
        var ql = [UInt8](repeating: 0, count: 128), qh = [UInt8](repeating: 0, count: 64)
        for h in 0..<2 {
            for l in 0..<32 {
                let e = 128 * h
                ql[64 * h + l] = (q[e + l] & 15) | ((q[e + l + 64] & 15) << 4)
                ql[64 * h + l + 32] = (q[e + l + 32] & 15) | ((q[e + l + 96] & 15) << 4)
                qh[32 * h + l] = (q[e + l] >> 4) | ((q[e + l + 32] >> 4) << 2) | ((q[e + l + 64] >> 4) << 4) | ((q[e + l + 96] >> 4) << 6)
            }
        }
        let d: Float = -0.125
        let block = ql + qh + scales.map { UInt8(bitPattern: $0) } + Self.f16(d)
        XCTAssertEqual(block.count, 210)
        var b = GGUFBuilder()
        b.tensors = [.init(name: "k", dims: [256], type: 14, data: block)]
        let path = dir + "/q6k.gguf"
        try Data(b.bytes()).write(to: URL(fileURLWithPath: path))
        let got = try GGUFReader(path: path).dequantized("k")
        let want: [Float] = (0..<256).map { e in (d * Float(scales[e / 16])) * Float(Int(q[e]) - 32) }
        bitsEqual(got, want, "Q6_K")
    }

    /// The tiny Llama converts: config from metadata, tied head, q/k rows un-permuted, tokenizer carried over.
    func testTinyLlamaConverts() throws {
        let src = TestPaths.fixture("gguf/tiny-llama.gguf")
        XCTAssertEqual(try Converter.detectLayout(src), "gguf")
        let out = dir + "/tiny.mm1"
        let report = try Converter.convert(source: src, output: out, options: quietOptions())
        XCTAssertEqual(report.layout, "gguf")
        XCTAssertEqual(report.warnings, [])
        let b = try BundleReader(path: out)
        let llm = try XCTUnwrap(b.config["llm"] as? [String: Any])
        XCTAssertEqual(llm["hidden_size"] as? Int, 32)
        XCTAssertEqual(llm["num_layers"] as? Int, 2)
        XCTAssertEqual(llm["num_heads"] as? Int, 4)
        XCTAssertEqual(llm["num_kv_heads"] as? Int, 2)
        XCTAssertEqual(llm["head_dim"] as? Int, 8)
        XCTAssertEqual(llm["intermediate_size"] as? Int, 64)
        XCTAssertEqual(llm["vocab_size"] as? Int, 264)
        XCTAssertEqual(llm["tie_embeddings"] as? Bool, true)
        XCTAssertEqual(llm["rms_norm_eps"] as? Double ?? 0, 1e-5, accuracy: 1e-12)
        XCTAssertEqual(llm["rope_theta"] as? Double, 10000)
        XCTAssertEqual(llm["bos_token_id"] as? Int, 1)
        XCTAssertNil(b.tensor(named: "llm.head.weight"))

        // q (Q4_1) and k (Q4_0): row 2j of each GGUF head becomes row j, row 2j+1 becomes row hd/2 + j.
        let r = try GGUFReader(path: src)
        for (g, c, heads) in [("attn_q", "q", 4), ("attn_k", "k", 2)] {
            let gg = try r.dequantized("blk.1.\(g).weight")
            let got = try floats(b, "llm.layers.1.attn.\(c).weight")
            let hd = 8, cols = 32
            var want = [Float](repeating: 0, count: gg.count)
            for h in 0..<heads {
                for j in 0..<(hd / 2) {
                    for x in 0..<cols {
                        want[(h * hd + j) * cols + x] = gg[(h * hd + 2 * j) * cols + x]
                        want[(h * hd + hd / 2 + j) * cols + x] = gg[(h * hd + 2 * j + 1) * cols + x]
                    }
                }
            }
            bitsEqual(got, want, c)
        }
        // v (F16) and o (BF16) keep their stored type under --dtype auto, unchanged.
        XCTAssertEqual(b.tensor(named: "llm.layers.0.attn.v.weight")?.dtypeName, "f16")
        XCTAssertEqual(b.tensor(named: "llm.layers.0.attn.o.weight")?.dtypeName, "bf16")
        bitsEqual(try floats(b, "llm.layers.0.mlp.down.weight"), try r.dequantized("blk.0.ffn_down.weight"), "down")

        // The tokenizer: merges Ġ t → Ġt, h e → he, Ġt he → Ġthe (id 260); control tokens; single digits.
        let tok = try BPETokenizer(json: try b.sectionData(named: "tokenizer.json"), file: "tokenizer.json")
        XCTAssertEqual(try tok.encode(" the"), [260])
        XCTAssertEqual(try tok.encode("<|im_start|>12"), [1, 2 + 0x31, 2 + 0x32])
        XCTAssertEqual(try tok.encode(" an"), [263])
        let tc = try JSONSerialization.jsonObject(with: Data(try b.sectionData(named: "tokenizer_config.json"))) as? [String: Any]
        XCTAssertEqual(tc?["bos_token"] as? String, "<|im_start|>")
        let meta = try XCTUnwrap(b.metadata["gguf"] as? [String: Any])
        XCTAssertEqual(meta["tensor_types"] as? [String: Int], ["F32": 5, "Q8_0": 3, "Q4_1": 4, "Q4_0": 4, "F16": 2, "BF16": 2])

        // f16 narrowing works too (and is checked for overflow by the converter).
        _ = try Converter.convert(source: src, output: dir + "/tiny16.mm1", options: quietOptions(.f16))
        XCTAssertEqual(try BundleReader(path: dir + "/tiny16.mm1").tensor(named: "llm.layers.0.attn.q.weight")?.dtypeName, "f16")
    }

    func testSentencePieceTokenizerIsReportedNotSilentlyDropped() throws {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("gguf/tiny-llama.gguf"))))
        // "gpt2" → "llam" would change the length; patch the model string in place to a same-length unknown one.
        let needle = Array("gpt2".utf8)
        let at = try XCTUnwrap((0...(bytes.count - 4)).first { Array(bytes[$0..<($0 + 4)]) == needle })
        bytes.replaceSubrange(at..<(at + 4), with: Array("spm1".utf8))
        let src = dir + "/spm.gguf"
        try Data(bytes).write(to: URL(fileURLWithPath: src))
        let out = dir + "/spm.mm1"
        let report = try Converter.convert(source: src, output: out, options: quietOptions())
        XCTAssertEqual(report.warnings.count, 1)
        XCTAssertTrue(report.warnings[0].contains("tokenizer.ggml.model 'spm1' is not supported"), report.warnings[0])
        let b = try BundleReader(path: out)
        XCTAssertNil(b.section(named: "tokenizer.json"))
        let meta = try XCTUnwrap(b.metadata["gguf"] as? [String: Any])
        XCTAssertNotNil(meta["tokenizer_not_converted"] as? String)
    }

    /// A Mixtral-style file (llama architecture with expert_count) in both expert namings: stacked `ffn_*_exps`
    /// and the older per-expert `ffn_*.E.weight`; F32 throughout, no tokenizer (weights only, with a warning).
    func testMoEExperts() throws {
        let d = 8, f = 6, x = 2, v = 4, nq = 2, nkv = 1, hd = 4
        var rng = SplitMix64(seed: 7)
        func f32(_ dims: [UInt64]) -> [UInt8] {
            (0..<dims.reduce(1, *)).flatMap { _ in GGUFBuilder.le(rng.uniform().bitPattern) }
        }
        func moeFile(stacked: Bool) -> GGUFBuilder {
            var b = GGUFBuilder()
            b.kv += [("llama.embedding_length", .u32(UInt32(d))), ("llama.block_count", .u32(1)),
                     ("llama.feed_forward_length", .u32(UInt32(f))), ("llama.attention.head_count", .u32(UInt32(nq))),
                     ("llama.attention.head_count_kv", .u32(UInt32(nkv))), ("llama.expert_count", .u32(UInt32(x))),
                     ("llama.expert_used_count", .u32(1)), ("llama.attention.layer_norm_rms_epsilon", .f32(1e-6)),
                     ("tokenizer.ggml.tokens", .strings(["a", "b", "c", "d"]))]
            var t: [(String, [UInt64])] = [("token_embd.weight", [UInt64(d), UInt64(v)]), ("blk.0.attn_norm.weight", [UInt64(d)]),
                     ("blk.0.attn_q.weight", [UInt64(d), UInt64(nq * hd)]), ("blk.0.attn_k.weight", [UInt64(d), UInt64(nkv * hd)]),
                     ("blk.0.attn_v.weight", [UInt64(d), UInt64(nkv * hd)]), ("blk.0.attn_output.weight", [UInt64(nq * hd), UInt64(d)]),
                     ("blk.0.ffn_norm.weight", [UInt64(d)]), ("blk.0.ffn_gate_inp.weight", [UInt64(d), UInt64(x)]),
                     ("output_norm.weight", [UInt64(d)]), ("output.weight", [UInt64(d), UInt64(v)])]
            if stacked {
                t += [("blk.0.ffn_gate_exps.weight", [UInt64(d), UInt64(f), UInt64(x)]), ("blk.0.ffn_up_exps.weight", [UInt64(d), UInt64(f), UInt64(x)]),
                      ("blk.0.ffn_down_exps.weight", [UInt64(f), UInt64(d), UInt64(x)])]
            } else {
                for e in 0..<x {
                    t += [("blk.0.ffn_gate.\(e).weight", [UInt64(d), UInt64(f)]), ("blk.0.ffn_up.\(e).weight", [UInt64(d), UInt64(f)]),
                          ("blk.0.ffn_down.\(e).weight", [UInt64(f), UInt64(d)])]
                }
            }
            b.tensors = t.map { GGUFBuilder.Tensor(name: $0.0, dims: $0.1, type: 0, data: f32($0.1)) }
            return b
        }
        let stackedPath = dir + "/moe.gguf", perExpertPath = dir + "/moe-legacy.gguf"
        let stacked = moeFile(stacked: true)
        try Data(stacked.bytes()).write(to: URL(fileURLWithPath: stackedPath))
        // The per-expert file holds the same expert values, split.
        var legacy = moeFile(stacked: false)
        let exps = Dictionary(uniqueKeysWithValues: stacked.tensors.map { ($0.name, $0.data) })
        let per = f * d * 4
        for e in 0..<x {
            for p in ["gate", "up", "down"] {
                let i = legacy.tensors.firstIndex { $0.name == "blk.0.ffn_\(p).\(e).weight" }!
                legacy.tensors[i].data = Array(exps["blk.0.ffn_\(p)_exps.weight"]![(e * per)..<((e + 1) * per)])
            }
        }
        for i in legacy.tensors.indices {
            if let same = exps[legacy.tensors[i].name] { legacy.tensors[i].data = same }
        }
        try Data(legacy.bytes()).write(to: URL(fileURLWithPath: perExpertPath))

        var digests: [[String: String]] = []
        for src in [stackedPath, perExpertPath] {
            let out = src + ".mm1"
            let report = try Converter.convert(source: src, output: out, options: quietOptions())
            XCTAssertEqual(report.warnings.count, 1)
            XCTAssertTrue(report.warnings.first?.contains("tokenizer.ggml.model is missing") ?? false, "\(report.warnings)")
            let b = try BundleReader(path: out)
            let moe = try XCTUnwrap((b.config["llm"] as? [String: Any])?["moe"] as? [String: Any])
            XCTAssertEqual(moe["num_experts"] as? Int, 2)
            XCTAssertEqual(moe["top_k"] as? Int, 1)
            XCTAssertEqual(moe["layers"] as? [Int], [0])
            XCTAssertEqual((b.config["llm"] as? [String: Any])?["tie_embeddings"] as? Bool, false)
            XCTAssertEqual(b.tensor(named: "llm.layers.0.moe.down.weight")?.shape, [x, d, f])
            XCTAssertEqual(b.tensor(named: "llm.layers.0.moe.gate.weight")?.shape, [x, f, d])
            digests.append(Dictionary(uniqueKeysWithValues: b.tensors.map { ($0.name, $0.sha256) }))
        }
        XCTAssertEqual(digests[0], digests[1], "the two expert namings give different bundles")
        let gate = try floats(try BundleReader(path: stackedPath + ".mm1"), "llm.layers.0.moe.gate.weight")
        XCTAssertEqual(gate, exps["blk.0.ffn_gate_exps.weight"]!.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) })
    }

    // MARK: broken files

    func expectFailure(_ bytes: [UInt8], _ fragments: [String], name: String = "broken.gguf",
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let src = dir + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: src))
        let out = dir + "/out.mm1"
        XCTAssertThrowsError(try Converter.convert(source: src, output: out, options: quietOptions()), file: file, line: line) { e in
            let msg = "\(e)"
            for f in [name] + fragments { XCTAssertTrue(msg.contains(f), "'\(f)' missing from: \(msg)", file: file, line: line) }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "an output file was left behind", file: file, line: line)
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: dir))?.filter { $0.contains("partial") } ?? []
        XCTAssertEqual(leftovers, [], "temporary files left behind", file: file, line: line)
    }

    func testSimpleBuilderFileIsValid() throws {
        let path = dir + "/ok.gguf"
        try Data(GGUFBuilder.simple().bytes()).write(to: URL(fileURLWithPath: path))
        let r = try GGUFReader(path: path)
        XCTAssertEqual(r.tensors["b.weight"]?.shape, [2, 4])
        XCTAssertEqual(try r.dequantized("b.weight"), (0..<8).map { Float($0) })
    }

    func testTruncatedData() throws {
        let full = [UInt8](try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("gguf/tiny-llama.gguf"))))
        try expectFailure(Array(full.prefix(full.count - 100)), ["runs past the end of the file", "truncated"])
    }

    func testTruncatedHeader() throws {
        let full = [UInt8](try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("gguf/tiny-llama.gguf"))))
        try expectFailure(Array(full.prefix(300)), ["is truncated"])
        try expectFailure(Array(full.prefix(10)), ["too short for a GGUF header"])
    }

    func testBadMagicAndVersion() throws {
        var b = GGUFBuilder.simple()
        b.magic = Array("GGUG".utf8)
        try expectFailure(b.bytes(), ["not a GGUF file"])
        b = GGUFBuilder.simple()
        b.version = 1
        try expectFailure(b.bytes(), ["version 1 is not supported"])
        b.version = UInt32(3).byteSwapped
        try expectFailure(b.bytes(), ["big-endian"])
    }

    func testLyingCounts() throws {
        var b = GGUFBuilder.simple()
        b.tensorCountOverride = 1_000_000
        try expectFailure(b.bytes(), ["claims 1000000 tensors"])
        b = GGUFBuilder.simple()
        b.kvCountOverride = UInt64(1) << 60
        try expectFailure(b.bytes(), ["metadata keys, more than"])
        b = GGUFBuilder.simple()
        b.tensorCountOverride = 3  // one more than written: the reader runs into the data
        try expectFailure(b.bytes(), ["tensor"])
    }

    func testHugeMetadataArrayIsRefused() throws {
        var b = GGUFBuilder.simple()
        b.kv.append(("x.big", .zeroI32s(GGUFReader.maxMetadataElements + 1)))
        try expectFailure(b.bytes(), ["metadata key 'x.big'", "more than 16777216 elements"])
    }

    func testLyingStringLength() throws {
        var bytes = GGUFBuilder.simple().bytes()
        // The first key's length field sits right after the 24-byte header.
        bytes.replaceSubrange(24..<32, with: GGUFBuilder.le(UInt64(1) << 40))
        try expectFailure(bytes, ["string length 1099511627776", "runs past the end"])
    }

    func testLyingOffsets() throws {
        var b = GGUFBuilder.simple()
        b.tensors[1].offset = 4
        try expectFailure(b.bytes(), ["tensor 'b.weight'", "not a multiple of the alignment 32"])
        b = GGUFBuilder.simple()
        b.tensors[1].offset = 1 << 20
        b.tensors[1].placeData = false
        try expectFailure(b.bytes(), ["tensor 'b.weight'", "runs past the end of the file"])
        b = GGUFBuilder.simple()
        b.tensors[1].offset = UInt64.max - 31
        b.tensors[1].placeData = false
        try expectFailure(b.bytes(), ["tensor 'b.weight'", "runs past the end of the file"])
        b = GGUFBuilder.simple()
        b.tensors[0].data += [UInt8](repeating: 0, count: 32)  // a.weight is 32 bytes but now 64 are written...
        b.tensors[0].dims = [16]  // ...and claimed, then b.weight is placed over its tail
        b.tensors[1].offset = 32
        try expectFailure(b.bytes(), ["tensor 'b.weight'", "overlaps tensor 'a.weight'"])
    }

    func testBadTensorInfo() throws {
        var b = GGUFBuilder.simple()
        b.tensors[0].type = 13
        try expectFailure(b.bytes(), ["tensor 'a.weight'", "Q5_K", "cannot read", "supported: F32"])
        b.tensors[0].type = 99
        try expectFailure(b.bytes(), ["tensor 'a.weight'", "unknown type 99"])
        b = GGUFBuilder.simple()
        b.tensors[0].type = 8  // Q8_0 needs rows of 32
        try expectFailure(b.bytes(), ["tensor 'a.weight'", "innermost dimension 8 is not a multiple of the Q8_0 block size 32"])
        b = GGUFBuilder.simple()
        b.tensors[1].name = "a.weight"
        try expectFailure(b.bytes(), ["tensor 'a.weight'", "appears twice"])
        b = GGUFBuilder.simple()
        b.tensors[0].dims = [2, 2, 2, 1, 1]
        try expectFailure(b.bytes(), ["tensor 'a.weight'", "5 dimensions"])
        b = GGUFBuilder.simple()
        b.tensors[0].dims = [UInt64(1) << 62, 8]
        try expectFailure(b.bytes(), ["tensor 'a.weight'", "too many elements"])
    }

    func testBadMetadata() throws {
        var b = GGUFBuilder.simple()
        b.kv.append(("general.alignment", .u32(24)))
        try expectFailure(b.bytes(), ["general.alignment", "power of two"])
        b = GGUFBuilder.simple()
        b.kv.append(("general.architecture", .string("llama")))
        try expectFailure(b.bytes(), ["metadata key 'general.architecture' appears twice"])
        b = GGUFBuilder.simple()
        b.kv = [("general.architecture", .string("qwen2"))]
        try expectFailure(b.bytes(), ["general.architecture 'qwen2' is not supported"])
        // A valid file without the llama hyper-parameters.
        try expectFailure(GGUFBuilder.simple().bytes(), ["llama.embedding_length is missing"])
    }

    /// A file with a non-default alignment reads correctly.
    func testAlignment() throws {
        var b = GGUFBuilder.simple()
        b.alignment = 64
        b.kv.append(("general.alignment", .u32(64)))
        let path = dir + "/a64.gguf"
        try Data(b.bytes()).write(to: URL(fileURLWithPath: path))
        let r = try GGUFReader(path: path)
        XCTAssertEqual(r.alignment, 64)
        XCTAssertEqual(r.dataOffset % 64, 0)
        XCTAssertEqual(try r.dequantized("b.weight"), (0..<8).map { Float($0) })
    }
}
