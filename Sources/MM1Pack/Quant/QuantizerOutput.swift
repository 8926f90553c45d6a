import Crypto
import Foundation

/// Writing the quantized bundle in table order from the spill file, and the `quantize` entry point.
extension Quantizer {
    // MARK: writing

    func write(_ output: String) throws {
        var entries: [BundleWriter.TensorEntry] = []
        for p in plan {
            if let pk = packed[p.name] {
                entries.append(.init(name: p.name, dtype: pk.dtype, shape: p.shape, length: pk.length, quant: pk.quant))
            } else {
                let dt = keptDType(p)
                entries.append(.init(name: p.name, dtype: dt.rawValue, shape: p.shape, length: p.shape.reduce(1, *) * dt.byteSize))
            }
        }
        var sections = try BundleWriter.Section.all(of: weights.bundle)
        report.finish(plan: plan.map { ($0.name, $0.shape, $0.action) }, keptDType: { self.keptDType(self.plan[self.planIndex[$0]!]) })
        sections.removeAll { $0.name == "quant_report.json" }
        sections.append(.init(name: "quant_report.json", raw: try CanonicalJSON.bytes(report.json())))
        if reference != nil || options.probes == .none { sections.removeAll { $0.name.hasPrefix("verify.") } }
        if let reference { sections += try reference.sections() }
        var provenance = weights.bundle.provenance
        var q: [String: Any] = [
            "tool": "mm1pack", "tool_version": Converter.toolVersion,
            "source_bundle": weights.bundle.path, "source_header_sha256": hex(SHA256.hash(data: Array(weights.bundle.headerText.utf8))),
            "recipe": recipe.name, "recipe_sha256": recipe.digest,
            "recipe_json": (try? JSONSerialization.jsonObject(with: Data(recipe.source))) ?? [:],
            "method": options.method?.rawValue ?? recipe.method.rawValue,
            "sequential": options.sequential, "seq_length": options.seqLength,
            "command": options.commandLine,
        ]
        if let c = report.calibration {
            q["calibration"] = ["source": c.source, "samples": c.samples, "sha256": c.digest, "tokens": c.tokens,
                                "images": c.images, "built_in": c.builtIn]
        }
        provenance["quantize"] = q
        var metadata = weights.bundle.headerJSON["metadata"] as? [String: Any] ?? [:]
        metadata["quantization"] = report.summaryJSON()
        let writer = try BundleWriter(path: output, tensors: entries, sections: sections, config: weights.config,
                                      provenance: provenance, metadata: metadata)
        do {
            for (i, p) in plan.enumerated() {
                try writer.beginTensor(p.name)
                if let pk = packed[p.name] {
                    let bytes = try spill!.read(offset: pk.offset, length: pk.length)
                    try bytes.withUnsafeBytes { try writer.write($0) }
                    continue
                }
                let t = weights.bundle.tensors[i]
                let dt = keptDType(p)
                if let v = keptValues[p.name] {
                    var out = [UInt8](repeating: 0, count: v.count * dt.byteSize)
                    v.withUnsafeBytes { src in
                        out.withUnsafeMutableBytes { ElementCopy.gather(src: src.baseAddress!, from: .f32, base: 0, loops: [(v.count, 1)], dst: $0.baseAddress!, to: dt) }
                    }
                    try out.withUnsafeBytes { try writer.write($0) }
                } else if dt == t.dtype {
                    try writer.write(t.data)
                } else {
                    let chunk = 1 << 20
                    var out = [UInt8](repeating: 0, count: min(chunk, t.elementCount) * dt.byteSize)
                    var at = 0
                    while at < t.elementCount {
                        let n = min(chunk, t.elementCount - at)
                        out.withUnsafeMutableBytes { ElementCopy.gather(src: t.data.baseAddress!, from: t.dtype!, base: at, loops: [(n, 1)], dst: $0.baseAddress!, to: dt) }
                        try out.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0[0..<(n * dt.byteSize)])) }
                        at += n
                    }
                }
            }
            try writer.finish()
        } catch {
            writer.abort()
            throw error
        }
    }

    /// f32 values as the bundle will store them in `dt` (f16/bf16 rounding), widened back.
    func rounded(_ v: [Float], to dt: DType) -> [Float] {
        guard dt != .f32 else { return v }
        var narrow = [UInt8](repeating: 0, count: v.count * dt.byteSize)
        v.withUnsafeBytes { src in
            narrow.withUnsafeMutableBytes { ElementCopy.gather(src: src.baseAddress!, from: .f32, base: 0, loops: [(v.count, 1)], dst: $0.baseAddress!, to: dt) }
        }
        var wide = [Float](repeating: 0, count: v.count)
        narrow.withUnsafeBytes { src in
            wide.withUnsafeMutableBytes { ElementCopy.gather(src: src.baseAddress!, from: dt, base: 0, loops: [(v.count, 1)], dst: $0.baseAddress!, to: .f32) }
        }
        return wide
    }

    func keptDType(_ p: Planned) -> DType {
        let source = weights.bundle.tensor(named: p.name)!.dtype!
        if case .keep(let k) = p.action, let d = DType(rawValue: k.rawValue) { return d }
        return source
    }
}

