import Foundation
import XCTest
@testable import MM1Pack

/// The language model forward pass: self-checks (RoPE, attention, causality, MoE routing) and agreement with the
/// PyTorch references in `fixtures/<name>/reference/` (formats/probes.md).
final class LanguageModelTests: XCTestCase {
    static let llmFixtures = ["llava-llama", "llava-mixtral", "llava-mixtral-v5", "llama-text", "honeybee-dense",
                              "honeybee-moe", "axlearn-dense", "axlearn-moe"]

    /// f32 bundles of the fixtures, converted once per test run.
    nonisolated(unsafe) static var bundles: [String: String] = [:]
    nonisolated(unsafe) static var bundleDir: String?

    func bundle(_ fixture: String) throws -> String {
        if let p = Self.bundles[fixture] { return p }
        let dir = Self.bundleDir ?? makeTempDir("llm")
        Self.bundleDir = dir
        let path = "\(dir)/\(fixture).mm1"
        _ = try Converter.convert(source: TestPaths.fixture(fixture), output: path, options: quietOptions(.f32))
        Self.bundles[fixture] = path
        return path
    }

    func model(_ fixture: String) throws -> LanguageModel {
        try LanguageModel(weights: ModelWeights(path: bundle(fixture)))
    }

    static func maxAbsDiff(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
        precondition(a.count == b.count)
        var m: Float = 0
        for (x, y) in zip(a, b) { m = max(m, abs(x - y)) }
        return m
    }

    static func maxAbs(_ a: ArraySlice<Float>) -> Float { a.reduce(0) { max($0, abs($1)) } }

    // MARK: NPY

