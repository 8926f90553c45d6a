import ArgumentParser
import Foundation
import MM1Pack

@main
struct MM1PackCLI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mm1pack",
        abstract: "Convert, quantize and verify MM1-family multimodal checkpoints as one memory-mapped bundle.",
        version: Converter.toolVersion,
        subcommands: [Convert.self, Quantize.self, Verify.self, Inspect.self, Export.self, Logits.self, Synth.self, Bench.self]
    )
}

/// Runs a command body, turning errors into a one-line message and a non-zero exit.
func MM1PackCLI_run(_ body: () throws -> Void) throws {
    TemporaryFiles.removeOnSignals()
    do {
        try body()
    } catch let e as MM1Error {
        FileHandle.standardError.write(Data("mm1pack: error: \(e.description)\n".utf8))
        throw ExitCode(2)
    }
}

/// `--source-digests KIND`; `--no-source-digests`, its former spelling, still means none.
func sourceDigestKind(_ name: String, no: Bool) throws -> SourceDigestKind {
    guard let kind = SourceDigestKind(rawValue: name) else {
        throw MM1Error("--source-digests must be one of \(SourceDigestKind.allCases.map(\.rawValue).joined(separator: ", ")) (got '\(name)')")
    }
    return no ? .none : kind
}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a training checkpoint into a bundle.",
        discussion: """
        SRC is a checkpoint directory (Hugging Face safetensors, sharded or not; Honeybee; an AXLearn \
        checkpoints/ or step_XXXXXXXX/ directory; an open_clip model), a single .safetensors file, or a llama.cpp \
        .gguf file (Llama architecture; quantized tensors are dequantized to f32, see formats/layouts/gguf.md). The layout is \
        detected from the files; --layout overrides it and --mapping replaces the layout's mapping table \
        (formats/layouts/*.json) with your own.

        Examples:
          mm1pack convert fixtures/llava-llama -o llava.mm1 --dtype f16
          mm1pack convert fixtures/axlearn-moe -o tiny.mm1 --probes built-in
        """
    )

    @Argument(help: "Source checkpoint directory, .safetensors file or .gguf file.") var source: String
    @Option(name: .shortAndLong, help: "Output bundle path.") var output: String
    @Option(help: "Tensor dtype in the bundle: auto (keep each tensor's float type), f32, f16 or bf16.") var dtype: String = "auto"
    @Option(help: "Source layout: axlearn, gguf, honeybee, llava, openclip (default: detected).") var layout: String?
    @Option(help: "A layout mapping file to use instead of the built-in one.") var mapping: String?
    @Flag(help: "Record source tensors that no rule maps in the bundle's metadata instead of failing.") var allowUnused = false
    @Option(help: "Source-file digests in the provenance (formats/bundle.md §4.1): segments (a safetensors file's SHA-256 over the SHA-256s of its header and tensors, reusing the bundle's tensor digests, so nearly free), full (SHA-256 of each whole file, as model hubs list it; one more hashing pass over the source) or none.") var sourceDigests: String = "segments"
    @Flag(name: .customLong("no-source-digests"), help: .hidden) var noSourceDigests = false
    @Flag(help: "AXLearn: read zarr chunks that are absent on disk as zeros (TensorStore skips writing all-zero chunks) instead of failing.") var missingChunksAsZeros = false
    @Option(help: "Store reference outputs for `mm1pack verify`: run the f32 source model on these probes (a probe file, or built-in) and keep its outputs in the bundle (formats/verify.md).") var probes: String?
    @Flag(name: .shortAndLong, help: "No progress output.") var quiet = false

    func run() throws {
        try MM1PackCLI_run {
            var o = ConvertOptions()
            o.sourceDigestKind = try sourceDigestKind(sourceDigests, no: noSourceDigests)
            o.missingChunksAsZeros = missingChunksAsZeros
            guard let dt = ConvertOptions.TargetDType(rawValue: dtype) else {
                throw MM1Error("--dtype must be one of auto, f32, f16, bf16 (got '\(dtype)')")
            }
            o.dtype = dt
            o.layout = layout
            o.mappingFile = mapping
            o.allowUnused = allowUnused
            o.showProgress = !quiet
            let r = try probes.map { try VerifyReference.convert(source: source, output: output, options: o, probes: $0) }
                ?? Converter.convert(source: source, output: output, options: o)
            for w in r.warnings { FileHandle.standardError.write(Data("mm1pack: warning: \(w)\n".utf8)) }
            if !quiet {
                var msg = "wrote \(output): \(r.tensors) tensors, \(Progress.bytes(r.bytes)) from layout \(r.layout) in \(String(format: "%.2f", r.seconds)) s"
                if !r.ignored.isEmpty { msg += "; skipped \(r.ignored.count) buffer(s) (see metadata.ignored_tensors)" }
                if !r.unused.isEmpty { msg += "; recorded \(r.unused.count) unmapped tensor(s) in metadata.unused_tensors" }
                if let probes { msg += "; stored the f32 source's outputs on \(probes == "built-in" ? "the built-in" : probes) probes for verify" }
                print(msg)
            }
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a bundle's configuration, parameter counts, bytes per dtype and checksums.",
        discussion: """
        Example:
          mm1pack inspect llava.mm1 --tensors --check
          mm1pack inspect llava.mm1 --dump /tmp/llava-values
        """
    )

    @Argument(help: "Bundle file.") var bundle: String
    @Flag(help: "Print JSON instead of text.") var json = false
    @Flag(help: "List every tensor with dtype, shape and SHA-256.") var tensors = false
    @Flag(help: "Recompute every tensor's SHA-256 and compare with the table (exit 2 on a mismatch).") var check = false
    @Option(help: "Also write every tensor as DIR/<name>.npy float32 (f16/bf16 widened, i8/q4 dequantized), to compare with other readers.") var dump: String?

    func run() throws {
        try MM1PackCLI_run {
            let b = try BundleReader(path: bundle)
            if let dump { try TensorDump.write(b, to: dump) }
            let failures = check ? b.checkAll() : nil
            if json {
                FileHandle.standardOutput.write(Data(try InspectReport.json(b, tensors: tensors, checked: failures)))
                print()
            } else {
                print(InspectReport.text(b, tensors: tensors, checked: failures))
            }
            if let failures, !failures.isEmpty {
                throw MM1Error(file: bundle, "checksum mismatch in \(failures.count) tensor(s): \(failures.joined(separator: ", "))")
            }
        }
    }
}

struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a random-initialised checkpoint with the shapes of a real configuration.",
        discussion: """
        For benchmarks and for trying a pipeline without real weights. The checkpoint streams to disk (memory stays \
        small at any size) and is deterministic for a given preset, layout, dtype and seed. Presets: \
        \(SynthPreset.allCases.map(\.rawValue).joined(separator: ", ")) (mm1-3b: ViT-H/14 at 378 px, C-Abstractor with 144 \
        tokens, a ~3B decoder; about 7 GB in bf16; mm1-3b-moe adds 64 experts every second layer and needs the \
        axlearn layout, or --num-layers to keep it small).

        Example:
          mm1pack synth --preset mm1-3b --layout honeybee -o /tmp/mm1-3b
        """
    )

    @Option(help: "Preset: \(SynthPreset.allCases.map(\.rawValue).joined(separator: ", ")).") var preset: String = "tiny"
    @Option(help: "Layout: \(SynthLayout.allCases.map(\.rawValue).joined(separator: ", ")).") var layout: String = "honeybee"
    @Option(name: .shortAndLong, help: "Output directory.") var output: String
    @Option(help: "Weight dtype: f32, f16 or bf16.") var dtype: String = "bf16"
    @Option(help: "PRNG seed.") var seed: UInt64 = 0
    @Option(help: "Number of decoder layers instead of the preset's.") var numLayers: Int?
    @Flag(name: .shortAndLong, help: "No progress output.") var quiet = false

    func run() throws {
        try MM1PackCLI_run {
            guard let p = SynthPreset(rawValue: preset) else { throw MM1Error("unknown preset '\(preset)'") }
            guard let l = SynthLayout(rawValue: layout) else { throw MM1Error("unknown layout '\(layout)'") }
            guard let d = DType(rawValue: dtype), d.isConvertibleFloat else { throw MM1Error("--dtype must be f32, f16 or bf16") }
            let r = try MM1Pack.Synth.write(preset: p, layout: l, to: output, dtype: d, seed: seed,
                                            numLayersOverride: numLayers, progress: !quiet)
            if !quiet {
                print("wrote \(r.directory): \(r.tensors) tensors, \(r.parameters) parameters, \(Progress.bytes(r.fileBytes)) in \(String(format: "%.1f", r.seconds)) s")
            }
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks, reported as ratios to a baseline measured in the same run.",
        subcommands: [BenchConvert.self, BenchForward.self, BenchQuantize.self]
    )
}

