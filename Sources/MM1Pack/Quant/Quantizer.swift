import COpenBLAS
import Crypto
import Foundation

/// What `mm1pack quantize` was asked to do.
public struct QuantizeOptions {
    public var recipe: Recipe
    /// Replaces every rule's method (lookups — the embedding — are always RTN: they have no input to calibrate on).
    public var method: QuantMethod?
    /// Replaces the group size of every quantizing rule with `bits` bits (the `--bits` of the command).
    public var groupSize: Int?
    public var bits: Int?
    /// A probe-format JSONL file; nil uses the built-in set.
    public var calibrationPath: String?
    /// At most this many samples (default: all of the file, 8 for the built-in set).
    public var samples: Int?
    /// Calibration sequences are cut to this many rows after image expansion.
    public var seqLength = 512
    /// Block l is calibrated on the outputs of the already quantized blocks < l. Off only for tests that show the
    /// difference: then every block sees the outputs of the fp blocks before it.
    public var sequential = true
    public var quiet = false
    /// The command line as given, for the provenance.
    public var commandLine: [String] = []
    /// Reference outputs stored for `mm1pack verify` (formats/verify.md).
    public var probes: ReferenceProbes = .automatic

    /// Which probes the quantized bundle carries with the fp model's outputs on them.
    public enum ReferenceProbes: Sendable, Equatable {
        /// Keep the source bundle's reference if it has one; else probes held out from the calibration file (up
        /// to 3 lines after the samples used), else the built-in probes.
        case automatic
        /// This probe file, run through the source model now.
        case file(String)
        /// No reference outputs (verify then needs --reference).
        case none
    }

    public init(recipe: Recipe) { self.recipe = recipe }
}

/// Quantizes a bundle (formats/quantization.md): plans every tensor by the recipe, runs the calibration set
/// through the whole model one block at a time (ViT blocks over all images, then the connector, then each LLM
/// layer over all sequences), quantizes each block's weights on the activations produced by the blocks before
/// it as already quantized, and writes the quantized bundle.
///
/// Memory holds one block's weights in f32, its calibration inputs and the running activations; quantized
/// payloads go to a spill file next to the output until the bundle is written in table order.
public final class Quantizer {
    public let weights: ModelWeights
    public let model: MultimodalModel
    public let options: QuantizeOptions
    /// Reference outputs to store in the bundle (computed on the source model before quantizing); nil keeps the
    /// source's `verify.*` sections as they are, unless `options.probes` is `.none`.
    public var reference: VerifyReference?
    let recipe: Recipe

    /// What happens to one tensor.
    enum Action: Equatable {
        case keep(Recipe.Keep)
        case quantize(QuantSpec, QuantMethod)
    }

    struct Planned {
        var name: String
        var shape: [Int]
        var action: Action
        var rule: Int?
        var note: String?
    }

    /// One quantizable weight (a stacked expert tensor counts once; `experts` slices of [out, in]).
    struct Site {
        let name: String
        let out: Int
        let inDim: Int
        let experts: Int
        /// Where calibration rows for expert `e` (nil for plain weights) are reported.
        let point: (Int?) -> HookPoint
        /// Lookups (the embedding) have no input rows.
        let isLookup: Bool
    }

    enum Fold {
        case none
        case norm(weight: String, bias: String?)
        case rows(weight: String, expert: Int?, bias: String?)
    }

    /// Linears that read one input, so that AWQ can scale its channels and fold the inverse into what makes it.
    struct Group {
        let point: HookPoint
        let members: [(site: String, expert: Int?)]
        let fold: Fold
        /// Kept tensors that read the same input: their columns take the scales too (the MoE router).
        let alsoScale: [String]
    }

    struct Block {
        let label: String
        let sites: [String]
        let groups: [Group]
        /// Runs the block over every calibration item with `hooks` collecting inputs, outputs discarded.
        let observe: (any ForwardHooks) throws -> Void
        /// Runs the block over every item and keeps its outputs as the next block's inputs.
        let advance: () throws -> Void
        /// Keep the quantized weights readable after the block (the embedding and the connector are read again
        /// when the sequences are built); transformer blocks are not run again, so theirs are dropped.
        var retain = false
    }