    func testNPYRoundTripAndHeaders() throws {
        let dir = makeTempDir("npy")
        let data: [Float] = (0..<24).map { Float($0) * 0.5 - 3 }
        try NPY.write(dir + "/a.npy", shape: [2, 3, 4], data: data)
        let back = try NPY.read(dir + "/a.npy")
        XCTAssertEqual(back.shape, [2, 3, 4])
        XCTAssertEqual(back.data, data)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: dir + "/a.npy"))
        XCTAssertEqual((10 + Int(bytes[8]) + Int(bytes[9]) << 8) % 64, 0, "data starts 64-aligned")
        try NPY.write(dir + "/s.npy", shape: [], data: [7])
        XCTAssertEqual(try NPY.read(dir + "/s.npy").shape, [])
        try NPY.write(dir + "/v.npy", shape: [3], data: [1, 2, 3])
        XCTAssertEqual(try NPY.readInts(dir + "/v.npy").data, [1, 2, 3])
        XCTAssertThrowsError(try NPY.write(dir + "/bad.npy", shape: [2, 2], data: [1]))

        // A hand-made v2 header of little-endian int64.
        var h = "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }"
        h += String(repeating: " ", count: (64 - (12 + h.count + 1) % 64) % 64) + "\n"
        var raw = Data([0x93] + Array("NUMPY".utf8) + [2, 0])
        withUnsafeBytes(of: UInt32(h.utf8.count).littleEndian) { raw.append(contentsOf: $0) }
        raw.append(contentsOf: Array(h.utf8))
        for v: Int64 in [-5, 1 << 40] { withUnsafeBytes(of: v.littleEndian) { raw.append(contentsOf: $0) } }
        try raw.write(to: URL(fileURLWithPath: dir + "/i.npy"))
        XCTAssertEqual(try NPY.readInts(dir + "/i.npy").data, [-5, 1 << 40])
        XCTAssertEqual(try NPY.read(dir + "/i.npy").data, [-5, Float(1 << 40)])

        try Data("nope".utf8).write(to: URL(fileURLWithPath: dir + "/x.npy"))
        assertMM1Error(["x.npy", "magic"]) { _ = try NPY.read(dir + "/x.npy") }
    }

    // MARK: RoPE

    /// transformers 5.23 `LlamaRotaryEmbedding` (θ 500000, Dh 32, max_position_embeddings 16, run on 40 positions):
    /// inv_freq, then cos and sin of position 39 (first 16 dims).
    static let ropeReference: [String: ([Float], [Float], [Float])] = [
        "default": ([1.0, 0.44036662578582764, 0.193922758102417, 0.08539710193872452, 0.03760603070259094, 0.016560440883040428, 0.00729266507551074, 0.0032114461064338684, 0.001414213445968926, 0.0006227724370546639, 0.00027424818836152554, 0.00012076974235242233, 5.3182957344688475e-05, 2.3419997887685895e-05, 1.0313385246263351e-05, 4.541670477919979e-06],
                 [0.2666429281234741, -0.10427048057317734, 0.28690487146377563, -0.9822124242782593, 0.10397285223007202, 0.7985841035842896, 0.9598262906074524, 0.9921669363975525, 0.9984793663024902, 0.9997050762176514, 0.9999427795410156, 0.9999889135360718, 0.9999978542327881, 0.9999995827674866, 0.9999999403953552, 1.0],
                 [0.9637953639030457, -0.9945489764213562, 0.9579590559005737, -0.18777303397655487, 0.9945801496505737, 0.6018832325935364, 0.28059497475624084, 0.12491921335458755, 0.0551263652741909, 0.024285737425088882, 0.010695475153625011, 0.004710002802312374, 0.002074133837595582, 0.0009133798303082585, 0.0004022220382466912, 0.00017712515546008945]),
        "linear": ([0.25, 0.11009165644645691, 0.04848068952560425, 0.02134927548468113, 0.009401507675647736, 0.004140110220760107, 0.001823166268877685, 0.0008028615266084671, 0.0003535533614922315, 0.00015569310926366597, 6.856204709038138e-05, 3.0192435588105582e-05, 1.3295739336172119e-05, 5.854999471921474e-06, 2.578346311565838e-06, 1.1354176194799948e-06],
                 [-0.9475798010826111, -0.40667739510536194, -0.31451958417892456, 0.6729387640953064, 0.9335303902626038, 0.9869929552078247, 0.9974731802940369, 0.9995098114013672, 0.9999049305915833, 0.9999815821647644, 0.9999964237213135, 0.9999992847442627, 0.9999998807907104, 1.0, 1.0, 1.0],
                 [-0.31951919198036194, -0.913571834564209, 0.9492509961128235, 0.7396981716156006, 0.35849833488464355, 0.16076363623142242, 0.07104358822107315, 0.03130648657679558, 0.01378814410418272, 0.0060719940811395645, 0.002673916518688202, 0.0011775047751143575, 0.000518533808644861, 0.0002283449866808951, 0.0001005555095616728, 4.428128886502236e-05]),
        "llama3": ([1.0, 0.44036662578582764, 0.07940301299095154, 0.010674637742340565, 0.004700753837823868, 0.0020700551103800535, 0.0009115831344388425, 0.00040143076330423355, 0.00017677668074611574, 7.784655463183299e-05, 3.428102354519069e-05, 1.5096217794052791e-05, 6.647869668086059e-06, 2.927499735960737e-06, 1.289173155782919e-06, 5.677088097399974e-07],
                 [0.2666429281234741, -0.10427048057317734, -0.9989932775497437, 0.9145870208740234, 0.9832421541213989, 0.9967429041862488, 0.9993680715560913, 0.9998774528503418, 0.9999762177467346, 0.9999954104423523, 0.9999991059303284, 0.9999998211860657, 1.0, 1.0, 1.0, 1.0],
                 [0.9637953639030457, -0.9945489764213562, 0.04485999792814255, 0.4043892025947571, 0.18230418860912323, 0.08064448088407516, 0.035544253885746, 0.015655161812901497, 0.006894235964864492, 0.0030360110104084015, 0.001336959539912641, 0.0005887524457648396, 0.0002592669043224305, 0.00011417249334044755, 5.02777547808364e-05, 2.214064443251118e-05]),
        "dynamic": ([1.0, 0.4014921188354492, 0.16119593381881714, 0.06471890211105347, 0.025984128937125206, 0.010432424023747444, 0.004188536200672388, 0.0016816641436889768, 0.0006751749897375703, 0.0002710774424485862, 0.00010883546201512218, 4.369658199721016e-05, 1.754383265506476e-05, 7.043711320875445e-06, 2.827994649123866e-06, 1.135417505793157e-06],
                 [0.2666429281234741, -0.9987617135047913, 0.9999940395355225, -0.8152963519096375, 0.5289945602416992, 0.9183661341667175, 0.9866875410079956, 0.9978500604629517, 0.9996533393859863, 0.9999440908432007, 0.9999909996986389, 0.9999985694885254, 0.9999997615814209, 0.9999999403953552, 1.0, 1.0],
                 [0.9637953639030457, 0.04975008964538574, 0.0034562835935503244, 0.5790439248085022, 0.8486252427101135, 0.39573177695274353, 0.16262738406658173, 0.06553789228200912, 0.026328781619668007, 0.010571823455393314, 0.00424457062035799, 0.0017041658284142613, 0.0006842094007879496, 0.0002747047401499003, 0.00011029178858734667, 4.428128158906475e-05]),
    ]

    func testRoPEMatchesTransformers() throws {
        let configs: [String: Any] = [
            "default": NSNull(),
            "linear": ["rope_type": "linear", "factor": 4.0],
            "llama3": ["rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 64],
            "dynamic": ["type": "dynamic", "factor": 2],
        ]
        for (name, cfg) in configs {
            let rope = try RoPE(headDim: 32, theta: 500000, scalingConfig: cfg, maxPositionEmbeddings: 16)
            let (inv, cos39, sin39) = Self.ropeReference[name]!
            let mine = rope.inverseFrequencies(sequenceLength: 40)
            for (a, b) in zip(mine, inv) { XCTAssertEqual(a, b, accuracy: abs(b) * 2e-7, "\(name) inv_freq") }
            let table = rope.table(count: 40)
            for i in 0..<16 {
                XCTAssertEqual(table.cos[39 * 16 + i], cos39[i], accuracy: 2e-6, "\(name) cos")
                XCTAssertEqual(table.sin[39 * 16 + i], sin39[i], accuracy: 2e-6, "\(name) sin")
            }
        }
        // Dynamic scaling changes nothing up to max_position_embeddings.
        let dyn = try RoPE(headDim: 32, theta: 500000, scalingConfig: ["rope_type": "dynamic", "factor": 2.0], maxPositionEmbeddings: 16)
        XCTAssertEqual(dyn.inverseFrequencies(sequenceLength: 16), Self.ropeReference["default"]!.0)
        assertMM1Error(["rope_scaling", "yarn", "not supported"]) {
            _ = try RoPE(headDim: 8, theta: 1e4, scalingConfig: ["rope_type": "yarn", "factor": 2.0], maxPositionEmbeddings: 16)
        }
        assertMM1Error(["llama3", "low_freq_factor"]) {
            _ = try RoPE(headDim: 8, theta: 1e4, scalingConfig: ["rope_type": "llama3", "factor": 2.0], maxPositionEmbeddings: 16)
        }
    }

    func testRoPEPositionZeroIsIdentityAndRotationPreservesNorm() {
        let rope = RoPE(headDim: 8, theta: 10000)
        let t = 5, heads = 3
        let x: [Float] = (0..<(t * heads * 8)).map { Float(sin(Double($0) * 1.3)) }
        var y = x
        let table = rope.table(count: t)
        rope.apply(&y, rows: t, heads: heads, cos: table.cos, sin: table.sin)
        XCTAssertEqual(Array(y[0..<(heads * 8)]), Array(x[0..<(heads * 8)]), "position 0 is the identity")
        for r in 0..<t {
            for h in 0..<heads {
                for i in 0..<4 {
                    let o = r * heads * 8 + h * 8
                    let n0 = x[o + i] * x[o + i] + x[o + i + 4] * x[o + i + 4]
                    let n1 = y[o + i] * y[o + i] + y[o + i + 4] * y[o + i + 4]
                    XCTAssertEqual(n0, n1, accuracy: 1e-5)
                }
            }
        }
        // Position 1, pair 0: rotation by 1 radian (inv_freq[0] = 1).
        let o = heads * 8
        XCTAssertEqual(y[o], x[o] * Float(cos(1.0)) - x[o + 4] * Float(sin(1.0)), accuracy: 1e-6)
        XCTAssertEqual(y[o + 4], x[o + 4] * Float(cos(1.0)) + x[o] * Float(sin(1.0)), accuracy: 1e-6)
    }

    // MARK: attention

    func testAttentionMatchesReferenceLoops() {
        for (t, nq, nkv, dh) in [(1, 2, 1, 4), (7, 4, 2, 8), (150, 4, 1, 6), (65, 3, 3, 16)] {
            func fill(_ n: Int, _ s: Double) -> [Float] { (0..<n).map { Float(sin(Double($0) * s + s)) } }
            let q = fill(t * nq * dh, 0.37), k = fill(t * nkv * dh, 0.71), v = fill(t * nkv * dh, 1.13)
            let a = Attention.causal(q: q, k: k, v: v, count: t, heads: nq, kvHeads: nkv, headDim: dh)
            let r = Attention.causalReference(q: q, k: k, v: v, count: t, heads: nq, kvHeads: nkv, headDim: dh)
            XCTAssertLessThan(Self.maxAbsDiff(a[...], r[...]), 1e-5, "T \(t) Nq \(nq) Nkv \(nkv) Dh \(dh)")
        }
        // Row 0 attends only to itself: its output is v row 0 of its kv head.
        let q: [Float] = [1, 2, 3, 4], k: [Float] = [1, 0, 1, 0], v: [Float] = [5, 6, 7, 8]
        XCTAssertEqual(Array(Attention.causal(q: q, k: k, v: v, count: 2, heads: 1, kvHeads: 1, headDim: 2)[0..<2]), [5, 6])
    }

    // MARK: the model

    func testCausalPrefixLogitsDoNotChange() throws {
        for fixture in ["llama-text", "llava-mixtral"] {
            let m = try model(fixture)
            let v = m.config.vocabSize
            let ids = (0..<11).map { ($0 * 7 + 3) % v }
            let full = try m.forward(ids: ids)
            let prefix = try m.forward(ids: Array(ids[0..<4]))
            XCTAssertLessThan(Self.maxAbsDiff(full[0..<(4 * v)], prefix[...]), 1e-5, fixture)
            // And a later token does change the last row.
            var other = ids
            other[10] = (other[10] + 1) % v
            let changed = try m.forward(ids: other)
            XCTAssertLessThan(Self.maxAbsDiff(full[0..<(10 * v)], changed[0..<(10 * v)]), 1e-5)
            XCTAssertGreaterThan(Self.maxAbsDiff(full[(10 * v)...], changed[(10 * v)...]), 0)
        }
    }

    func testHooksSeeLayerInputsAndLinearInputs() throws {
        let m = try model("axlearn-moe")
        let c = m.config
        let rec = HookRecorder()
        let ids = [1, 2, 3, 4, 5]
        let logits = try m.forward(ids: ids, hooks: rec)
        XCTAssertEqual(rec[.llmLayerInput(0)]?.data, try m.embed(ids))
        XCTAssertEqual(rec[.logits]?.data, logits)
        XCTAssertEqual(rec[.logits]?.shape, [5, c.vocabSize])
        XCTAssertEqual(rec[.llmFinalNorm]?.shape, [5, c.hiddenSize])
        for i in 0..<c.numLayers { XCTAssertNotNil(rec[.llmLayerInput(i)], "layer \(i)") }
        XCTAssertEqual(rec[.linearInput("llm.layers.0.attn.q.weight")]?.shape, [5, c.hiddenSize])
        XCTAssertEqual(rec[.linearInput("llm.layers.1.moe.router.weight")]?.shape, [5, c.hiddenSize])
        XCTAssertEqual(rec[.linearInput("llm.embed.weight")]?.data, rec[.llmFinalNorm]?.data, "tied head")
        // Every routed row appears once per selected expert.
        let routed = (0..<c.moe!.numExperts).compactMap { rec[.expertLinearInput("llm.layers.1.moe.gate.weight", expert: $0)]?.shape[0] }
        XCTAssertEqual(routed.reduce(0, +), 5 * c.moe!.topK)
        // A selective recorder keeps only what it asked for.
        let few = HookRecorder(points: [.logits])
        _ = try m.forward(ids: ids, hooks: few)
        XCTAssertEqual(few.order, [.logits])
    }

    func testRoutingTopKTiesAndRenormalisation() {
        // Equal logits: the lowest indices win, in order.
        let r = LanguageModel.route(logits: [0, 0, 0, 0, 1, 3, 3, 2], count: 2, experts: 4, topK: 2, renormalize: true)
        XCTAssertEqual(r[0].experts, [0, 1])
        XCTAssertEqual(r[0].weights, [0.5, 0.5])
        XCTAssertEqual(r[1].experts, [1, 2])
        let plain = LanguageModel.route(logits: [0, 0, 0, 0], count: 1, experts: 4, topK: 3, renormalize: false)
        XCTAssertEqual(plain[0].experts, [0, 1, 2])
        XCTAssertEqual(plain[0].weights, [0.25, 0.25, 0.25])
    }

    func testMoEWithAllExpertsIsTheWeightedDenseMixture() throws {
        for fixture in ["llava-mixtral", "axlearn-moe"] {
            let base = try model(fixture)
            var cfg = base.config
            var moe = cfg.moe!
            moe.topK = moe.numExperts
            moe.renormalize = false
            cfg.moe = moe
            let m = try LanguageModel(weights: base.weights, config: cfg)
            let layer = moe.layers.min()!
            let t = 6, d = cfg.hiddenSize, fe = moe.intermediateSize, x = moe.numExperts
            let h: [Float] = (0..<(t * d)).map { Float(sin(Double($0) * 0.61)) }
            let got = try m.moeBlock(layer, h, count: t, moe: moe, hooks: nil)

            let b = "llm.layers.\(layer).moe."
            let router = try m.weights.f32(b + "router.weight")
            var p = Linear.forward(h, rows: t, weight: router, out: x, in: d)
            Activation.softmax(&p, rows: t, d: x)
            let gate = try m.weights.f32(b + "gate.weight"), up = try m.weights.f32(b + "up.weight")
            let down = try m.weights.f32(b + "down.weight")
            var want = [Float](repeating: 0, count: t * d)
            for e in 0..<x {
                let g = Linear.forward(h, rows: t, weight: Array(gate[(e * fe * d)..<((e + 1) * fe * d)]), out: fe, in: d)
                let u = Linear.forward(h, rows: t, weight: Array(up[(e * fe * d)..<((e + 1) * fe * d)]), out: fe, in: d)
                var a = g
                try Activation.apply("silu", &a)
                for j in a.indices { a[j] *= u[j] }
                let y = Linear.forward(a, rows: t, weight: Array(down[(e * d * fe)..<((e + 1) * d * fe)]), out: d, in: fe)
                for r in 0..<t { for c in 0..<d { want[r * d + c] += p[r * x + e] * y[r * d + c] } }
            }
            XCTAssertLessThan(Self.maxAbsDiff(got[...], want[...]), 1e-5 * max(1, Self.maxAbs(want[...])), fixture)
        }
    }

    func testErrors() throws {
        let m = try model("llama-text")
        assertMM1Error(["token id 72", "position 1", "vocabulary"]) { _ = try m.embed([0, 72]) }
        assertMM1Error(["token id -1"]) { _ = try m.embed([-1]) }
        assertMM1Error(["forward", "rows of width 48"]) { _ = try m.forward(embeddings: [1, 2, 3], count: 1) }
        XCTAssertEqual(try m.forward(ids: []), [])

        // Missing fields.
        var root = m.weights.config
        var l = root["llm"] as! [String: Any]
        l["num_kv_heads"] = nil
        root["llm"] = l
        assertMM1Error(["config.llm.num_kv_heads", "missing"]) { _ = try LLMConfig(root) }
        l["num_kv_heads"] = 3
        root["llm"] = l
        assertMM1Error(["num_heads (4)", "multiple of num_kv_heads (3)"]) { _ = try LLMConfig(root) }
        l["num_kv_heads"] = 2
        l["moe"] = ["num_experts": 4, "intermediate_size": 8, "layers": [0]] as [String: Any]
        root["llm"] = l
        assertMM1Error(["config.llm.moe.top_k", "missing"]) { _ = try LLMConfig(root) }
        assertMM1Error(["config.llm", "null"]) { _ = try LLMConfig(["llm": NSNull()]) }

        // A config that needs tensors the bundle lacks: untie the head.
        var cfg = m.config
        cfg.tieEmbeddings = false
        assertMM1Error(["llm.head.weight", "is not in the bundle"]) { _ = try LanguageModel(weights: m.weights, config: cfg) }
        cfg.tieEmbeddings = true
        cfg.attentionBias = true
        assertMM1Error(["llm.layers.0.attn.q.bias", "is not in the bundle"]) { _ = try LanguageModel(weights: m.weights, config: cfg) }
        cfg.attentionBias = false
        cfg.intermediateSize += 1
        assertMM1Error(["llm.layers.0.mlp.gate.weight", "has shape"]) { _ = try LanguageModel(weights: m.weights, config: cfg) }
    }

    // MARK: references

    struct RefResult {
        var fixture: String
        var probe: String
        var tokens: Int
        var hiddenErr: Float
        var hiddenScale: Float
        var logitsErr: Float
        var logitsScale: Float
    }

    nonisolated(unsafe) static var results: [RefResult] = []

    /// Runs every probe of `fixtures/<fixture>/reference/probes.jsonl` and compares every layer input, the final
    /// norm and the logits with max |Δ| ≤ 1e-4 · max(1, max |ref|) (per layer).
    func checkReference(_ fixture: String) throws {
        let ref = TestPaths.fixture(fixture) + "/reference"
        let probesPath = ref + "/probes.jsonl"
        guard FileManager.default.fileExists(atPath: probesPath) else { throw XCTSkip("\(fixture): no reference yet") }
        let m = try model(fixture)
        let c = m.config, d = c.hiddenSize, v = c.vocabSize, nl = c.numLayers
        let text = try String(contentsOfFile: probesPath, encoding: .utf8)
        var count = 0
        for line in text.split(separator: "\n") where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let id = try XCTUnwrap(obj["id"] as? String)
            guard let ids = obj["input_ids"] as? [Int] else { XCTFail("\(fixture)/\(id): no input_ids"); continue }
            let nImages = (obj["images"] as? [Any])?.count ?? 0
            // probes.md: an image token equals the bundle's image_token_id, or is negative (Honeybee's -1).
            let imageToken = ConfigLookup.int(m.weights.config, "image_token_id")
            func isImage(_ tok: Int) -> Bool { tok == imageToken || tok < 0 }
            // Embeddings with each image token replaced by that image's rows.
            var emb: [Float] = []
            var used = 0
            if nImages > 0 {
                let conn = try NPY.read("\(ref)/\(id).connector.npy")
                XCTAssertEqual(conn.shape.count, 3)
                XCTAssertEqual(conn.shape[0], nImages)
                XCTAssertEqual(conn.shape[2], d)
                let q = conn.shape[1]
                for tok in ids {
                    if isImage(tok) {
                        guard used < nImages else { XCTFail("\(fixture)/\(id): more image tokens than images"); break }
                        emb += conn.data[(used * q * d)..<((used + 1) * q * d)]
                        used += 1
                    } else {
                        emb += try m.embed([tok])
                    }
                }
                XCTAssertEqual(used, nImages, "\(fixture)/\(id): image tokens vs images")
            } else {
                emb = try m.embed(ids)
            }
            let t = emb.count / d
            let hs = try NPY.read("\(ref)/\(id).hidden_states.npy")
            let lg = try NPY.read("\(ref)/\(id).logits.npy")
            XCTAssertEqual(hs.shape, [nl + 1, t, d], "\(fixture)/\(id) hidden_states shape")
            XCTAssertEqual(lg.shape, [t, v], "\(fixture)/\(id) logits shape")
            guard hs.shape == [nl + 1, t, d], lg.shape == [t, v] else { continue }

            var points: Set<HookPoint> = [.llmFinalNorm]
            for i in 0..<nl { points.insert(.llmLayerInput(i)) }
            let rec = HookRecorder(points: points)
            let logits = try m.forward(embeddings: emb, count: t, hooks: rec)
            var hErr: Float = 0, hScale: Float = 0
            for l in 0...nl {
                let got = try XCTUnwrap(rec[l < nl ? .llmLayerInput(l) : .llmFinalNorm]).data
                let want = hs.data[(l * t * d)..<((l + 1) * t * d)]
                let err = Self.maxAbsDiff(got[...], want), scale = Self.maxAbs(want)
                XCTAssertLessThanOrEqual(err, 1e-4 * max(1, scale), "\(fixture)/\(id) hidden state \(l)")
                if err / max(1, scale) >= hErr / max(1, hScale) { hErr = err; hScale = scale }
            }
            let lErr = Self.maxAbsDiff(logits[...], lg.data[...]), lScale = Self.maxAbs(lg.data[...])
            XCTAssertLessThanOrEqual(lErr, 1e-4 * max(1, lScale), "\(fixture)/\(id) logits")
            let r = RefResult(fixture: fixture, probe: id, tokens: t, hiddenErr: hErr, hiddenScale: hScale, logitsErr: lErr, logitsScale: lScale)
            Self.results.append(r)
            print(String(format: "LLM-REF %@ %@ T=%d hidden max|Δ| %.3g (max|ref| %.3g) logits max|Δ| %.3g (max|ref| %.3g)",
                         fixture, id, t, hErr, hScale, lErr, lScale))
            count += 1
        }
        XCTAssertGreaterThan(count, 0, "\(fixture): no probes")
    }

    /// Timing on a real-sized bundle: `MM1PACK_LLM_BENCH=/path/bundle.mm1 [MM1PACK_LLM_BENCH_T=512]`. Reports the
    /// forward time next to the time of the same projections as bare sgemm calls on pre-widened weights.
    func testBenchmarkForward() throws {
        let env = ProcessInfo.processInfo.environment
        guard let path = env["MM1PACK_LLM_BENCH"] else { throw XCTSkip("set MM1PACK_LLM_BENCH to a bundle to time the forward pass") }
        let t = Int(env["MM1PACK_LLM_BENCH_T"] ?? "") ?? 512
        let m = try LanguageModel(path: path)
        let c = m.config
        let ids = (0..<t).map { ($0 * 7919) % c.vocabSize }
        let emb = try m.embed(ids)
        _ = try m.forward(embeddings: Array(emb[0..<(8 * c.hiddenSize)]), count: 8)  // warm the page cache a little
        let clock = HookClock()
        let t0 = Date()
        _ = try m.forward(embeddings: emb, count: t, hooks: clock)
        let total = Date().timeIntervalSince(t0)
        // Time from each reported point to the next, summed by kind over the layers.
        var spans: [String: Double] = [:]
        var prev = (name: "start", time: t0)
        for (point, time) in clock.times {
            var key = point.description
            if let r = key.range(of: #"llm\.layers\.\d+\."#, options: .regularExpression) { key.replaceSubrange(r, with: "") }
            spans[prev.name, default: 0] += time.timeIntervalSince(prev.time)
            prev = (key, time)
        }
        print("LLM-BENCH spans (from the point to the next one): " +
              spans.sorted { $0.value > $1.value }.map { String(format: "%@ %.3f", $0.key, $0.value) }.joined(separator: ", "))
        // Baseline: layer 0's projections as bare sgemm on pre-widened weights, times the layer count, plus the head.
        let d = c.hiddenSize, qd = c.numHeads * c.headDim, kvd = c.numKVHeads * c.headDim, f = c.intermediateSize
        let x = [Float](repeating: 0.01, count: t * max(d, f, qd))
        var shapes: [(Int, Int)] = [(qd, d), (kvd, d), (kvd, d), (d, qd)]
        if !c.isMoE(0) { shapes += [(f, d), (f, d), (d, f)] }
        let ws = shapes.map { [Float](repeating: 0.001, count: $0.0 * $0.1) }
        let t1 = Date()
        for (w, (o, i)) in zip(ws, shapes) { _ = Linear.forward(Array(x[0..<(t * i)]), rows: t, weight: w, out: o, in: i) }
        let perLayer = Date().timeIntervalSince(t1)
        let head = [Float](repeating: 0.001, count: c.vocabSize * d)
        let t2 = Date()
        _ = Linear.forward(Array(x[0..<(t * d)]), rows: t, weight: head, out: c.vocabSize, in: d)
        let headTime = Date().timeIntervalSince(t2)
        let baseline = perLayer * Double(c.numLayers) + headTime
        let t3 = Date()
        for (name, _) in m.requiredTensors where name.hasPrefix("llm.layers.0.") { _ = try m.widen(name) }
        let widenLayer = Date().timeIntervalSince(t3)
        let qa = [Float](repeating: 0.01, count: t * qd), ka = [Float](repeating: 0.02, count: t * kvd)
        let t4 = Date()
        _ = Attention.causal(q: qa, k: ka, v: ka, count: t, heads: c.numHeads, kvHeads: c.numKVHeads, headDim: c.headDim)
        let attn = Date().timeIntervalSince(t4)
        print(String(format: "LLM-BENCH per layer: widening %.3f s, attention %.3f s, bare projections %.3f s; head %.3f s",
                     widenLayer, attn, perLayer, headTime))
        print(String(format: "LLM-BENCH T=%d layers=%d D=%d: forward %.3f s; bare sgemm of the same projections %.3f s (ratio %.2f); BLAS core %@, %d cores",
                     t, c.numLayers, d, total, baseline, total / baseline, Linear.blasCore, ProcessInfo.processInfo.activeProcessorCount))
    }

    final class HookClock: ForwardHooks {
        var times: [(HookPoint, Date)] = []
        func observe(_ point: HookPoint, _ data: [Float], shape: [Int]) { times.append((point, Date())) }
    }

    func testReferenceLlavaLlama() throws { try checkReference("llava-llama") }
    func testReferenceLlavaMixtral() throws { try checkReference("llava-mixtral") }
    func testReferenceLlavaMixtralV5() throws { try checkReference("llava-mixtral-v5") }
    func testReferenceLlamaText() throws { try checkReference("llama-text") }
    func testReferenceHoneybeeDense() throws { try checkReference("honeybee-dense") }
    func testReferenceHoneybeeMoE() throws { try checkReference("honeybee-moe") }
    func testReferenceAXLearnDense() throws { try checkReference("axlearn-dense") }
    func testReferenceAXLearnMoE() throws { try checkReference("axlearn-moe") }
}