struct BenchConvert: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Time conversion against `cp` (and `cp` + fsync) of the same bytes, alternating runs; report medians and peak RSS.",
        discussion: """
        Example:
          mm1pack synth --preset mm1-3b --layout honeybee -o /tmp/mm1-3b
          mm1pack bench convert /tmp/mm1-3b --runs 3 --work-dir /tmp/bench
        """
    )

    @Argument(help: "Source checkpoint.") var source: String
    @Option(help: "Repetitions (medians are reported).") var runs: Int = 3
    @Option(help: "Scratch directory on the same file system as the output you care about.") var workDir: String = "/tmp/mm1pack-bench"
    @Option(help: "Tensor dtype in the bundle (auto, f32, f16, bf16).") var dtype: String = "auto"
    @Option(help: "Source-file digests, as for convert: segments, full or none.") var sourceDigests: String = "segments"
    @Flag(name: .customLong("no-source-digests"), help: .hidden) var noSourceDigests = false

    func run() throws {
        try MM1PackCLI_run {
            var o = ConvertOptions()
            o.sourceDigestKind = try sourceDigestKind(sourceDigests, no: noSourceDigests)
            guard let dt = ConvertOptions.TargetDType(rawValue: dtype) else { throw MM1Error("bad --dtype '\(dtype)'") }
            o.dtype = dt
            o.showProgress = false
            let r = try ConvertBench.run(source: source, workDir: workDir, runs: runs, options: o) { print($0) }
            print(r.summary)
        }
    }
}

struct BenchForward: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forward",
        abstract: "Time the multimodal forward pass on a 1-image probe; report GFLOP/s against cblas_sgemm (and PyTorch) measured in the same run, and peak RSS.",
        discussion: """
        FLOPs are counted analytically (2·m·n·k per matrix product; see ForwardBench.swift). The PyTorch side runs
        bench/torch_forward.py (same image, same ids) when `python3 -c "import torch"` works.
        Example:
          mm1pack bench forward /tmp/mm1-3b.mm1 --runs 3
          OPENBLAS_CORETYPE=SkylakeX mm1pack bench forward /tmp/mm1-3b.mm1 --runs 3
        """
    )

    @Argument(help: "Bundle (.mm1).") var bundle: String
    @Option(help: "Repetitions (medians are reported).") var runs: Int = 3
    @Option(help: "Text tokens in the probe (besides the image).") var textTokens: Int = 64
    @Option(help: "PyTorch reference script.") var torchScript: String = "bench/torch_forward.py"
    @Flag(help: "Skip the PyTorch comparison.") var noTorch = false

    func run() throws {
        try MM1PackCLI_run {
            let r = try ForwardBench.run(bundle: bundle, runs: runs, textTokens: textTokens,
                                         torchScript: noTorch ? nil : torchScript) { print($0) }
            print(ForwardBench.summary(r))
        }
    }
}