    var plan: [Planned] = []
    var planIndex: [String: Int] = [:]
    var sites: [String: Site] = [:]
    var report = QuantReport()
    var spill: SpillFile?
    var packed: [String: (offset: Int, length: Int, dtype: String, quant: [String: Any])] = [:]
    /// Kept tensors whose values changed (AWQ folds), written from these f32 values.
    var keptValues: [String: [Float]] = [:]
    var progress: Progress?
    var progressItem = 0
    var progressBlocks = 0
    var progressBytes = 0
    var measuring = false
    /// Called with each block's label and the calibration inputs collected for it (tests use it to see what a
    /// block was fed).
    var blockObserved: ((String, InputCollector) -> Void)?

    /// Sensitivity per site from the measuring pass.
    var sensitivity: [String: Double] = [:]

    /// Sizes behind the memory bound (bench quantize): the largest block's weights in f32, and the most
    /// calibration data held at once (a block's collected inputs plus the running activations).
    public internal(set) var largestBlockBytes = 0
    public internal(set) var peakCalibrationBytes = 0
    var activationBytes = 0

    /// Rows used for error reports and sensitivities (evenly strided over the calibration rows).
    static let reportRows = 256
    /// Rows the AWQ scale search runs on.
    static let searchRows = 128

    public init(weights: ModelWeights, options: QuantizeOptions) throws {
        self.weights = weights
        self.model = try MultimodalModel(weights: weights)
        self.options = options
        self.recipe = options.recipe
        try buildSites()
        try buildPlan()
    }

    // MARK: planning

    func buildSites() throws {
        func add(_ name: String, experts: Int = 1, lookup: Bool = false, point: @escaping (Int?) -> HookPoint) throws {
            let s = try weights.shape(name)
            sites[name] = Site(name: name, out: s[s.count - 2], inDim: s[s.count - 1], experts: experts, point: point, isLookup: lookup)
        }
        if let v = model.vision {
            for i in 0..<v.blocksToRun {
                let p = "vit.blocks.\(i)."
                for n in ["attn.q", "attn.k", "attn.v"] { try add(p + n + ".weight") { _ in .linearInput(p + "attn.q.weight") } }
                for n in ["attn.o", "mlp.fc1", "mlp.fc2"] { try add(p + n + ".weight") { _ in .linearInput(p + n + ".weight") } }
            }
        }
        if let c = model.connector {
            // Connector linears are quantized without activations (RTN) when a recipe asks for it.
            let names: [String]
            switch c.kind {
            case .mlp: names = ["conn.fc1.weight", "conn.fc2.weight"]
            case .avgpoolLinear: names = ["conn.proj.weight"]
            case .cAbstractor: names = (0..<c.mlpDepth).map { "conn.readout.\($0).weight" }
            }
            for n in names { try add(n, lookup: true) { _ in .named(n) } }
        }
        if let l = model.llm {
            let c = l.config
            try add("llm.embed.weight", lookup: true) { _ in .named("llm.embed.weight") }
            if !c.tieEmbeddings { try add("llm.head.weight") { _ in .linearInput("llm.head.weight") } }
            for i in 0..<c.numLayers {
                let p = LanguageModel.layerPrefix(i)
                for n in ["attn.q", "attn.k", "attn.v"] { try add(p + n + ".weight") { _ in .linearInput(p + "attn.q.weight") } }
                try add(p + "attn.o.weight") { _ in .linearInput(p + "attn.o.weight") }
                if let m = c.moe, m.layers.contains(i) {
                    try add(p + "moe.router.weight") { _ in .linearInput(p + "moe.router.weight") }
                    for n in ["gate", "up"] {
                        try add(p + "moe.\(n).weight", experts: m.numExperts) { e in .expertLinearInput(p + "moe.gate.weight", expert: e!) }
                    }
                    try add(p + "moe.down.weight", experts: m.numExperts) { e in .expertLinearInput(p + "moe.down.weight", expert: e!) }
                } else {
                    for n in ["gate", "up"] { try add(p + "mlp.\(n).weight") { _ in .linearInput(p + "mlp.gate.weight") } }
                    try add(p + "mlp.down.weight") { _ in .linearInput(p + "mlp.down.weight") }
                }
            }
        }
    }

