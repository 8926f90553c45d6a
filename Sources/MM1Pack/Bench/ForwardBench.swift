import COpenBLAS
import Foundation

/// `mm1pack bench forward`: the multimodal forward pass on a 1-image probe, reported as achieved GFLOP/s and as a
/// ratio to `cblas_sgemm` measured in the same process (and, when torch is installed, to PyTorch's CPU fp32
/// forward of the same model and probe, run by `bench/torch_forward.py`). Medians over runs.
///
/// The probe: the pixel tensor `[3, S, S]` of a synthetic gradient at the encoder's size, normalised with CLIP's
/// mean and std (the same formula as `bench/torch_forward.py`), and the ids `[1, <image>, 2 + (7i mod (V − 2)) …]`:
/// `T` text tokens with one image token after the first (the image token expands to the connector's Q rows), so the
/// decoder sees `S = T + Q` rows.
///
/// FLOPs are counted analytically, 2·m·n·k for every matrix product (multiply and add count as two):
/// - ViT, N = g² + 1 tokens, width E, MLP width F, L blocks run, patch P, C channels:
///   patch embedding `2·g²·E·C·P²`; per block q, k, v, o `4·2·N·E²`, attention QKᵀ and AV `2·2·N²·E`,
///   MLP `2·2·N·E·F`.
/// - C-Abstractor (grid g × g, hidden H, input Ec, output D, Q queries, SE width r): per RegNet block on p pixels
///   conv1 `2·p·Cin·H`, depthwise 3×3 `2·p·H·9`, SE `2·2·H·r`, conv3 `2·p·H²`, shortcut conv `2·p·Cin·H` when
///   present; readout `2·Q·H·D + (mlp_depth − 1)·2·Q·D²`.
/// - Decoder, S rows, D wide, q width `nq·Dh`, kv width `nkv·Dh`, MLP width F, L layers, vocabulary V: per layer
///   q, k, v `2·S·D·(nq·Dh + 2·nkv·Dh)`, o `2·S·nq·Dh·D`, gate, up, down `3·2·S·D·F`, causal attention QKᵀ and AV
///   `2·2·nq·Dh·S(S+1)/2` (only the unmasked triangle); LM head `2·S·D·V`.
/// Elementwise work (norms, activations, softmax, RoPE, widening) is not counted: it is time without FLOPs.
public enum ForwardBench {
    public struct FLOPs: Sendable {
        public var vit: Double = 0
        public var connector: Double = 0
        public var llm: Double = 0
        public var total: Double { vit + connector + llm }
    }

    public struct GemmRate: Sendable {
        public var label: String
        public var m: Int, n: Int, k: Int
        public var seconds: Double
        public var gflops: Double { 2 * Double(m) * Double(n) * Double(k) / seconds / 1e9 }
    }

    public struct Run: Sendable {
        public var vit: Double
        public var connector: Double
        public var llm: Double
        public var total: Double { vit + connector + llm }
    }

    public struct TorchResult: Sendable {
        public var medianSeconds: Double
        public var runs: Int
        public var threads: Int
        public var note: String
        public var logitsChecksum: Double?
    }

    public struct Result: Sendable {
        public var blasCore: String
        public var blasThreads: Int
        public var coretypeEnv: String?
        public var flops: FLOPs
        public var runs: [Run]
        public var sequence: Int
        public var vitTokens: Int
        public var gemm: [GemmRate]
        public var peakRSSBytes: Int
        public var baselineRSSBytes: Int
        public var twoLargestLayers: [(name: String, bytes: Int)]
        public var activationBytes: Int
        public var modelF32Bytes: Int
        public var bundleBytes: Int
        public var logitsChecksum: Double
        public var torch: TorchResult?
        public var torchError: String?
    }

    static func median(_ xs: [Double]) -> Double { ConvertBench.Result.median(xs) }

    // MARK: probe

    /// The synthetic image: a smooth gradient, CLIP-normalised, `[3, s, s]`.
    public static func gradientPixels(size s: Int) -> [Float] {
        let mean: [Float] = [0.48145466, 0.4578275, 0.40821073], std: [Float] = [0.26862954, 0.26130258, 0.27577711]
        var px = [Float](repeating: 0, count: 3 * s * s)
        let d = Float(max(1, s - 1))
        for c in 0..<3 {
            for y in 0..<s {
                for x in 0..<s {
                    let v = (0.6 * Float(x) / d + 0.3 * Float(y) / d + 0.1 * Float(c)).truncatingRemainder(dividingBy: 1)
                    px[(c * s + y) * s + x] = (v - mean[c]) / std[c]
                }
            }
        }
        return px
    }