struct Logits: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the whole model on probe inputs and write each probe's logits as .npy.",
        discussion: """
        MODEL is a bundle, or a source checkpoint (converted to a temporary f32 bundle first). PROBES is a JSON-lines \
        file (formats/probes.md): ids or text with one image token per image, and image paths relative to the file. \
        Writes DIR/<id>.npy, float32 [expanded sequence length, vocab]; for an image-encoder-only bundle, the ViT \
        features [images, tokens, width].

        Example:
          mm1pack logits tiny.mm1 --inputs fixtures/axlearn-moe/reference/probes.jsonl --out /tmp/logits
        """
    )

    @Argument(help: "Bundle or source checkpoint.") var model: String
    @Option(help: "Probe file (JSON lines).") var inputs: String
    @Option(help: "Output directory.") var out: String
    @Flag(name: .shortAndLong, help: "No progress output.") var quiet = false

    func run() throws {
        try MM1PackCLI_run {
            let bundlePath: String
            var temp: String?
            if BundleReader.looksLikeBundle(model) {
                bundlePath = model
            } else {
                let t = try Converter.temporaryF32Bundle(source: model, label: "logits", showProgress: !quiet)
                (bundlePath, temp) = (t.bundle, t.directory)
            }
            defer { if let temp { try? FileManager.default.removeItem(atPath: temp) } }
            let probes = try ProbeFile.load(inputs)
            let m = try MultimodalModel(path: bundlePath)
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            if !quiet { FileHandle.standardError.write(Data("BLAS core: \(Linear.blasCore)\n".utf8)) }
            let progress = Progress(label: "logits", totalItems: probes.count, totalBytes: probes.count, enabled: !quiet)
            for (i, p) in probes.enumerated() {
                progress.update(item: i + 1, bytes: i, detail: p.id, force: true)
                let r = try m.run(p)
                try NPY.write(out + "/\(p.id).npy", shape: r.shape, data: r.data)
            }
            progress.done()
            if !quiet { print("wrote \(probes.count) file(s) to \(out)") }
        }
    }
}

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize a model to int8 or int4, calibrated by running the whole model on calibration inputs.",
        discussion: """
        SRC is an f32/f16/bf16 bundle or a source checkpoint. The recipe (recipes/*.json; --bits 4 uses mm1-int4, \
        --bits 8 mm1-int8) says which tensors get which format and method. Calibration inputs (--calib, a probe-format \
        JSONL file: formats/probes.md) run through the ViT, the connector and the LLM one block at a time; each block \
        is quantized on the outputs of the blocks before it as already quantized. Without --calib a small built-in \
        set is used, and the report says so. The report lists each weight's relative output error with plain \
        round-to-nearest and with the method used, and bits per weight per component.

        Examples:
          mm1pack quantize tiny.mm1 -o tiny-q4.mm1 --bits 4
          mm1pack quantize model.mm1 -o model-q4.mm1 --bits 4 --method gptq --group-size 64 --calib calib.jsonl --samples 64
          mm1pack quantize model.mm1 -o model-mixed.mm1 --recipe recipes/mm1-mixed.json --calib calib.jsonl
        """
    )

    @Argument(help: "Bundle or source checkpoint.") var source: String
    @Option(name: .shortAndLong, help: "Output bundle path.") var output: String
    @Option(help: "4 or 8: selects the built-in recipe mm1-int4 or mm1-int8 (ignored with --recipe).") var bits: Int?
    @Option(help: "Group size for the rules with --bits bits (e.g. 32, 64, 128).") var groupSize: Int?
    @Option(help: "rtn, awq, gptq or awq+gptq: replaces the recipe's methods.") var method: String?
    @Option(help: "A recipe file (recipes/*.json).") var recipe: String?
    @Option(help: "Calibration inputs: a probe-format JSONL file.") var calib: String?
    @Option(help: "Use at most N calibration samples (built-in set: 8).") var samples: Int?
    @Option(help: "Cut each calibration sequence to L rows after image expansion.") var seqLen: Int = 512
    @Flag(name: .customLong("no-sequential"), help: .hidden) var notSequential = false
    @Option(help: "Also write the report as JSON to this file.") var report: String?
    @Option(help: "Probes for the reference outputs `mm1pack verify` uses (a probe file); default: the source bundle's, else up to 3 --calib lines after the samples used, else built-in probes.") var probes: String?
    @Flag(help: "Store no reference outputs (verify then needs --reference).") var noProbes = false
    @Flag(name: .shortAndLong, help: "No progress output and no report table.") var quiet = false

    func run() throws {
        try MM1PackCLI_run {
            let r: Recipe
            if let recipe {
                r = try Recipe(path: recipe)
            } else {
                r = try Recipe.builtIn(bits: bits ?? 4)
            }
            var o = QuantizeOptions(recipe: r)
            if let method {
                guard let m = QuantMethod(rawValue: method) else { throw MM1Error("--method must be rtn, awq, gptq or awq+gptq, not '\(method)'") }
                o.method = m
            }
            if let groupSize {
                guard groupSize >= 2, groupSize % 2 == 0 else { throw MM1Error("--group-size must be an even number ≥ 2") }
                o.groupSize = groupSize
                o.bits = bits ?? 4
            }
            guard seqLen >= 1 else { throw MM1Error("--seq-len must be at least 1") }
            if let samples, samples < 1 { throw MM1Error("--samples must be at least 1") }
            o.calibrationPath = calib
            o.samples = samples
            o.seqLength = seqLen
            o.sequential = !notSequential
            o.quiet = quiet
            o.commandLine = Array(CommandLine.arguments.dropFirst())
            if noProbes && probes != nil { throw MM1Error("give --probes or --no-probes, not both") }
            o.probes = noProbes ? .none : probes.map { .file($0) } ?? .automatic
            let rep = try Quantizer.quantize(source: source, output: output, options: o)
            if let report { try Data(try CanonicalJSON.bytes(rep.json())).write(to: URL(fileURLWithPath: report)) }
            if !quiet { print(rep.table(), terminator: "") }
        }
    }
}

