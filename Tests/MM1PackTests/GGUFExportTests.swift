import Foundation
import XCTest

@testable import MM1Pack

/// GGUF export, checked by parsing the file by hand here (not with the writer's code): header, metadata, tensor
/// infos, alignment, and block bytes against the bundle's codes (formats/gguf-export.md). The CI script
/// scripts/check_gguf_export.py checks the fixtures with the `gguf` package.
final class GGUFExportTests: XCTestCase {
    let d = 32, v = 32, heads = 2, kvHeads = 1, dh = 16

    struct Built {
        var name: String
        var dtype: String
        var shape: [Int]
        var bytes: [UInt8]
        var quant: [String: Any]?
    }

    private func tmpDir() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// Deterministic pseudo-random codes.
    private func codes(_ n: Int, bits: Int, seed: Int) -> [UInt8] {
        var x = UInt32(truncatingIfNeeded: seed &* 2654435761 &+ 12345)
        return (0 ..< n).map { _ in
            x = x &* 1664525 &+ 1013904223
            return bits == 8 ? UInt8(bitPattern: Int8(Int(x >> 24) % 255 - 127)) : UInt8((x >> 24) & 15)
        }
    }

    private func quantized(_ name: String, shape: [Int], spec: QuantSpec, scales: [Float], zeros: [Float]? = nil, seed: Int) throws -> Built {
        let n = shape.reduce(1, *)
        let q = QuantizedTensor(spec: spec, shape: shape, codes: codes(n, bits: spec.bits, seed: seed), scales: scales, zeros: zeros)
        let p = try QuantFormat.pack(q)
        return Built(name: name, dtype: p.dtype, shape: shape, bytes: p.bytes, quant: p.quant)
    }

    private func float(_ name: String, shape: [Int], dtype: DType, seed: Int) -> Built {
        let n = shape.reduce(1, *)
        var bytes: [UInt8] = []
        for i in 0 ..< n {
            let f = Float((i * 37 + seed * 11) % 101 - 50) / 64
            switch dtype {
            case .f32: withUnsafeBytes(of: f.bitPattern.littleEndian) { bytes += $0 }
            case .f16: withUnsafeBytes(of: Float16(f).bitPattern.littleEndian) { bytes += $0 }
            default: withUnsafeBytes(of: UInt16(f.bitPattern >> 16).littleEndian) { bytes += $0 }
            }
        }
        return Built(name: name, dtype: dtype.rawValue, shape: shape, bytes: bytes, quant: nil)
    }