/// Quantized payloads waiting to be written in table order: an unlinked-on-close temporary file next to the
/// output, so that memory never holds more than one tensor's packed bytes.
final class SpillFile {
    let path: String
    let fd: Int32
    var size = 0

    init(directory: String, name: String) throws {
        path = directory + "/.\(name).spill-\(getpid())"
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw MM1Error(file: path, "cannot create: \(String(cString: strerror(errno)))") }
        unlink(path)
    }

    deinit { close(fd) }

    func append(_ bytes: [UInt8]) throws -> Int {
        let at = size
        var done = 0
        try bytes.withUnsafeBytes { b in
            while done < b.count {
                let n = pwrite(fd, b.baseAddress! + done, b.count - done, off_t(at + done))
                guard n > 0 else { throw MM1Error(file: path, "write failed: \(String(cString: strerror(errno)))") }
                done += n
            }
        }
        size += bytes.count
        return at
    }

    func read(offset: Int, length: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length)
        var done = 0
        try out.withUnsafeMutableBytes { b in
            while done < length {
                let n = pread(fd, b.baseAddress! + done, length - done, off_t(offset + done))
                guard n > 0 else { throw MM1Error(file: path, "read failed: \(String(cString: strerror(errno)))") }
                done += n
            }
        }
        return out
    }
}

extension Quantizer {
    /// `mm1pack quantize`: SRC is a bundle (f32/f16/bf16) or a source checkpoint, which is first converted (its
    /// float types kept) into a temporary bundle next to the output and removed afterwards.
    public static func quantize(source: String, output: String, options: QuantizeOptions) throws -> QuantReport {
        var bundlePath = source
        var temp: String?
        defer { if let temp { unlink(temp) } }
        if !BundleReader.looksLikeBundle(source) {
            let dir = (output as NSString).deletingLastPathComponent
            let t = (dir.isEmpty ? "." : dir) + "/.\((output as NSString).lastPathComponent).source-\(getpid()).mm1"
            temp = t
            var o = ConvertOptions()
            o.showProgress = !options.quiet
            _ = try Converter.convert(source: source, output: t, options: o)
            bundlePath = t
        }
        let weights = try ModelWeights(path: bundlePath)
        let q = try Quantizer(weights: weights, options: options)
        let calibration = try CalibrationSet(options: options, model: q.model)
        q.reference = try referenceProbes(options: options, calibration: calibration, model: q.model).map { probes in
            let progress = Progress(label: "reference", totalItems: probes.samples.count, totalBytes: probes.samples.count, enabled: !options.quiet)
            let vocab = q.model.llm?.config.vocabSize ?? 0
            return try VerifyReference.compute(model: q.model, probes: probes.samples, source: probes.source,
                                               logitsTopK: VerifyReference.defaultTopK(vocab: vocab),
                                               maxRows: VerifyReference.defaultMaxRows, progress: progress)
        }
        return try q.run(output: output, calibration: calibration)
    }

    /// The probes to run the source model on now, or nil (no reference, or the source bundle's is kept).
    static func referenceProbes(options: QuantizeOptions, calibration: CalibrationSet,
                                model: MultimodalModel) throws -> (samples: [CalibrationSample], source: String)? {
        switch options.probes {
        case .none:
            return nil
        case .file(let path):
            return (try VerifyProbes.load(path, model: model), path)
        case .automatic:
            if model.weights.bundle.section(named: VerifyReference.manifestSection) != nil { return nil }
            if let path = options.calibrationPath {
                let held = try CalibrationSet.load(path, skip: calibration.samples.count, limit: 3, model: model).samples
                if !held.isEmpty { return (held, "\(path) (held out: lines after the \(calibration.samples.count) calibration samples)") }
            }
            return (try VerifyProbes.builtIn(model: model), "built-in")
        }
    }
}