struct BenchQuantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Quantize a bundle once; report wall time, throughput and peak RSS against the fp forward pass over the same calibration inputs and the memory bound.",
        discussion: """
        Example:
          mm1pack synth --preset mm1-3b --layout honeybee -o /tmp/mm1-3b && mm1pack convert /tmp/mm1-3b -o /tmp/mm1-3b.mm1
          mm1pack bench quantize /tmp/mm1-3b.mm1 --samples 4 --seq-len 256
        """
    )

    @Argument(help: "Bundle (.mm1).") var bundle: String
    @Option(help: "Output bundle (removed afterwards unless --keep).") var output: String = "/tmp/mm1pack-bench-quantize.mm1"
    @Option(help: "4 or 8 (built-in recipe).") var bits: Int = 4
    @Option(help: "rtn, awq, gptq or awq+gptq.") var method: String = "awq+gptq"
    @Option(help: "Calibration probe file (default: the built-in set).") var calib: String?
    @Option(help: "Calibration samples.") var samples: Int = 4
    @Option(help: "Rows per calibration sequence.") var seqLen: Int = 256
    @Flag(help: "Keep the output bundle.") var keep = false

    func run() throws {
        try MM1PackCLI_run {
            var o = QuantizeOptions(recipe: try Recipe.builtIn(bits: bits))
            guard let m = QuantMethod(rawValue: method) else { throw MM1Error("--method must be rtn, awq, gptq or awq+gptq") }
            o.method = m
            o.calibrationPath = calib
            o.samples = samples
            o.seqLength = seqLen
            // Unbuffered, so that log lines appear as they happen when redirected to a file.
            let r = try QuantizeBench.run(bundle: bundle, output: output, options: o) {
                FileHandle.standardOutput.write(Data(($0 + "\n").utf8))
            }
            if !keep { try? FileManager.default.removeItem(atPath: output) }
            print(QuantizeBench.summary(r))
        }
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a bundle's integrity and compare its outputs with the fp32 reference; exit 0 pass, 1 fail, 2 error.",
        discussion: """
        Every tensor and section digest is checked first (a mismatch is an error naming the tensor: exit 2). Then \
        the model runs on a probe set and its outputs are compared with a reference: by default the reference \
        outputs the bundle carries (written by quantize, or by convert --probes), so nothing but the bundle is \
        needed; with --reference, a live reference model (a float bundle or a source checkpoint) run on --inputs \
        (default: the bundle's own probes, else built-in ones). Metrics: token KL divergence (mean, median, p99, \
        max), top-1 agreement, top-5 overlap, RMS Δp of the reference's top token, max |Δlogit|, logit NMSE — over \
        all, text and image-conditioned positions — and the relative error of every ViT block, the ViT output, the \
        connector and every LLM layer, and MoE routing agreement. Limits come from the recipe that made the bundle \
        (defaults for float bundles), and the options below replace them. See formats/verify.md.

        Examples:
          mm1pack verify tiny-q4.mm1
          mm1pack verify tiny-q4.mm1 --max-mean-kld 0.01 --min-top1 0.95 --json report.json --html report.html
          mm1pack verify model-f16.mm1 --reference checkpoints/model --inputs probes.jsonl
          mm1pack verify model.mm1 --integrity-only
        """
    )

    @Argument(help: "The bundle to verify.") var bundle: String
    @Option(help: "A live reference: a float bundle or a source checkpoint.") var reference: String?
    @Option(help: "Probe file (JSON lines, formats/probes.md) for --reference.") var inputs: String?
    @Flag(help: "Check every tensor and section digest, then stop.") var integrityOnly = false
    @Option(help: "Limit on the mean token KL divergence (nats).") var maxMeanKld: Double?
    @Option(help: "Limit on the 99th percentile of token KL divergence.") var maxP99Kld: Double?
    @Option(help: "Limit on the largest token KL divergence.") var maxKld: Double?
    @Option(help: "Minimum fraction of positions whose top token agrees (0–1).") var minTop1: Double?
    @Option(help: "Minimum mean top-5 overlap (0–1).") var minTop5: Double?
    @Option(help: "Limit on the NMSE of the logits.") var maxLogitNmse: Double?
    @Option(help: "Limit on the NMSE of the ViT output (image-encoder bundles).") var maxFeatureNmse: Double?
    @Option(help: "Minimum fraction of tokens keeping their top-k experts, in the worst MoE layer (0–1).") var minExpertAgreement: Double?
    @Option(help: "Also write the report as JSON to this file.") var json: String?
    @Option(help: "Also write the report as HTML (with the per-stage error chart) to this file.") var html: String?
    @Flag(name: .shortAndLong, help: "No progress output and no table (the exit status still tells).") var quiet = false

    func run() throws {
        var report: VerifyReport?
        try MM1PackCLI_run {
            var o = VerifyOptions()
            o.reference = reference
            o.inputs = inputs
            o.integrityOnly = integrityOnly
            o.quiet = quiet
            let given: [(Threshold.Metric, Double?)] = [
                (.maxMeanKLD, maxMeanKld), (.maxP99KLD, maxP99Kld), (.maxKLD, maxKld), (.minTop1, minTop1),
                (.minTop5, minTop5), (.maxLogitNMSE, maxLogitNmse), (.maxFeatureNMSE, maxFeatureNmse),
                (.minExpertAgreement, minExpertAgreement),
            ]
            for case let (m, v?) in given {
                guard v.isFinite, v >= 0 else { throw MM1Error("--\(m.rawValue.replacingOccurrences(of: "_", with: "-")) must be a number ≥ 0") }
                o.overrides[m] = v
            }
            let r = try Verifier.verify(bundle, options: o)
            if let json { try write(Data(try CanonicalJSON.bytes(r.jsonSanitized())), to: json) }
            if let html { try write(Data(r.html().utf8), to: html) }
            if !quiet { print(r.text(), terminator: "") }
            report = r
        }
        if let report, !report.passed { throw ExitCode(1) }
    }

    /// Reports are written whole to a temporary file and renamed, like bundles.
    func write(_ data: Data, to path: String) throws {
        let tmp = path + ".partial-\(getpid())"
        do {
            try data.write(to: URL(fileURLWithPath: tmp))
            guard rename(tmp, path) == 0 else { throw MM1Error(file: path, "cannot be written: \(String(cString: strerror(errno)))") }
        } catch let e as MM1Error {
            unlink(tmp)
            throw e
        } catch {
            unlink(tmp)
            throw MM1Error(file: path, "cannot be written: \(error.localizedDescription)")
        }
    }
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a bundle's language model (and optionally its vision encoder + connector) as llama.cpp GGUF.",
        discussion: """
        The language model becomes a GGUF of llama.cpp's `llama` architecture (Mixtral-style experts as \
        blk.N.ffn_*_exps), with the bundle's tokenizer.json as tokenizer.ggml.* when it is byte-level BPE. Tensor \
        types map exactly where the layouts coincide: f32, f16, bf16 as stored; int8 sym and int4 sym with a group \
        size that is a multiple of 32 as Q8_0 and Q4_0; int4 asym as Q4_1 when every −scale·zero is an f16. Any \
        other quantized tensor is refused, naming it, unless --requantize says what to do. --vision-out writes the \
        ViT and an MLP connector as a llama.cpp clip/mmproj GGUF (a C-Abstractor has no llama.cpp equivalent and is \
        refused). formats/gguf-export.md has the name, metadata and type tables.

        Examples:
          mm1pack quantize model.mm1 -o model-q4.mm1 --recipe recipes/gguf-q4_0.json --method rtn
          mm1pack export model-q4.mm1 --format gguf -o model-q4_0.gguf
          mm1pack export llava.mm1 --format gguf -o llava.gguf --vision-out mmproj-llava.gguf
        """
    )

    @Argument(help: "Bundle (.mm1).") var bundle: String
    @Option(help: "Output format (only gguf).") var format: String = "gguf"
    @Option(name: .shortAndLong, help: "Output GGUF for the language model.") var output: String?
    @Option(help: "Also write the vision encoder + connector to this GGUF (llama.cpp clip/mmproj).") var visionOut: String?
    @Option(help: "For quantized tensors without an exact GGUF type: f32 (exact dequantized values), f16, q8_0 or q4_0 (lossy; ggml's reference rounding). Default: refuse.") var requantize: String?
    @Flag(help: "Leave the tokenizer out of the language model GGUF.") var noTokenizer = false
    @Option(help: "tokenizer.ggml.pre to write when the pre-tokenizer is not recognised (llama.cpp's name, e.g. llama-bpe).") var tokenizerPre: String?
    @Option(help: "general.name (default: the bundle's file name).") var name: String?
    @Flag(name: .shortAndLong, help: "No progress output.") var quiet = false

    func run() throws {
        try MM1PackCLI_run {
            guard format == "gguf" else { throw MM1Error("--format must be gguf (got '\(format)')") }
            guard output != nil || visionOut != nil else { throw MM1Error("give -o for the language model and/or --vision-out") }
            var o = GGUFExportOptions()
            if let requantize {
                guard let r = GGUFRequantize(rawValue: requantize) else {
                    throw MM1Error("--requantize must be one of \(GGUFRequantize.allCases.map(\.rawValue).joined(separator: ", ")) (got '\(requantize)')")
                }
                o.requantize = r
            }
            o.tokenizer = !noTokenizer
            o.tokenizerPre = tokenizerPre
            o.name = name
            o.showProgress = !quiet
            // Both files are checked and planned before either is written.
            let b = try BundleReader(path: bundle)
            var jobs: [(String, GGUFPreparedExport)] = []
            if let output { jobs.append((output, try GGUFExport.prepareLanguageModel(bundle: b, options: o))) }
            if let visionOut { jobs.append((visionOut, try GGUFExport.prepareVision(bundle: b, options: o))) }
            let results = try jobs.map { try $0.1.write(to: $0.0, showProgress: !quiet) }
            if !quiet {
                for r in results {
                    var msg = "wrote \(r.path): \(r.tensors) tensors (\(r.exact) stored bits, \(r.widened) widened to F32"
                    msg += r.requantized.isEmpty ? ")" : ", \(r.requantized.count) requantized to \(requantize ?? "?")"
                    if !r.requantized.isEmpty { msg += ")" }
                    msg += ", \(r.keys) keys, \(Progress.bytes(r.bytes)) in \(String(format: "%.2f", r.seconds)) s"
                    print(msg)
                }
            }
        }
    }
}