    /// A one-layer llama bundle: embedding int8 g32 (→ Q8_0), q int4 sym g32 with negative scales (→ Q4_0, rows
    /// permuted), k int4 asym g32 with power-of-two scales (→ Q4_1, exact), v f32, o bf16, MLP f16, norms f16/f32.
    /// `gateGroup` lets a test give the gate a group size without a GGUF type.
    private func makeBundle(_ dir: String, gateGroup: Int? = nil) throws -> String {
        let rowsQ = heads * dh, rowsK = kvHeads * dh
        var t: [Built] = []
        t.append(try quantized("llm.embed.weight", shape: [v, d], spec: QuantSpec(bits: 8, groupSize: 32, scheme: .sym),
                               scales: (0 ..< v).map { Float(Float16(0.01 + Float($0) * 0.003)) }, seed: 1))
        t.append(float("llm.layers.0.attn_norm.weight", shape: [d], dtype: .f16, seed: 2))
        t.append(try quantized("llm.layers.0.attn.q.weight", shape: [rowsQ, d], spec: QuantSpec(bits: 4, groupSize: 32, scheme: .sym),
                               scales: (0 ..< rowsQ).map { Float(Float16(($0 % 3 == 0 ? -1 : 1) * (0.02 + Float($0) * 0.001))) }, seed: 3))
        t.append(try quantized("llm.layers.0.attn.k.weight", shape: [rowsK, d], spec: QuantSpec(bits: 4, groupSize: 32, scheme: .asym),
                               scales: (0 ..< rowsK).map { Float(1) / Float(1 << (4 + $0 % 5)) },
                               zeros: (0 ..< rowsK).map { Float($0 % 16) }, seed: 4))
        t.append(float("llm.layers.0.attn.v.weight", shape: [rowsK, d], dtype: .f32, seed: 5))
        t.append(float("llm.layers.0.attn.o.weight", shape: [d, rowsQ], dtype: .bf16, seed: 6))
        t.append(float("llm.layers.0.mlp_norm.weight", shape: [d], dtype: .f32, seed: 7))
        if let g = gateGroup {
            t.append(try quantized("llm.layers.0.mlp.gate.weight", shape: [d, d], spec: QuantSpec(bits: 4, groupSize: g, scheme: .sym),
                                   scales: [Float](repeating: 0.5, count: d * d / g), seed: 8))
        } else {
            t.append(float("llm.layers.0.mlp.gate.weight", shape: [d, d], dtype: .f16, seed: 8))
        }
        t.append(float("llm.layers.0.mlp.up.weight", shape: [d, d], dtype: .f16, seed: 9))
        t.append(float("llm.layers.0.mlp.down.weight", shape: [d, d], dtype: .f16, seed: 10))
        t.append(float("llm.norm.weight", shape: [d], dtype: .f32, seed: 11))
        let config: [String: Any] = [
            "vision": NSNull(), "connector": NSNull(), "image_token_id": NSNull(), "image_processor": NSNull(),
            "llm": ["kind": "decoder", "vocab_size": v, "hidden_size": d, "num_layers": 1, "num_heads": heads,
                    "num_kv_heads": kvHeads, "head_dim": dh, "intermediate_size": d, "tie_embeddings": true,
                    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 128, "moe": NSNull()],
        ]
        let path = dir + "/tiny.mm1"
        let w = try BundleWriter(path: path, tensors: t.map { .init(name: $0.name, dtype: $0.dtype, shape: $0.shape, length: $0.bytes.count, quant: $0.quant) },
                                 sections: [], config: config, provenance: ["tool": "mm1pack"], metadata: [:])
        for x in t {
            try w.beginTensor(x.name)
            try x.bytes.withUnsafeBytes { try w.write($0) }
        }
        try w.finish()
        return path
    }

    // MARK: a minimal GGUF parser, independent of GGUFWriter

    struct Parsed {
        var version: UInt32
        var kv: [String: (type: UInt32, value: Any)]
        var keys: [String]
        var tensors: [(name: String, ne: [Int], type: UInt32, offset: Int)]
        var dataStart: Int
        var bytes: [UInt8]
    }

    private func parse(_ path: String) throws -> Parsed {
        let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        var p = 0
        func u(_ n: Int) -> UInt64 {
            var x: UInt64 = 0
            for i in 0 ..< n { x |= UInt64(b[p + i]) << (8 * i) }
            p += n
            return x
        }
        func str() -> String {
            let n = Int(u(8))
            defer { p += n }
            return String(decoding: b[p ..< p + n], as: UTF8.self)
        }
        func value(_ t: UInt32) -> Any {
            switch t {
            case 0, 7: return u(1)
            case 4: return UInt32(u(4))
            case 5: return Int32(bitPattern: UInt32(u(4)))
            case 6: return Float(bitPattern: UInt32(u(4)))
            case 8: return str()
            case 9:
                let et = UInt32(u(4)), n = Int(u(8))
                return (0 ..< n).map { _ in value(et) }
            case 10: return u(8)
            default: XCTFail("unexpected GGUF value type \(t)"); return 0
            }
        }
        XCTAssertEqual(Array(b[0 ..< 4]), Array("GGUF".utf8))
        p = 4
        let version = UInt32(u(4))
        let nt = Int(u(8)), nkv = Int(u(8))
        var kv: [String: (UInt32, Any)] = [:]
        var keys: [String] = []
        for _ in 0 ..< nkv {
            let k = str()
            let t = UInt32(u(4))
            kv[k] = (t, value(t))
            keys.append(k)
        }
        var tensors: [(String, [Int], UInt32, Int)] = []
        for _ in 0 ..< nt {
            let name = str()
            let nd = Int(u(4))
            let ne = (0 ..< nd).map { _ in Int(u(8)) }
            let type = UInt32(u(4))
            tensors.append((name, ne, type, Int(u(8))))
        }
        let dataStart = (p + 31) / 32 * 32
        XCTAssertTrue(b[p ..< dataStart].allSatisfy { $0 == 0 }, "padding before the data section is zero")
        return Parsed(version: version, kv: kv, keys: keys, tensors: tensors, dataStart: dataStart, bytes: b)
    }