    /// The largest even divisor of `k` that is at most `g` (0 when `k` is odd).
    static func fittingGroup(_ g: Int, _ k: Int) -> Int {
        var d = min(g, k)
        while d >= 2 {
            if k % d == 0 && d % 2 == 0 { return d }
            d -= 1
        }
        return 0
    }

    func buildPlan() throws {
        for t in weights.bundle.tensors {
            guard !t.isQuantized, t.dtype?.isConvertibleFloat == true else {
                throw MM1Error(file: weights.bundle.path, tensor: t.name,
                               "has dtype \(t.dtypeName): quantize starts from an f32, f16 or bf16 bundle or checkpoint")
            }
            let site = sites[t.name]
            var p = Planned(name: t.name, shape: t.shape, action: .keep(.source), rule: nil, note: nil)
            if let (i, r) = recipe.rule(for: t.name, quantizable: site != nil) {
                p.rule = i
                if let k = r.keep {
                    p.action = .keep(k)
                } else if var spec = r.spec, let site {
                    if let g = options.groupSize, let b = options.bits, spec.bits == b { spec.groupSize = g }
                    p.action = try resolve(spec, method: r.method, site: site, planned: &p)
                }
            } else {
                p.note = "no rule matched: kept as stored"
            }
            planIndex[t.name] = plan.count
            plan.append(p)
        }
    }

    /// A rule's spec and method for one site: group size fitted to the input dimension, method fixed by the
    /// options and by what the site allows.
    func resolve(_ s: QuantSpec, method: QuantMethod?, site: Site, planned p: inout Planned) throws -> Action {
        var spec = s
        let k = site.inDim
        if spec.groupSize == 0 || spec.groupSize > k { spec.groupSize = k }
        if k % spec.groupSize != 0 {
            let g = Quantizer.fittingGroup(spec.groupSize, k)
            guard g >= 2 else {
                p.note = "input dimension \(k) has no even group size: kept in f16"
                return .keep(.f16)
            }
            p.note = "group size \(spec.groupSize) does not divide \(k): used \(g)"
            spec.groupSize = g
        }
        try spec.validate(cols: k)
        var m = options.method ?? method ?? recipe.method
        if site.isLookup { m = .rtn }
        return .quantize(spec, m)
    }

    func action(_ name: String) -> Action? { planIndex[name].map { plan[$0].action } }

    func quantSpec(_ name: String) -> (QuantSpec, QuantMethod)? {
        if case .quantize(let s, let m)? = action(name) { return (s, m) }
        return nil
    }

    // MARK: running

    /// Runs the whole quantization and writes `output`. Returns the report (also stored in the bundle).
    public func run(output: String, calibration: CalibrationSet) throws -> QuantReport {
        let start = Date()
        report.recipe = recipe.name
        report.recipeDigest = recipe.digest
        report.calibration = QuantReport.Calibration(source: calibration.source, samples: calibration.samples.count,
                                                     digest: calibration.digest, builtIn: calibration.isBuiltIn)
        report.sequential = options.sequential
        if recipe.rules.contains(where: { $0.promote != nil }) {
            measuring = true
            try pass(calibration, label: "sensitivity")
            measuring = false
            applyPromotions()
            weights.overrides.removeAll()
        }
        let dir = (output as NSString).deletingLastPathComponent
        spill = try SpillFile(directory: dir.isEmpty ? "." : dir, name: (output as NSString).lastPathComponent)
        try pass(calibration, label: "quantize")
        weights.overrides.removeAll()
        report.seconds = Date().timeIntervalSince(start)
        try write(output)
        spill = nil
        return report
    }