    /// `[1, <image>, …]`: `textTokens` text ids with one image token (−1) after the first.
    public static func probeIDs(textTokens t: Int, vocab v: Int) -> [Int] {
        var ids = [1, -1]
        for i in 0..<max(0, t - 1) { ids.append(2 + (7 * i) % max(1, v - 2)) }
        return ids
    }

    // MARK: FLOPs

    public static func flops(_ model: MultimodalModel, textTokens: Int) throws -> (FLOPs, sequence: Int, vitTokens: Int) {
        guard let vit = model.vision, let conn = model.connector, let llm = model.llm else {
            throw MM1Error("bench forward needs a model with an image encoder, a connector and a language model")
        }
        var f = FLOPs()
        let g = vit.imageSize / vit.patchSize
        let n = g * g + (vit.classToken ? 1 : 0)
        let e = Double(vit.hiddenSize), ff = Double(vit.intermediateSize), nd = Double(n)
        f.vit = 2 * Double(g * g) * e * Double(vit.numChannels * vit.patchSize * vit.patchSize)
        f.vit += Double(vit.blocksToRun) * (4 * 2 * nd * e * e + 2 * 2 * nd * nd * e + 2 * 2 * nd * e * ff)
        let feats = vit.outputTokens(size: vit.imageSize)
        let q: Int
        switch conn.kind {
        case .cAbstractor:
            q = conn.numQueries!
            let h = Double(conn.hiddenSize)
            let grid = Int(Double(feats).squareRoot().rounded()), side = Int(Double(q).squareRoot().rounded())
            for (stage, px) in [("s1", grid * grid), ("s2", side * side)] {
                for j in 0..<conn.depth {
                    let p = "conn.\(stage).b\(j)."
                    let cin = Double(try model.weights.shape(p + "conv1.weight")[1])
                    let r = Double(try model.weights.shape(p + "se.fc1.weight")[0])
                    let pd = Double(px)
                    f.connector += 2 * pd * cin * h + 2 * pd * h * 9 + 2 * 2 * h * r + 2 * pd * h * h
                    if model.weights.has(p + "down.weight") { f.connector += 2 * pd * cin * h }
                }
            }
            let d = Double(conn.outputSize)
            f.connector += 2 * Double(q) * h * d + Double(conn.mlpDepth - 1) * 2 * Double(q) * d * d
        case .mlp:
            q = feats
            let d = Double(conn.outputSize)
            f.connector = 2 * Double(q) * Double(conn.inputSize) * d + 2 * Double(q) * d * d
        case .avgpoolLinear:
            q = conn.numQueries!
            f.connector = 2 * Double(q) * Double(conn.inputSize) * Double(conn.outputSize)
        }
        let c = llm.config
        let s = Double(textTokens + q), d = Double(c.hiddenSize)
        let qd = Double(c.numHeads * c.headDim), kvd = Double(c.numKVHeads * c.headDim)
        guard c.moe == nil else { throw MM1Error("bench forward: MoE decoders are not counted yet") }
        let perLayer = 2 * s * d * (qd + 2 * kvd) + 2 * s * qd * d + 3 * 2 * s * d * Double(c.intermediateSize)
            + 2 * 2 * qd * s * (s + 1) / 2
        f.llm = Double(c.numLayers) * perLayer + 2 * s * d * Double(c.vocabSize)
        return (f, textTokens + q, n)
    }

    // MARK: sgemm baseline