    private func f16(_ b: [UInt8], _ o: Int) -> Float { Float(Float16(bitPattern: UInt16(b[o]) | UInt16(b[o + 1]) << 8)) }

    func testRopePermutationPairsHalvesAdjacently() {
        XCTAssertEqual(GGUFExport.ropePermutation(heads: 1, headDim: 4), [0, 2, 1, 3])
        XCTAssertEqual(GGUFExport.ropePermutation(heads: 2, headDim: 4), [0, 2, 1, 3, 4, 6, 5, 7])
    }

    func testTinyLlamaExportByHand() throws {
        let dir = try tmpDir()
        let bundlePath = try makeBundle(dir)
        let out = dir + "/tiny.gguf"
        let r = try GGUFExport.exportLanguageModel(bundle: bundlePath, output: out, options: { var o = GGUFExportOptions(); o.showProgress = false; return o }())
        XCTAssertEqual(r.requantized, [])
        let g = try parse(out)
        XCTAssertEqual(g.version, 3)
        XCTAssertEqual(g.keys.first, "general.alignment")
        XCTAssertEqual(g.kv["general.alignment"]?.value as? UInt32, 32)
        XCTAssertEqual(g.kv["general.architecture"]?.value as? String, "llama")
        XCTAssertEqual(g.kv["llama.embedding_length"]?.value as? UInt32, UInt32(d))
        XCTAssertEqual(g.kv["llama.attention.head_count_kv"]?.value as? UInt32, UInt32(kvHeads))
        XCTAssertEqual(g.kv["llama.rope.dimension_count"]?.value as? UInt32, UInt32(dh))
        XCTAssertEqual(g.kv["llama.rope.freq_base"]?.value as? Float, 500000)
        XCTAssertEqual(g.kv["llama.attention.layer_norm_rms_epsilon"]?.value as? Float, Float(1e-5))
        XCTAssertEqual(g.kv["llama.context_length"]?.value as? UInt32, 128)
        XCTAssertEqual(g.kv["general.quantization_version"]?.value as? UInt32, 2)
        XCTAssertNil(g.kv["llama.expert_count"])
        XCTAssertEqual(g.kv["tokenizer.ggml.model"]?.value as? String, "none", "no tokenizer.json section: llama.cpp's id-only vocabulary")
        XCTAssertNil(g.kv["tokenizer.ggml.tokens"])

        let names = g.tensors.map(\.name)
        XCTAssertEqual(names, ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                               "blk.0.attn_v.weight", "blk.0.attn_output.weight", "blk.0.ffn_norm.weight", "blk.0.ffn_gate.weight",
                               "blk.0.ffn_down.weight", "blk.0.ffn_up.weight", "output_norm.weight"], "tied head: no output.weight")
        let types = Dictionary(uniqueKeysWithValues: g.tensors.map { ($0.name, $0.type) })
        XCTAssertEqual(types["token_embd.weight"], 8)  // Q8_0
        XCTAssertEqual(types["blk.0.attn_q.weight"], 2)  // Q4_0
        XCTAssertEqual(types["blk.0.attn_k.weight"], 3)  // Q4_1
        XCTAssertEqual(types["blk.0.attn_v.weight"], 0)  // F32
        XCTAssertEqual(types["blk.0.attn_output.weight"], 30)  // BF16
        XCTAssertEqual(types["blk.0.attn_norm.weight"], 0, "1-D f16 widened to F32")
        XCTAssertEqual(types["blk.0.ffn_gate.weight"], 1)  // F16