    func applyPromotions() {
        for (ri, rule) in recipe.rules.enumerated() {
            guard let promote = rule.promote else { continue }
            let members = plan.indices.filter { plan[$0].rule == ri && sensitivity[plan[$0].name] != nil }
            let n = Int((Double(members.count) * promote.fraction).rounded(.up))
            let ranked = members.sorted { (sensitivity[plan[$0].name]!, plan[$1].name) > (sensitivity[plan[$1].name]!, plan[$0].name) }
            for i in ranked.prefix(n) {
                guard case .quantize(_, let m) = plan[i].action, let site = sites[plan[i].name] else { continue }
                var p = plan[i]
                if let a = try? resolve(promote.spec, method: m, site: site, planned: &p) {
                    p.action = a
                    p.note = [p.note, String(format: "promoted by sensitivity %.3g", sensitivity[p.name]!)].compactMap { $0 }.joined(separator: "; ")
                    plan[i] = p
                }
            }
        }
    }

    /// Kept tensors that the bundle will store narrower than the source: the calibration pass reads them rounded,
    /// as the quantized model will (small tensors only; large kept tensors are rare and read as stored).
    func roundKeptTensors() {
        for p in plan {
            guard case .keep(let k) = p.action, k == .f16 || k == .bf16, let t = weights.bundle.tensor(named: p.name),
                  t.dtype != DType(rawValue: k.rawValue), t.elementCount <= 16 << 20, weights.overrides[p.name] == nil else { continue }
            weights.overrides[p.name] = .values(rounded(Widen.array(t, release: false), to: k == .f16 ? .f16 : .bf16))
        }
    }