    /// Median seconds of `C[m, n] = A[m, k] · B[n, k]ᵀ` (the NT layout of every projection), `reps` repetitions.
    public static func sgemm(label: String, m: Int, n: Int, k: Int, reps: Int) -> GemmRate {
        let a = UnsafeMutablePointer<Float>.allocate(capacity: m * k)
        let b = UnsafeMutablePointer<Float>.allocate(capacity: n * k)
        let c = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
        defer { a.deallocate(); b.deallocate(); c.deallocate() }
        for i in 0..<(m * k) { a[i] = Float((i * 7) % 13) * 0.01 - 0.06 }
        for i in 0..<(n * k) { b[i] = Float((i * 5) % 11) * 0.01 - 0.05 }
        c.initialize(repeating: 0, count: m * n)
        var times: [Double] = []
        for r in 0...reps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1,
                        a, Int32(k), b, Int32(k), 0, c, Int32(n))
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            if r > 0 { times.append(dt) }  // the first call warms up OpenBLAS's threads and buffers
        }
        return GemmRate(label: label, m: m, n: n, k: k, seconds: median(times))
    }

    // MARK: memory

    static func maxRSS() -> Int {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Int(u.ru_maxrss) * 1024
    }

    /// Tensors grouped into layers (`llm.layers.i`, `vit.blocks.i`, the connector, the embedding table, the rest),
    /// with their size in f32.
    static func layerSizes(_ w: ModelWeights) -> [(name: String, bytes: Int)] {
        var groups: [String: Int] = [:]
        for t in w.bundle.tensors {
            let parts = t.name.split(separator: ".")
            let key: String
            if parts.count > 2 && (parts[1] == "layers" || parts[1] == "blocks") {
                key = parts[0...2].joined(separator: ".")
            } else if t.name.hasPrefix("conn.") {
                key = "conn"
            } else if t.name == "llm.embed.weight" || t.name == "llm.head.weight" {
                key = t.name
            } else {
                key = String(parts[0]) + ".(other)"
            }
            groups[key, default: 0] += t.elementCount * 4
        }
        return groups.sorted { $0.value > $1.value }.map { ($0.key, $0.value) }
    }

    /// The largest set of f32 activations alive at once (estimate): ViT `N·(6E + 2F)` plus one `N²` score matrix
    /// per core; decoder `S·(6D + 3F)` plus the logits `S·V`; connector `p·(Ec + 4H)`.
    static func activationBytes(_ model: MultimodalModel, sequence s: Int, vitTokens n: Int) -> Int {
        guard let vit = model.vision, let conn = model.connector, let llm = model.llm else { return 0 }
        let e = vit.hiddenSize, f = vit.intermediateSize
        let a = n * (6 * e + 2 * f) + MM1Parallel.cores * n * n + 3 * vit.imageSize * vit.imageSize
        let c = llm.config
        let b = s * (6 * c.hiddenSize + 3 * c.intermediateSize) + s * c.vocabSize
        let cn = n * (conn.inputSize + 4 * max(conn.hiddenSize, 1))
        return 4 * max(a, b, cn)
    }

    // MARK: run

    public static func run(bundle path: String, runs: Int, textTokens: Int, torchScript: String?,
                           log: (String) -> Void) throws -> Result {
        let baseline = maxRSS()
        let model = try MultimodalModel(path: path)
        guard let vit = model.vision, let conn = model.connector, let llm = model.llm else {
            throw MM1Error(file: path, "bench forward needs a model with an image encoder, a connector and a language model")
        }
        let (fl, seqLen, vitTokens) = try flops(model, textTokens: textTokens)
        let pixels = gradientPixels(size: vit.imageSize)
        let ids = probeIDs(textTokens: textTokens, vocab: llm.config.vocabSize)
        let d = llm.config.hiddenSize
        var results: [Run] = []
        var checksum = 0.0
        log("BLAS core \(Linear.blasCore), \(openblas_get_num_threads()) OpenBLAS threads; sequence \(seqLen) rows (\(textTokens) text + image), ViT \(vitTokens) tokens")
        for i in 1...max(1, runs) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let f = try vit.forward(pixels: pixels, size: vit.imageSize)
            let t1 = DispatchTime.now().uptimeNanoseconds
            let img = try conn.forward(features: f.features, tokens: f.tokens)
            let t2 = DispatchTime.now().uptimeNanoseconds
            // The same splice as MultimodalModel.inputEmbeddings: text rows, the image's rows in place of its token.
            var x: [Float] = []
            x.reserveCapacity(seqLen * d)
            x += try llm.embed([ids[0]])
            x += img
            x += try llm.embed(Array(ids[2...]))
            let logits = try llm.forward(embeddings: x, count: x.count / d)
            let t3 = DispatchTime.now().uptimeNanoseconds
            let r = Run(vit: Double(t1 - t0) / 1e9, connector: Double(t2 - t1) / 1e9, llm: Double(t3 - t2) / 1e9)
            results.append(r)
            let v = llm.config.vocabSize
            checksum = 0
            for j in (logits.count - v)..<logits.count { checksum += Double(logits[j]) }
            log(String(format: "run %d: %.2f s (ViT %.2f, connector %.3f, LLM %.2f)  %.1f GFLOP/s", i, r.total, r.vit,
                       r.connector, r.llm, fl.total / r.total / 1e9))
        }
        let peak = maxRSS()

        let c = llm.config
        let reps = 5
        var gemm: [GemmRate] = []
        gemm.append(sgemm(label: "decoder [S,D]x[D,F]", m: seqLen, n: c.intermediateSize, k: d, reps: reps))
        gemm.append(sgemm(label: "ViT [N,E]x[E,F]", m: vitTokens, n: vit.intermediateSize, k: vit.hiddenSize, reps: reps))
        gemm.append(sgemm(label: "square 2048^3 (peak)", m: 2048, n: 2048, k: 2048, reps: reps))

        var torch: TorchResult?
        var torchError: String?
        if let script = torchScript {
            do { torch = try runTorch(script: script, bundle: path, runs: runs, textTokens: textTokens, log: log) } catch {
                torchError = "\(error)"
            }
        }
        let layers = layerSizes(model.weights)
        return Result(blasCore: Linear.blasCore, blasThreads: Int(openblas_get_num_threads()),
                      coretypeEnv: ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"], flops: fl, runs: results,
                      sequence: seqLen, vitTokens: vitTokens, gemm: gemm, peakRSSBytes: peak, baselineRSSBytes: baseline,
                      twoLargestLayers: Array(layers.prefix(2)),
                      activationBytes: activationBytes(model, sequence: seqLen, vitTokens: vitTokens),
                      modelF32Bytes: layers.reduce(0) { $0 + $1.bytes }, bundleBytes: model.weights.bundle.fileSize,
                      logitsChecksum: checksum, torch: torch, torchError: torchError)
    }

    /// Runs `python3 script bundle --runs N --text-tokens T` and parses its `TORCH_RESULT key=value …` line.
    static func runTorch(script: String, bundle: String, runs: Int, textTokens: Int, log: (String) -> Void) throws -> TorchResult? {
        let check = Process()
        check.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        check.arguments = ["python3", "-c", "import torch"]
        check.standardOutput = FileHandle.nullDevice
        check.standardError = FileHandle.nullDevice
        try check.run()
        check.waitUntilExit()
        guard check.terminationStatus == 0 else { log("torch is not installed: no PyTorch comparison"); return nil }
        guard FileManager.default.fileExists(atPath: script) else { throw MM1Error(file: script, "torch script not found") }
        log("running PyTorch: python3 \(script) \(bundle) --runs \(runs) --text-tokens \(textTokens)")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", script, bundle, "--runs", String(runs), "--text-tokens", String(textTokens)]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let out = String(decoding: data, as: UTF8.self)
        for line in out.split(separator: "\n") where !line.hasPrefix("TORCH_RESULT") { log("  torch: " + line) }
        guard p.terminationStatus == 0, let line = out.split(separator: "\n").first(where: { $0.hasPrefix("TORCH_RESULT") }) else {
            throw MM1Error("\(script) failed (status \(p.terminationStatus))")
        }
        var kv: [String: String] = [:]
        for part in line.split(separator: " ").dropFirst() {
            let pair = part.split(separator: "=", maxSplits: 1)
            if pair.count == 2 { kv[String(pair[0])] = String(pair[1]) }
        }
        guard let med = kv["median_s"].flatMap(Double.init) else { throw MM1Error("cannot parse: \(line)") }
        return TorchResult(medianSeconds: med, runs: kv["runs"].flatMap(Int.init) ?? 0,
                           threads: kv["threads"].flatMap(Int.init) ?? 0, note: kv["weights"] ?? "",
                           logitsChecksum: kv["last_row_logit_sum"].flatMap(Double.init))
    }

    public static func summary(_ r: Result) -> String {
        func f(_ fmt: String, _ a: CVarArg...) -> String { String(format: fmt, arguments: a) }
        let med = median(r.runs.map(\.total))
        let gf = r.flops.total / med / 1e9
        let mv = median(r.runs.map(\.vit)), mc = median(r.runs.map(\.connector)), ml = median(r.runs.map(\.llm))
        var s = "BLAS core: \(r.blasCore) (OPENBLAS_CORETYPE=\(r.coretypeEnv ?? "unset")), \(r.blasThreads) OpenBLAS threads, \(MM1Parallel.cores) cores\n"
        s += f("work: %.1f GFLOP (ViT %.1f, connector %.1f, LLM %.1f), decoder sequence %d rows, ViT %d tokens\n",
               r.flops.total / 1e9, r.flops.vit / 1e9, r.flops.connector / 1e9, r.flops.llm / 1e9, r.sequence, r.vitTokens)
        s += f("forward, median of %d: %.2f s = %.1f GFLOP/s\n", r.runs.count, med, gf)
        s += f("  ViT        %7.2f s  %6.1f GFLOP/s\n", mv, r.flops.vit / mv / 1e9)
        s += f("  connector  %7.3f s  %6.1f GFLOP/s\n", mc, r.flops.connector / mc / 1e9)
        s += f("  LLM        %7.2f s  %6.1f GFLOP/s\n", ml, r.flops.llm / ml / 1e9)
        s += "cblas_sgemm in this process (NT layout, median of 5):\n"
        for g in r.gemm {
            let shape = "[\(g.m),\(g.k)]x[\(g.k),\(g.n)]"
            s += "  " + g.label.padding(toLength: 22, withPad: " ", startingAt: 0) + " " + shape.padding(toLength: 24, withPad: " ", startingAt: 0)
            s += f(" %6.1f GFLOP/s   forward / sgemm = %.2f\n", g.gflops, gf / g.gflops)
        }
        // The model's own mix: decoder FLOPs at the decoder shape's rate, ViT and connector FLOPs at the ViT shape's.
        if r.gemm.count >= 2 {
            let mixRate = r.flops.total / (r.flops.llm / (r.gemm[0].gflops * 1e9)
                + (r.flops.vit + r.flops.connector) / (r.gemm[1].gflops * 1e9)) / 1e9
            s += f("  model-shape mix (FLOP-weighted)                %6.1f GFLOP/s   forward / sgemm = %.2f  (target >= 0.7)\n", mixRate, gf / mixRate)
        }
        if let t = r.torch {
            s += "PyTorch CPU fp32 (\(t.note), \(t.threads) threads), "
            s += f("median of %d: %.2f s = %.1f GFLOP/s   ", t.runs, t.medianSeconds, r.flops.total / t.medianSeconds / 1e9)
            s += t.medianSeconds >= med ? f("mm1pack is %.2fx faster\n", t.medianSeconds / med) : f("mm1pack is %.2fx slower\n", med / t.medianSeconds)
            if let cs = t.logitsChecksum {
                s += f("  last-row logit sum: mm1pack %.4f, torch %.4f\n", r.logitsChecksum, cs)
            }
        } else if let e = r.torchError {
            s += "PyTorch comparison failed: \(e)\n"
        }
        let mb = { (b: Int) in Double(b) / 1e6 }
        let two = r.twoLargestLayers.reduce(0) { $0 + $1.bytes }
        let bound = two + r.activationBytes
        s += "memory:\n"
        s += f("  peak RSS (ru_maxrss)           %8.0f MB   (%.0f MB before the model was opened)\n", mb(r.peakRSSBytes), mb(r.baselineRSSBytes))
        s += f("  two largest layers in f32      %8.0f MB   (", mb(two))
            + r.twoLargestLayers.map { "\($0.name) " + f("%.0f MB", mb($0.bytes)) }.joined(separator: ", ") + ")\n"
        s += f("  + activations (estimate)       %8.0f MB   bound %.0f MB   peak / bound = %.2f\n",
               mb(r.activationBytes), mb(bound), Double(r.peakRSSBytes) / Double(bound))
        s += f("  whole model: f32 %.0f MB, bundle %.0f MB   peak / f32 model = %.2f",
               mb(r.modelF32Bytes), mb(r.bundleBytes), Double(r.peakRSSBytes) / Double(r.modelF32Bytes))
        return s
    }
}
