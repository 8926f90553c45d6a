import Foundation

extension VerifyReference {
    /// `mm1pack convert --probes P`: converts, runs the f32 source model on the probes (a probe file, or
    /// "built-in"), and writes the bundle with the reference outputs in its `verify.*` sections. The reference is
    /// the converted bundle itself when it holds the source's values unchanged (`--dtype auto` or `f32`), else a
    /// temporary f32 conversion of the source, so that narrowing to f16/bf16 shows up in `verify`. Nothing appears
    /// at `output` unless every step succeeds.
    public static func convert(source: String, output: String, options: ConvertOptions, probes: String) throws -> ConvertReport {
        let dir = (output as NSString).deletingLastPathComponent
        let stem = (dir.isEmpty ? "." : dir) + "/.\((output as NSString).lastPathComponent)"
        let staged = stem + ".stage-\(getpid()).mm1"
        var temps = [staged]
        defer { for t in temps { unlink(t) } }
        let report = try Converter.convert(source: source, output: staged, options: options)
        var refPath = staged
        if options.dtype != .auto && options.dtype != .f32 {
            refPath = stem + ".f32-\(getpid()).mm1"
            temps.append(refPath)
            var o = options
            o.dtype = .f32
            o.sourceDigestKind = .none
            _ = try Converter.convert(source: source, output: refPath, options: o)
        }
        let refModel = try MultimodalModel(path: refPath)
        let samples = probes == "built-in" ? try VerifyProbes.builtIn(model: refModel) : try VerifyProbes.load(probes, model: refModel)
        let progress = Progress(label: "reference", totalItems: samples.count, totalBytes: samples.count, enabled: options.showProgress)
        var ref = try compute(model: refModel, probes: samples, source: probes, logitsTopK: defaultTopK(vocab: refModel.llm?.config.vocabSize ?? 0),
                              maxRows: defaultMaxRows, progress: progress)
        ref.model["bundle"] = "source checkpoint \((source as NSString).lastPathComponent), converted to f32"
        try BundleWriter.rewrite(try BundleReader(path: staged), to: output, sections: try ref.sections())
        return report
    }
}