    /// One pass over the model: measuring (sensitivities on fp activations, nothing quantized) or quantizing.
    func pass(_ calibration: CalibrationSet, label: String) throws {
        if options.sequential { roundKeptTensors() }
        // Items: per sample, its image pieces; then per sample, the LLM sequence.
        var pieces: [[[MultimodalModel.ImagePiece]]] = []
        for s in calibration.samples {
            pieces.append(model.llm == nil ? [] : try model.imagePieces(images: s.images))
        }
        var pixelItems: [(pixels: [Float], size: Int)] = []
        if model.llm == nil {
            for s in calibration.samples {
                for img in s.images { pixelItems.append((model.preprocessor!(img), model.preprocessor!.imageSize)) }
            }
        } else {
            for sp in pieces { for img in sp { for piece in img { if case .pixels(let p, let size) = piece { pixelItems.append((p, size)) } } } }
        }
        progressBlocks = (model.vision?.blocksToRun ?? 0) + (model.connector == nil ? 0 : 1) + (model.llm.map { $0.config.numLayers + 2 } ?? 0)
        progressItem = 0
        progressBytes = 0
        // Progress counts blocks and the bytes of their weights (as f32), so the rate and time left follow the work.
        let totalBytes = try sites.keys.reduce(0) { $0 + (try weights.shape($1)).reduce(4, *) }
        progress = Progress(label: label, totalItems: progressBlocks, totalBytes: max(1, totalBytes), enabled: !options.quiet)
        defer { progress?.done() }

        // Vision encoder, block by block over every image.
        var features: [(data: [Float], rows: Int)] = []
        if let vision = model.vision, !pixelItems.isEmpty {
            var xs: [[Float]] = []
            var ts: [Int] = []
            for it in pixelItems {
                let e = try vision.embed(pixels: it.pixels, height: it.size, width: it.size)
                xs.append(e.x)
                ts.append(e.tokens)
            }
            report.calibration?.images = pixelItems.count
            activationBytes = xs.reduce(0) { $0 + $1.count * 4 }
            for i in 0..<vision.blocksToRun {
                try runBlock(vitBlock(i, vision, xs: { xs }, ts: ts, set: { xs = $0 }))
            }
            for (k, x) in xs.enumerated() { let f = try vision.finish(x, tokens: ts[k]); features.append((f.features, f.tokens)) }
        }
        // Connector: weight-only quantization, then each image through it.
        var imageRows: [(data: [Float], rows: Int)] = []
        if let connector = model.connector, !features.isEmpty {
            try runBlock(Block(label: "connector", sites: sites.keys.filter { $0.hasPrefix("conn.") }.sorted(), groups: [],
                               observe: { _ in }, advance: {}, retain: true))
            for f in features {
                let out = try connector.forward(features: f.data, tokens: f.rows)
                imageRows.append((out, out.count / connector.outputSize))
            }
        } else if model.connector == nil {
            imageRows = features
        }
        guard let llm = model.llm else { return }

        // Language model: the embedding first (a lookup), then the sequences, then layer by layer.
        try runBlock(Block(label: "llm.embed", sites: ["llm.embed.weight"], groups: [], observe: { _ in }, advance: {}, retain: true))
        var next = 0
        var xs: [[Float]] = []
        var ts: [Int] = []
        for (si, s) in calibration.samples.enumerated() {
            var x = try model.inputEmbeddings(ids: s.ids, images: pieces[si]) { _, _ in
                defer { next += 1 }
                return imageRows[next]
            }
            let d = llm.config.hiddenSize
            if x.rows > options.seqLength {
                x.data = Array(x.data[0..<(options.seqLength * d)])
                x.rows = options.seqLength
            }
            xs.append(x.data)
            ts.append(x.rows)
        }
        report.calibration?.tokens = ts.reduce(0, +)
        activationBytes = xs.reduce(0) { $0 + $1.count * 4 }
        let ropes = ts.map { llm.config.rope.table(count: $0) }
        for i in 0..<llm.config.numLayers {
            try runBlock(llmLayer(i, llm, xs: { xs }, ts: ts, ropes: ropes, set: { xs = $0 }))
        }
        // The output head, calibrated on the final norm's output.
        if !llm.config.tieEmbeddings {
            let d = llm.config.hiddenSize
            let block = Block(label: "llm.head", sites: ["llm.head.weight"],
                              groups: [Group(point: .linearInput("llm.head.weight"), members: [("llm.head.weight", nil)],
                                             fold: .norm(weight: "llm.norm.weight", bias: nil), alsoScale: [])],
                              observe: { hooks in
                                  let w = try self.weights.f32("llm.norm.weight")
                                  for (k, x) in xs.enumerated() {
                                      let normed = Norm.rmsNorm(x, rows: ts[k], d: d, weight: w, eps: llm.config.rmsNormEps)
                                      hooks.observe(.linearInput("llm.head.weight"), normed, shape: [ts[k], d])
                                  }
                              }, advance: {})
            try runBlock(block)
        }
    }

    func vitBlock(_ i: Int, _ vision: VisionEncoder, xs: @escaping () -> [[Float]], ts: [Int], set: @escaping ([[Float]]) -> Void) -> Block {
        let p = "vit.blocks.\(i)."
        let groups = [
            Group(point: .linearInput(p + "attn.q.weight"), members: [(p + "attn.q.weight", nil), (p + "attn.k.weight", nil), (p + "attn.v.weight", nil)],
                  fold: .norm(weight: p + "norm1.weight", bias: p + "norm1.bias"), alsoScale: []),
            Group(point: .linearInput(p + "attn.o.weight"), members: [(p + "attn.o.weight", nil)],
                  fold: .rows(weight: p + "attn.v.weight", expert: nil, bias: p + "attn.v.bias"), alsoScale: []),
            Group(point: .linearInput(p + "mlp.fc1.weight"), members: [(p + "mlp.fc1.weight", nil)],
                  fold: .norm(weight: p + "norm2.weight", bias: p + "norm2.bias"), alsoScale: []),
            // fc2 reads a GELU output: nothing linear to fold scales into, so only its rounding is calibrated.
            Group(point: .linearInput(p + "mlp.fc2.weight"), members: [(p + "mlp.fc2.weight", nil)], fold: .none, alsoScale: []),
        ]
        let names = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2"].map { p + $0 + ".weight" }
        return Block(label: "vit.blocks.\(i)", sites: names, groups: groups, observe: { hooks in
            for (k, x) in xs().enumerated() { _ = try vision.block(i, x, tokens: ts[k], hooks: hooks) }
        }, advance: {
            set(try xs().enumerated().map { k, x in try vision.block(i, x, tokens: ts[k]) })
        })
    }

