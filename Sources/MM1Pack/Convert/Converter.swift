import Crypto
import Foundation

public struct ConvertOptions: Sendable {
    public enum TargetDType: String, Sendable, CaseIterable {
        /// Each tensor keeps its stored float type.
        case auto, f32, f16, bf16
    }

    public var dtype: TargetDType = .auto
    /// Built-in layout name; nil detects it.
    public var layout: String?
    /// A mapping file to use instead of the built-in one.
    public var mappingFile: String?
    /// Record unmatched source tensors in the metadata instead of failing.
    public var allowUnused = false
    /// The digest of each source file recorded in the provenance.
    public var sourceDigestKind: SourceDigestKind = .segments
    /// Whether any source digest is recorded; setting true picks the default kind.
    public var sourceDigests: Bool {
        get { sourceDigestKind != .none }
        set { sourceDigestKind = newValue ? .segments : .none }
    }
    /// AXLearn: read zarr chunks absent on disk (with a null fill value) as zeros, as TensorStore does, instead of
    /// failing. TensorStore skips writing chunks equal to the fill value, so all-zero parameters can have none.
    public var missingChunksAsZeros = false
    public var showProgress = true

    public init() {}
}

public struct ConvertReport: Sendable {
    public var layout: String
    public var tensors: Int
    public var bytes: Int
    public var ignored: [String: String]
    public var unused: [String]
    public var seconds: Double
    /// Things the user should know that did not stop the conversion (e.g. a GGUF tokenizer that could not be
    /// carried over).
    public var warnings: [String] = []
    /// Source bytes hashed for the provenance's source-file digests beyond those the bundle's tensor digests cover.
    public var sourceBytesHashed: Int
}

/// An opened checkpoint with everything needed to convert it.
public struct OpenedSource {
    public var layout: String
    public var source: TensorSource
    /// Directory holding the config and tokenizer files.
    public var configDir: String
    public var config: [String: Any]
    /// The file the config came from, for messages.
    public var configFile: String? = nil
    /// Sections built from the source itself (GGUF: tokenizer files); when set, no side files are read from
    /// `configDir`.
    public var sections: [BundleWriter.Section]? = nil
    /// Entries added to the bundle's metadata.
    public var metadata: [String: Any] = [:]
    /// Warnings for the user, also recorded in the metadata by the source's reader.
    public var warnings: [String] = []
}

public enum Converter {
    public static let toolVersion = "0.1.0"