        // Offsets: packed in order, each a multiple of 32.
        let sizes: [UInt32: (Int, Int)] = [0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34)]
        var expected = 0
        for t in g.tensors {
            XCTAssertEqual(t.offset, expected, t.name)
            let (bs, bb) = sizes[t.type]!
            expected = (expected + t.ne.reduce(1, *) / bs * bb + 31) / 32 * 32
        }
        XCTAssertEqual(g.dataStart + expected, g.bytes.count)

        let bundle = try BundleReader(path: bundlePath)
        func data(_ name: String) -> Int { g.dataStart + g.tensors.first { $0.name == name }!.offset }

        // Q8_0: block (row r, block 0) = f16 scale of the row, then the 32 int8 codes as stored.
        let emb = try QuantizedView(XCTUnwrap(bundle.tensor(named: "llm.embed.weight")), file: bundlePath).unpack()
        XCTAssertEqual(g.tensors[0].ne, [d, v])
        for r in [0, 5, v - 1] {
            let o = data("token_embd.weight") + 34 * r
            XCTAssertEqual(f16(g.bytes, o), emb.scales[r])
            XCTAssertEqual(Array(g.bytes[o + 2 ..< o + 34]), Array(emb.codes[r * d ..< r * d + 32]))
        }

        // Q4_0 with the rope permutation: GGUF row 2i + j of head h is bundle row h·Dh + j·Dh/2 + i. Low nibble of
        // qs[j] = element j, high nibble = element j + 16; the (possibly negative) scale is d unchanged.
        let qv = try QuantizedView(XCTUnwrap(bundle.tensor(named: "llm.layers.0.attn.q.weight")), file: bundlePath)
        let q = qv.unpack(), qf = qv.dequantized()
        for newRow in 0 ..< heads * dh {
            let h = newRow / dh, i = newRow % dh / 2, j = newRow % 2
            let src = h * dh + j * dh / 2 + i
            let o = data("blk.0.attn_q.weight") + 18 * newRow
            XCTAssertEqual(f16(g.bytes, o), q.scales[src], "row \(newRow)")
            for e in 0 ..< 16 {
                XCTAssertEqual(g.bytes[o + 2 + e] & 15, q.codes[src * d + e])
                XCTAssertEqual(g.bytes[o + 2 + e] >> 4, q.codes[src * d + e + 16])
                // ggml's Q4_0 dequantization gives the bundle's value bit for bit
                let lo = Float(Int(g.bytes[o + 2 + e] & 15) - 8) * f16(g.bytes, o)
                XCTAssertEqual(lo.bitPattern, qf[src * d + e].bitPattern)
            }
        }
        XCTAssertTrue(q.scales.contains { $0 < 0 }, "the test covers negative Q4_0 scales")

        // Q4_1: d = s, m = −s·z, x = d·q + m equals s·(q − z) exactly.
        let kq = try QuantizedView(XCTUnwrap(bundle.tensor(named: "llm.layers.0.attn.k.weight")), file: bundlePath)
        let k = kq.unpack(), kf = kq.dequantized()
        for newRow in 0 ..< kvHeads * dh {
            let src = newRow / dh * dh + newRow % 2 * dh / 2 + newRow % dh / 2
            let o = data("blk.0.attn_k.weight") + 20 * newRow
            let dd = f16(g.bytes, o), m = f16(g.bytes, o + 2)
            XCTAssertEqual(dd, k.scales[src])
            XCTAssertEqual(m, k.scales[src] * k.zeros![src] == 0 ? 0 : -(k.scales[src] * k.zeros![src]))
            for e in 0 ..< 32 {
                let nib = e < 16 ? g.bytes[o + 4 + e] & 15 : g.bytes[o + 4 + e - 16] >> 4
                XCTAssertEqual((dd * Float(nib) + m).bitPattern, kf[src * d + e].bitPattern, "row \(newRow) element \(e)")
            }
        }

        // BF16 copied bit for bit; f16 norm widened to F32 exactly.
        let ob = try XCTUnwrap(bundle.tensor(named: "llm.layers.0.attn.o.weight"))
        XCTAssertEqual(Array(g.bytes[data("blk.0.attn_output.weight") ..< data("blk.0.attn_output.weight") + ob.length]), Array(ob.data))
        let nb = try XCTUnwrap(bundle.tensor(named: "llm.layers.0.attn_norm.weight"))
        for e in 0 ..< d {
            let o = data("blk.0.attn_norm.weight") + 4 * e
            let got = UInt32(g.bytes[o]) | UInt32(g.bytes[o + 1]) << 8 | UInt32(g.bytes[o + 2]) << 16 | UInt32(g.bytes[o + 3]) << 24
            XCTAssertEqual(got, Float(Float16(bitPattern: UInt16(nb.data[2 * e]) | UInt16(nb.data[2 * e + 1]) << 8)).bitPattern)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["tiny.gguf", "tiny.mm1"], "no temporary file left")
    }

    func testGroupSizeWithoutGGUFTypeIsRefusedAndWritesNothing() throws {
        let dir = try tmpDir()
        let bundlePath = try makeBundle(dir, gateGroup: 16)
        let out = dir + "/refused.gguf"
        var o = GGUFExportOptions()
        o.showProgress = false
        XCTAssertThrowsError(try GGUFExport.exportLanguageModel(bundle: bundlePath, output: out, options: o)) { e in
            let m = (e as? MM1Error)?.description ?? "\(e)"
            XCTAssertTrue(m.contains("tensor 'llm.layers.0.mlp.gate.weight'"), m)
            XCTAssertTrue(m.contains("group size 16"), m)
            XCTAssertTrue(m.contains("--requantize"), m)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["tiny.mm1"], "nothing written")

        // --requantize q4_0: ggml's reference rounding of the dequantized values (here all on a 0.5 grid, so the
        // block's d is the largest magnitude over −8), recorded in the metadata.
        o.requantize = .q4_0
        let r = try GGUFExport.exportLanguageModel(bundle: bundlePath, output: out, options: o)
        XCTAssertEqual(r.requantized, ["llm.layers.0.mlp.gate.weight"])
        let g = try parse(out)
        XCTAssertEqual(g.kv["mm1pack.requantize"]?.value as? String, "q4_0")
        XCTAssertEqual(g.kv["mm1pack.requantized_tensors"]?.value as? [String], ["llm.layers.0.mlp.gate.weight"])
        let gate = g.tensors.first { $0.name == "blk.0.ffn_gate.weight" }!
        XCTAssertEqual(gate.type, 2)
        let bundle = try BundleReader(path: bundlePath)
        let w = try QuantizedView(XCTUnwrap(bundle.tensor(named: "llm.layers.0.mlp.gate.weight")), file: bundlePath).dequantized()
        for row in 0 ..< d {
            let o = g.dataStart + gate.offset + 18 * row
            let x = Array(w[row * d ..< row * d + 32])
            let mx = x.reduce(Float(0)) { abs($1) > abs($0) ? $1 : $0 }
            XCTAssertEqual(f16(g.bytes, o), Float(Float16(mx / -8)))
        }
    }

    func testInterleavedMoEIsRefused() throws {
        let dir = try tmpDir()
        let b = dir + "/moe.mm1"
        var o = ConvertOptions()
        o.showProgress = false
        _ = try Converter.convert(source: TestPaths.fixture("axlearn-moe"), output: b, options: o)
        var e = GGUFExportOptions()
        e.showProgress = false
        XCTAssertThrowsError(try GGUFExport.exportLanguageModel(bundle: b, output: dir + "/moe.gguf", options: e)) { err in
            XCTAssertTrue("\(err)".contains("interleaves dense layers [0, 2] and mixture-of-experts layers [1, 3]"), "\(err)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/moe.gguf"))
    }

    // MARK: tokenizer

    private func tokenizerKV(_ file: String, pre: String? = nil) throws -> [String: GGUFValue] {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("tokenizer/" + file))))
        let root = try JSONSerialization.jsonObject(with: Data(bytes)) as! [String: Any]
        let vocab = (root["model"] as! [String: Any])["vocab"] as! [String: Any]
        let added = (root["added_tokens"] as? [[String: Any]] ?? []).map { ($0["id"] as! NSNumber).intValue }
        let n = (vocab.values.map { ($0 as! NSNumber).intValue } + added).max()! + 1
        let kv = try GGUFTokenizer.metadata(tokenizerJSON: bytes, vocabSize: n + 3, bosTokenID: 0, eosTokenID: 1,
                                            chatTemplate: nil, preOverride: pre, file: file)
        return Dictionary(kv, uniquingKeysWith: { a, _ in a })
    }

    func testTokenizerMetadataFromTokenizerJSON() throws {
        let gpt2 = try tokenizerKV("gpt2.tokenizer.json")
        XCTAssertEqual(gpt2["tokenizer.ggml.model"], .string("gpt2"))
        XCTAssertEqual(gpt2["tokenizer.ggml.pre"], .string("gpt-2"))
        guard case .stringArray(let tokens)? = gpt2["tokenizer.ggml.tokens"], case .i32Array(let types)? = gpt2["tokenizer.ggml.token_type"],
              case .stringArray(let merges)? = gpt2["tokenizer.ggml.merges"] else { return XCTFail("arrays missing") }
        XCTAssertEqual(tokens.count, types.count)
        XCTAssertEqual(tokens[0], "<|endoftext|>")
        XCTAssertEqual(types[0], 3, "special added token → control")
        XCTAssertEqual(tokens[700], "<|user|>")
        XCTAssertEqual(types[700], 4, "non-special added token → user defined")
        XCTAssertEqual(Array(tokens.suffix(3)), ["[PAD\(tokens.count - 3)]", "[PAD\(tokens.count - 2)]", "[PAD\(tokens.count - 1)]"])
        XCTAssertEqual(Array(types.suffix(3)), [5, 5, 5], "fillers up to the embedding's rows → unused")
        XCTAssertTrue(merges.allSatisfy { $0.split(separator: " ").count == 2 })
        XCTAssertEqual(gpt2["tokenizer.ggml.bos_token_id"], .u32(0))

        XCTAssertEqual(try tokenizerKV("llama3.tokenizer.json")["tokenizer.ggml.pre"], .string("llama-bpe"))
        // A normalizer and a custom split: refused unless the user names llama.cpp's pre-tokenizer.
        XCTAssertThrowsError(try tokenizerKV("smol.tokenizer.json")) { XCTAssertTrue("\($0)".contains("--tokenizer-pre"), "\($0)") }
        XCTAssertEqual(try tokenizerKV("smol.tokenizer.json", pre: "smollm")["tokenizer.ggml.pre"], .string("smollm"))
        // byte_fallback BPE is SentencePiece-style, not byte-level: refused.
        XCTAssertThrowsError(try tokenizerKV("misc.tokenizer.json")) { XCTAssertTrue("\($0)".contains("byte_fallback"), "\($0)") }
    }
}