    func llmLayer(_ i: Int, _ llm: LanguageModel, xs: @escaping () -> [[Float]], ts: [Int], ropes: [(cos: [Float], sin: [Float])],
                  set: @escaping ([[Float]]) -> Void) -> Block {
        let c = llm.config, p = LanguageModel.layerPrefix(i)
        var groups: [Group] = [
            Group(point: .linearInput(p + "attn.q.weight"), members: [(p + "attn.q.weight", nil), (p + "attn.k.weight", nil), (p + "attn.v.weight", nil)],
                  fold: .norm(weight: p + "attn_norm.weight", bias: nil), alsoScale: []),
            // o's input channels are v's output channels only without grouped-query sharing.
            Group(point: .linearInput(p + "attn.o.weight"), members: [(p + "attn.o.weight", nil)],
                  fold: c.numKVHeads == c.numHeads ? .rows(weight: p + "attn.v.weight", expert: nil, bias: c.attentionBias ? p + "attn.v.bias" : nil) : .none,
                  alsoScale: []),
        ]
        var names = ["attn.q", "attn.k", "attn.v", "attn.o"].map { p + $0 + ".weight" }
        if let m = c.moe, m.layers.contains(i) {
            let router = p + "moe.router.weight"
            var members: [(site: String, expert: Int?)] = []
            for e in 0..<m.numExperts { members += [(p + "moe.gate.weight", e), (p + "moe.up.weight", e)] }
            let routerQuantized = quantSpec(router) != nil
            if routerQuantized { members.append((router, nil)) }
            // Every expert and the router read the norm's output, so the scales are searched on all tokens and
            // the router's columns take them too when it stays in float.
            groups.append(Group(point: .linearInput(router), members: members, fold: .norm(weight: p + "mlp_norm.weight", bias: nil),
                                alsoScale: routerQuantized ? [] : [router]))
            for e in 0..<m.numExperts {
                groups.append(Group(point: .expertLinearInput(p + "moe.down.weight", expert: e), members: [(p + "moe.down.weight", e)],
                                    fold: .rows(weight: p + "moe.up.weight", expert: e, bias: nil), alsoScale: []))
            }
            names += ["moe.router", "moe.gate", "moe.up", "moe.down"].map { p + $0 + ".weight" }
        } else {
            groups.append(Group(point: .linearInput(p + "mlp.gate.weight"), members: [(p + "mlp.gate.weight", nil), (p + "mlp.up.weight", nil)],
                                fold: .norm(weight: p + "mlp_norm.weight", bias: nil), alsoScale: []))
            groups.append(Group(point: .linearInput(p + "mlp.down.weight"), members: [(p + "mlp.down.weight", nil)],
                                fold: .rows(weight: p + "mlp.up.weight", expert: nil, bias: nil), alsoScale: []))
            names += ["mlp.gate", "mlp.up", "mlp.down"].map { p + $0 + ".weight" }
        }
        return Block(label: "llm.layers.\(i)", sites: names, groups: groups, observe: { hooks in
            for (k, x) in xs().enumerated() {
                var y = x
                try llm.layer(i, &y, count: ts[k], rope: ropes[k], hooks: hooks)
            }
        }, advance: {
            var all = xs()
            set([])
            for k in all.indices { try llm.layer(i, &all[k], count: ts[k], rope: ropes[k], hooks: nil) }
            set(all)
        })
    }
}