    /// Files carried into the bundle as sections when the source has them.
    static let sectionFiles = ["config.json", "generation_config.json", "preprocessor_config.json",
                               "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                               "chat_template.json", "chat_template.jinja", "open_clip_config.json", "mm1pack_config.json"]
    static let maxSectionBytes = 64 << 20

    // MARK: opening

    static func isDir(_ p: String) -> Bool {
        var d: ObjCBool = false
        return FileManager.default.fileExists(atPath: p, isDirectory: &d) && d.boolValue
    }

    static func exists(_ p: String) -> Bool { FileManager.default.fileExists(atPath: p) }

    /// Decides the layout from the files (and config) present.
    public static func detectLayout(_ path: String) throws -> String {
        guard exists(path) else { throw MM1Error(file: path, "does not exist") }
        if !isDir(path) && (path.hasSuffix(".gguf") || hasGGUFMagic(path)) { return "gguf" }
        let dir = isDir(path) ? path : (path as NSString).deletingLastPathComponent
        if isDir(path) {
            if exists(path + "/index") && isDir(path + "/gda") { return "axlearn" }
            if isDir(path + "/checkpoints") { return "axlearn" }
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            if entries.contains(where: { $0.hasPrefix("step_") }) { return "axlearn" }
        }
        if exists(dir + "/open_clip_config.json") { return "openclip" }
        if exists(dir + "/config.json") {
            let cfg = try SourceConfig.readJSON(dir + "/config.json")
            let type = cfg["model_type"] as? String ?? ""
            if type == "honeybee" || cfg["projector_config"] != nil || cfg["visual_projector_config"] != nil { return "honeybee" }
            if ["llava", "llama", "mistral", "mixtral"].contains(type) { return "llava" }
            throw MM1Error(file: dir + "/config.json", "model_type '\(type)' is not a layout mm1pack knows; pass --layout (one of \(LayoutMapping.builtinNames.joined(separator: ", ")))")
        }
        throw MM1Error(file: path, "cannot tell the checkpoint layout (no config.json, open_clip_config.json or AXLearn index); pass --layout")
    }

    static func hasGGUFMagic(_ path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        return (try? h.read(upToCount: 4)) == Data("GGUF".utf8)
    }

    public static func open(_ path: String, layout explicitLayout: String? = nil, missingChunksAsZeros: Bool = false) throws -> OpenedSource {
        var opened = try openRaw(path, layout: explicitLayout, missingChunksAsZeros: missingChunksAsZeros)
        do {
            opened.config = try SourceConfig.normalize(opened.config)
        } catch let e as MM1Error {
            throw e.inFile(opened.configFile ?? opened.configDir)
        }
        return opened
    }

    static func openRaw(_ path: String, layout explicitLayout: String?, missingChunksAsZeros: Bool) throws -> OpenedSource {
        let layout = try explicitLayout ?? detectLayout(path)
        switch layout {
        case "axlearn":
            let reader = try AXLearnReader(path: path, missingChunks: missingChunksAsZeros ? .zeros : .error)
            let config = try SourceConfig.axlearn(stepDir: reader.root)
            // Tokenizer and other side files sit beside mm1pack_config.json, not inside the step directory.
            let cfgPath = SourceConfig.axlearnConfigPath(stepDir: reader.root)!
            return OpenedSource(layout: layout, source: reader, configDir: (cfgPath as NSString).deletingLastPathComponent,
                                config: config, configFile: cfgPath)
        case "llava", "honeybee", "openclip":
            let dir = isDir(path) ? path : (path as NSString).deletingLastPathComponent
            // open_clip repositories on the hub can hold a transformers copy (model.safetensors) beside the
            // open_clip weights; the openclip layout means the latter.
            let file = layout == "openclip" && isDir(path) && exists(path + "/open_clip_model.safetensors")
                ? path + "/open_clip_model.safetensors" : path
            let reader = try SafetensorsReader(path: file)
            let config: [String: Any]
            switch layout {
            case "llava": config = try SourceConfig.llava(dir: dir)
            case "honeybee": config = try SourceConfig.honeybee(dir: dir)
            default: config = try SourceConfig.openclip(dir: dir)
            }
            return OpenedSource(layout: layout, source: reader, configDir: dir, config: config,
                                configFile: dir + (layout == "openclip" ? "/open_clip_config.json" : "/config.json"))
        case "gguf":
            let reader = try GGUFReader(path: path)
            let config = try GGUFImport.config(reader)
            var opened = OpenedSource(layout: layout, source: reader, configDir: reader.root, config: config, configFile: path)
            var meta = GGUFImport.metadata(reader)
            let (files, refused) = GGUFImport.tokenizerFiles(reader)
            opened.sections = files.map { BundleWriter.Section(name: $0.0, raw: $0.1) }
            if reader.metadata["tokenizer.ggml.model"]?.stringValue == "none" {
                meta["tokenizer_not_converted"] = "the file has no tokenizer (tokenizer.ggml.model 'none')"
            } else if let refused {
                meta["tokenizer_not_converted"] = refused
                opened.warnings.append("\(path): the tokenizer was not converted (\(refused)); the bundle holds the weights only, so probes must give input_ids")
            }
            opened.metadata["gguf"] = meta
            return opened
        default:
            throw MM1Error(file: path, "unknown layout '\(layout)' (known: \(LayoutMapping.builtinNames.joined(separator: ", ")))")
        }
    }

    // MARK: planning

    /// Matches the source against the layout and the canonical schema. Every problem found is reported at once.
    public static func plan(_ opened: OpenedSource, options: ConvertOptions) throws -> (plan: MappingPlan, order: [CanonicalSchema.Entry], mapping: LayoutMapping) {
        let mapping = try options.mappingFile.map { try LayoutMapping.load(path: $0) } ?? LayoutMapping.builtin(opened.layout)
        var plan = try Mapper.plan(source: opened.source.tensors, layout: mapping, config: opened.config)
        let root = opened.source.root
        if !plan.unmatched.isEmpty && !options.allowUnused {
            throw MM1Error(file: root, "\(plan.unmatched.count) source tensor(s) match no rule of layout '\(mapping.name)' (\(mapping.file)); fix the mapping or pass --allow-unused to record them in the bundle's metadata: \(plan.unmatched.joined(separator: ", "))")
        }
        let expected: [CanonicalSchema.Entry]
        do { expected = try CanonicalSchema.expected(opened.config) } catch let e as MM1Error { throw e.inFile(root) }
        let expectedNames = Set(expected.map(\.name))

        // A state-dict dump of a tied model still holds the output head (transformers' save_pretrained drops it).
        // It is redundant when it equals the embedding; if it differs, the config's tying is wrong.
        if ((opened.config["llm"] as? [String: Any])?["tie_embeddings"] as? Bool) == true,
           let head = plan.tensors["llm.head.weight"], let embed = plan.tensors["llm.embed.weight"] {
            guard try sameValues(head, embed, source: opened.source) else {
                throw MM1Error(file: root, tensor: head.parts[0].source, "the config ties the output head to the embedding (tie_word_embeddings), but the source's head differs from its embedding")
            }
            plan.tensors["llm.head.weight"] = nil
            plan.ignored[head.parts[0].source] = "output head identical to the tied embedding"
        }
        let missing = expected.filter { plan.tensors[$0.name] == nil }.map(\.name)
        if !missing.isEmpty {
            throw MM1Error(file: root, "the configuration needs \(missing.count) tensor(s) the source does not have: \(missing.joined(separator: ", "))")
        }
        let extra = plan.tensors.keys.filter { !expectedNames.contains($0) }.sorted()
        if !extra.isEmpty {
            let detail = extra.map { "\($0) (from '\(plan.tensors[$0]!.parts[0].source)')" }
            throw MM1Error(file: root, "the source has \(extra.count) tensor(s) the configuration does not use (the config and the weights disagree): \(detail.joined(separator: ", "))")
        }
        var shapeErrors: [String] = []
        for e in expected {
            let p = plan.tensors[e.name]!
            if p.shape != e.shape {
                let src = p.parts.count == 1 ? "'\(p.parts[0].source)' \(opened.source.tensors[p.parts[0].source]!.shape)" : "\(p.parts.count) stacked tensors such as '\(p.parts[0].source)'"
                shapeErrors.append("\(e.name): the config implies \(e.shape), the source gives \(p.shape) (from \(src))")
            }
        }
        if !shapeErrors.isEmpty {
            throw MM1Error(file: root, "shapes do not fit the configuration: \(shapeErrors.joined(separator: "; "))")
        }
        return (plan, expected, mapping)
    }

    /// Whether two planned tensors hold the same values, compared as stored (both plain views of one source
    /// tensor each, same dtype and shape); anything else counts as different.
    static func sameValues(_ a: PlannedTensor, _ b: PlannedTensor, source: TensorSource) throws -> Bool {
        guard a.parts.count == 1, b.parts.count == 1, a.shape == b.shape,
              let ia = source.tensors[a.parts[0].source], let ib = source.tensors[b.parts[0].source],
              ia.dtype == ib.dtype, ia.shape == ib.shape, a.parts[0].view == TensorView(sourceShape: ia.shape),
              b.parts[0].view == TensorView(sourceShape: ib.shape), let rows = ia.shape.first, rows > 0
        else { return false }
        let rowBytes = ia.byteCount / rows
        let batch = max(1, (8 << 20) / max(rowBytes, 1))
        var bufA = [UInt8](repeating: 0, count: batch * rowBytes), bufB = bufA
        var r = 0
        while r < rows {
            let n = min(batch, rows - r)
            var lo = Array(repeating: 0, count: ia.shape.count)
            lo[0] = r
            var hi = ia.shape
            hi[0] = r + n
            try bufA.withUnsafeMutableBytes { try source.read(ia.name, lower: lo, upper: hi, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<(n * rowBytes)])) }
            try bufB.withUnsafeMutableBytes { try source.read(ib.name, lower: lo, upper: hi, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<(n * rowBytes)])) }
            if bufA[0..<(n * rowBytes)] != bufB[0..<(n * rowBytes)] { return false }
            r += n
        }
        return true
    }

    // MARK: converting

    /// A source checkpoint converted to an f32 bundle in a new temporary directory, for commands that run a model
    /// straight from a checkpoint (`logits`, `verify --reference`). The caller removes `directory` when done.
    public static func temporaryF32Bundle(source: String, label: String, showProgress: Bool) throws -> (bundle: String, directory: String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mm1pack-\(label)-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var o = ConvertOptions()
        o.dtype = .f32
        o.showProgress = showProgress
        o.sourceDigestKind = .none
        do {
            _ = try convert(source: source, output: dir + "/model.mm1", options: o)
        } catch {
            try? FileManager.default.removeItem(atPath: dir)
            throw error
        }
        return (dir + "/model.mm1", dir)
    }

    public static func convert(source path: String, output: String, options: ConvertOptions) throws -> ConvertReport {
        let t0 = Date()
        let opened = try open(path, layout: options.layout, missingChunksAsZeros: options.missingChunksAsZeros)
        let (plan, order, mapping) = try plan(opened, options: options)
        let src = opened.source

        var entries: [BundleWriter.TensorEntry] = []
        var dtypes: [DType] = []
        // Bundle tensors that hold one source tensor's bytes unchanged, by index, to reuse their digests.
        var unchanged: [String: Int] = [:]
        for (i, e) in order.enumerated() {
            let p = plan.tensors[e.name]!
            let srcType = src.tensors[p.parts[0].source]!.dtype
            let dt: DType = options.dtype == .auto ? srcType : DType(rawValue: options.dtype.rawValue)!
            dtypes.append(dt)
            entries.append(.init(name: e.name, dtype: dt.rawValue, shape: e.shape, length: e.shape.reduce(1, *) * dt.byteSize))
            if let s = unchangedSource(p, dtype: dt, source: src), unchanged[s] == nil { unchanged[s] = i }
        }

        // Source digests are computed on the other core while the tensors stream.
        let digests = try FileDigests(source: src, kind: options.sourceDigestKind, unchanged: Set(unchanged.keys))
        digests.start()
        var finished = false
        defer { if !finished { digests.cancel() } }

        var sections: [BundleWriter.Section] = opened.sections ?? []
        for name in sectionFiles where opened.sections == nil {
            let p = opened.configDir + "/" + name
            guard exists(p) else { continue }
            let size = (try? FileManager.default.attributesOfItem(atPath: p)[.size] as? Int) ?? 0
            guard size <= maxSectionBytes else { throw MM1Error(file: p, "is \(size) bytes; files carried into a bundle are limited to \(maxSectionBytes)") }
            guard let data = FileManager.default.contents(atPath: p) else { throw MM1Error(file: p, "cannot read") }
            sections.append(.init(name: name, raw: [UInt8](data)))
        }
        var metadata: [String: Any] = opened.metadata
        if !plan.unmatched.isEmpty { metadata["unused_tensors"] = plan.unmatched }
        if !plan.ignored.isEmpty { metadata["ignored_tensors"] = plan.ignored }

        var provenance: [String: Any] = [
            "tool": "mm1pack", "tool_version": toolVersion, "source_layout": opened.layout,
            "options": ["dtype": options.dtype.rawValue, "layout": options.layout ?? opened.layout,
                        "allow_unused": options.allowUnused, "source_digests": options.sourceDigestKind.rawValue, "missing_chunks_as_zeros": options.missingChunksAsZeros,
                        "mapping": options.mappingFile.map { ($0 as NSString).lastPathComponent } ?? "builtin:\(opened.layout)",
                        "mapping_sha256": mapping.digest] as [String: Any],
        ]
        provenance["source_files"] = digests.placeholder()

        let writer = try BundleWriter(path: output, tensors: entries, sections: sections, config: opened.config,
                                      provenance: provenance, metadata: metadata)
        defer { if !finished { writer.abort() } }
        let totalBytes = entries.reduce(0) { $0 + $1.length }
        let progress = Progress(label: "convert", totalItems: entries.count, totalBytes: totalBytes, enabled: options.showProgress)
        let scratch = Scratch()
        // Boxes of sources without a memory map are read one ahead, on another thread.
        var requests: [BoxReads.Request] = []
        for (i, e) in order.enumerated() {
            for part in plan.tensors[e.name]!.parts where try src.mappedBytes(part.source) == nil {
                guard let info = src.tensors[part.source] else { continue }
                for b in try rowBatches(part.view, name: e.name, dtype: dtypes[i], source: info) {
                    requests.append(.init(source: part.source, view: b.view, dtype: info.dtype))
                }
            }
        }
        let boxes = BoxReads(source: src, requests: requests)
        defer { boxes.stop() }
        var done = 0
        for (i, e) in order.enumerated() {
            progress.update(item: i + 1, bytes: done, detail: e.name)
            try writer.beginTensor(e.name)
            let p = plan.tensors[e.name]!
            for part in p.parts {
                try stream(part, of: e.name, source: src, to: dtypes[i], writer: writer, scratch: scratch, boxes: boxes) { n in
                    done += n
                    progress.update(item: i + 1, bytes: done, detail: e.name)
                }
            }
            for part in p.parts { src.release(part.source) }
        }
        progress.done()
        // The header's provenance needs the source digests; wait for them, then write the header.
        let tensorDigests = try writer.tensorDigests()
        provenance["source_files"] = try digests.finish(unchangedDigests: unchanged.mapValues { tensorDigests[$0] })
        try writer.setProvenance(provenance)
        try writer.finish()
        finished = true
        return ConvertReport(layout: opened.layout, tensors: entries.count, bytes: totalBytes, ignored: plan.ignored,
                             unused: plan.unmatched, seconds: Date().timeIntervalSince(t0), warnings: opened.warnings,
                             sourceBytesHashed: digests.bytesHashed)
    }

    /// The source tensor whose stored bytes, in order, are exactly the bundle tensor's (one part, same dtype, a
    /// view that walks the whole tensor contiguously), so that the bundle's digest of it is the source bytes'.
    static func unchangedSource(_ p: PlannedTensor, dtype: DType, source: TensorSource) -> String? {
        guard p.parts.count == 1, let info = source.tensors[p.parts[0].source], info.dtype == dtype,
              p.parts[0].view.elementCount == info.elementCount else { return nil }
        let (base, loops) = p.parts[0].view.loops(boxOrigin: Array(repeating: 0, count: info.shape.count), boxShape: info.shape)
        guard base == 0, loops.count <= 1, (loops.first?.stride ?? 1) == 1 else { return nil }
        return info.name
    }

    /// Reusable buffers, so streaming allocates once.
    final class Scratch {
        private var outBuf: UnsafeMutableRawBufferPointer = .init(start: nil, count: 0)

        deinit {
            outBuf.deallocate()
        }

        func out(_ n: Int) -> UnsafeMutableRawBufferPointer { Scratch.ensure(&outBuf, n) }

        private static func ensure(_ buf: inout UnsafeMutableRawBufferPointer, _ n: Int) -> UnsafeMutableRawBufferPointer {
            if buf.count < n {
                buf.deallocate()
                buf = .allocate(byteCount: max(n, 64), alignment: 64)
            }
            return UnsafeMutableRawBufferPointer(rebasing: buf[0..<n])
        }
    }

    /// Output rows are produced in batches of about this many bytes, which bounds memory whatever the tensor size.
    static let batchBytes = 32 << 20

    /// The row batches a part is converted in: views of about `batchBytes` of output rows each, or the whole view
    /// when its first axis cannot be cut.
    static func rowBatches(_ view: TensorView, name: String, dtype: DType, source info: SourceTensorInfo) throws -> [(rows: Range<Int>, view: TensorView)] {
        let rows = view.rank == 0 ? 1 : view.shape[0]
        let rowElements = max(1, view.elementCount / max(rows, 1))
        var batch = max(1, batchBytes / (rowElements * max(dtype.byteSize, info.dtype.byteSize)))
        var out: [(rows: Range<Int>, view: TensorView)] = []
        var r0 = 0
        while r0 < rows {
            var n = min(batch, rows - r0)
            var v = view
            if view.rank > 0 && n < rows {
                do {
                    try v.slice(axis: 0, from: r0, count: n)
                } catch {
                    // A composite first axis cannot be cut anywhere: take the whole view at once.
                    batch = rows
                    n = rows - r0
                    v = view
                    if r0 != 0 { throw MM1Error(tensor: name, "internal error: cannot batch the rows of this view") }
                }
            }
            out.append((r0..<(r0 + n), v))
            r0 += n
        }
        return out
    }

    static func stream(_ part: PlannedTensor.Part, of name: String, source: TensorSource, to dtype: DType,
                       writer: BundleWriter, scratch: Scratch, boxes: BoxReads, progress: (Int) -> Void) throws {
        guard let info = source.tensors[part.source] else { throw MM1Error(tensor: part.source, "vanished from the source") }
        let mapped = try source.mappedBytes(part.source)
        for (batchRows, v) in try rowBatches(part.view, name: name, dtype: dtype, source: info) {
            let r0 = batchRows.lowerBound, n = batchRows.count
            let count = v.elementCount
            if let mapped, dtype == info.dtype {
                let (base, loops) = v.loops(boxOrigin: Array(repeating: 0, count: info.shape.count), boxShape: info.shape)
                if loops.count <= 1 && (loops.first?.stride ?? 1) == 1 {
                    // Contiguous and unconverted: check, hash and write straight from the mapping.
                    let bytes = UnsafeRawBufferPointer(rebasing: mapped[(base * dtype.byteSize)..<((base + count) * dtype.byteSize)])
                    if let fileSource = source as? FileBackedTensorSource, let range = fileSource.fileRange(part.source) {
                        let sub = FileRange(path: range.path, offset: range.offset + base * dtype.byteSize, length: bytes.count)
                        // The writer runs the check in the same pass as the digest, on another core for large
                        // tensors; a failure surfaces when the digests are collected, before the file is complete.
                        let rows = r0..<(r0 + n), chunkStart = Int(bitPattern: bytes.baseAddress!)
                        try writer.write(copying: sub, bytes: bytes) { piece in
                            try checkFinite(piece.baseAddress!, count: piece.count / dtype.byteSize, dtype: dtype, source: info,
                                            rows: rows, name: name, firstElement: (Int(bitPattern: piece.baseAddress!) - chunkStart) / dtype.byteSize)
                        }
                    } else {
                        try checkFinite(bytes.baseAddress!, count: count, dtype: dtype, source: info, rows: r0..<(r0 + n), name: name)
                        try writer.write(bytes)
                    }
                    progress(bytes.count)
                    continue
                }
            }
            let out = scratch.out(count * dtype.byteSize)
            if let mapped {
                let (base, loops) = v.loops(boxOrigin: Array(repeating: 0, count: info.shape.count), boxShape: info.shape)
                ElementCopy.gather(src: mapped.baseAddress!, from: info.dtype, base: base, loops: loops,
                                   dst: out.baseAddress!, to: dtype)
            } else {
                let request = BoxReads.Request(source: part.source, view: v, dtype: info.dtype)
                let box = try boxes.next(request)
                let (base, loops) = v.loops(boxOrigin: request.lower, boxShape: zip(request.lower, request.upper).map { $1 - $0 })
                ElementCopy.gather(src: box.baseAddress!, from: info.dtype, base: base, loops: loops,
                                   dst: out.baseAddress!, to: dtype)
            }
            try checkFinite(out.baseAddress!, count: count, dtype: dtype, source: info, rows: r0..<(r0 + n), name: name)
            try writer.write(UnsafeRawBufferPointer(out))
            progress(out.count)
        }
    }
}

extension Converter {
    /// Refuses NaN and ±Inf (and finite values that overflowed when narrowing), naming where they are.
    /// `p` holds `count` elements of rows `rows`, starting at element `firstElement` of those rows (a piece checked
    /// on its own), so that the message gives the element's index within the rows.
    static func checkFinite(_ p: UnsafeRawPointer, count: Int, dtype: DType, source info: SourceTensorInfo,
                            rows: Range<Int>, name: String, firstElement: Int = 0) throws {
        guard let found = ElementCopy.firstNonFinite(p, count: count, dtype: dtype) else { return }
        let value = ElementCopy.value(p, index: found, dtype: dtype)
        let bad = firstElement + found
        let why = value.isNaN ? "NaN" : (dtype != info.dtype ? "\(value) (a value too large for \(dtype.rawValue), or ±Inf in the source)" : "\(value)")
        throw MM1Error(file: info.file, tensor: info.name,
                       "element \(bad) of rows \(rows.lowerBound)..<\(rows.upperBound) (canonical '\(name)') is \(why); a bundle never stores NaN or Inf")
    }
}
