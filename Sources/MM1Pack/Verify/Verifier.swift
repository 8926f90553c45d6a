import Foundation

public struct VerifyOptions: Sendable {
    /// A live reference: a bundle (any float dtype, run in f32) or a source checkpoint (converted to f32 first).
    public var reference: String?
    /// Probe file for a live reference (default: the bundle's own probes, else the built-in ones).
    public var inputs: String?
    /// Limits given on the command line; they replace the recipe's or the default of the same metric.
    public var overrides: [Threshold.Metric: Double] = [:]
    /// Check every tensor and section digest, and stop.
    public var integrityOnly = false
    public var quiet = false

    public init() {}
}

/// `mm1pack verify`: integrity first, then the bundle's outputs against a reference — the one the bundle carries
/// (`verify.*` sections) or a live one — and the limits that make it a CI gate (formats/verify.md).
public enum Verifier {
    /// Limits for bundles whose provenance names no recipe (float conversions).
    public static let floatDefaults: [Threshold.Metric: Double] = [.maxMeanKLD: 1e-3, .minTop1: 0.95, .maxFeatureNMSE: 1e-4]
    public static let imageEncoderDefaults: [Threshold.Metric: Double] = [.maxFeatureNMSE: 1e-3]

    /// Throws for errors (unreadable bundle, digest mismatch, no reference): the command exits 2. A report whose
    /// `passed` is false means a limit failed: exit 1.
    public static func verify(_ path: String, options: VerifyOptions) throws -> VerifyReport {
        let bundle = try BundleReader(path: path)
        try checkIntegrity(bundle)
        var report = VerifyReport(bundle: path, tensorsChecked: bundle.tensors.count, sectionsChecked: bundle.sections.count)
        if options.integrityOnly { return report }

        let model = try MultimodalModel(weights: ModelWeights(bundle: bundle))
        let reference: VerifyReference
        var temp: String?
        defer { if let temp { try? FileManager.default.removeItem(atPath: temp) } }
        if let refPath = options.reference {
            var refBundlePath = refPath
            if !BundleReader.looksLikeBundle(refPath) {
                (refBundlePath, temp) = try Converter.temporaryF32Bundle(source: refPath, label: "verify", showProgress: !options.quiet)
            }
            let refBundle = try BundleReader(path: refBundlePath)
            if temp == nil { try checkIntegrity(refBundle) }
            let refModel = try MultimodalModel(weights: ModelWeights(bundle: refBundle))
            let probes: [CalibrationSample]
            let source: String
            if let inputs = options.inputs {
                probes = try VerifyProbes.load(inputs, model: refModel)
                source = inputs
            } else if let own = try VerifyReference.load(from: bundle) {
                probes = own.probes
                source = own.source + " (this bundle's probes)"
            } else {
                probes = try VerifyProbes.builtIn(model: refModel)
                source = "built-in"
            }
            let progress = Progress(label: "reference", totalItems: probes.count, totalBytes: probes.count, enabled: !options.quiet)
            reference = try VerifyReference.compute(model: refModel, probes: probes, source: source, logitsTopK: nil,
                                                    maxRows: nil, progress: progress)
            report.referenceKind = "live"
            report.referenceDescription = refPath
        } else {
            if options.inputs != nil {
                throw MM1Error(file: path, "--inputs needs --reference: the reference outputs a bundle carries are for its own probes")
            }
            guard let r = try VerifyReference.load(from: bundle) else {
                throw MM1Error(file: path, "carries no reference outputs (it was written without probes); give --reference SRC, or re-quantize or convert with --probes")
            }
            reference = r
            report.referenceKind = "embedded"
            let m = r.model
            report.referenceDescription = "\(m["bundle"] as? String ?? "?") (header sha256 \((m["header_sha256"] as? String ?? "?").prefix(12))…)"
        }
        report.probeSource = reference.source
        report.logitsMode = reference.logitsTopK.map { "top \($0) + log-sum-exp" } ?? "full"
        report.rowsMode = reference.maxRows.map { "\($0) sampled rows per tensor" } ?? "all rows"

        let progress = Progress(label: "verify", totalItems: reference.probes.count, totalBytes: reference.probes.count, enabled: !options.quiet)
        var comparisons: [ProbeComparison] = []
        for (i, (probe, refCap)) in zip(reference.probes, reference.captures).enumerated() {
            progress.update(item: i + 1, bytes: i, detail: probe.id, force: true)
            let cap = try ProbeRunner.run(model, probe: probe, maxRows: reference.maxRows, logitsTopK: nil)
            comparisons.append(try ProbeComparison.compare(reference: refCap, packed: cap, file: path))
        }
        progress.done()
        report.add(comparisons)
        report.thresholds = try thresholds(for: bundle, hasLLM: model.llm != nil, overrides: options.overrides)
        report.evaluateThresholds()
        return report
    }

    /// Every tensor's and section's digest, before any number is computed.
    static func checkIntegrity(_ bundle: BundleReader) throws {
        let failed = bundle.checkAll()
        guard failed.isEmpty else {
            let names = failed.map { $0.hasPrefix("section:") ? "section '\($0.dropFirst(8))'" : "tensor '\($0)'" }
            throw MM1Error(file: bundle.path, "checksum mismatch in \(failed.count) entr\(failed.count == 1 ? "y" : "ies"): \(names.joined(separator: ", ")) (the bytes differ from the digest in the header: the file is damaged or was edited)")
        }
    }

    /// The recipe's `verify` limits (from the bundle's provenance), else the defaults, then the overrides.
    static func thresholds(for bundle: BundleReader, hasLLM: Bool, overrides: [Threshold.Metric: Double]) throws -> [Threshold] {
        var out: [Threshold.Metric: Threshold] = [:]
        let q = bundle.provenance["quantize"] as? [String: Any]
        if let recipe = q?["recipe_json"] as? [String: Any], let v = recipe["verify"] as? [String: Any], !v.isEmpty {
            let name = recipe["name"] as? String ?? "?"
            for (k, val) in v {
                guard let m = Threshold.Metric(rawValue: k) else {
                    throw MM1Error(file: bundle.path, "recipe '\(name)' sets verify.\(k), which is not a metric verify knows (\(Threshold.Metric.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                guard let d = (val as? NSNumber)?.doubleValue else { throw MM1Error(file: bundle.path, "recipe '\(name)': verify.\(k) is not a number") }
                out[m] = Threshold(metric: m, limit: d, origin: "recipe \(name)")
            }
        } else if let lowest = bundle.tensors.compactMap({ $0.quant?.spec.bits }).min() {
            // Quantized without limits in its recipe: those of the built-in recipe for the lowest bit width used.
            let bits: Int = lowest <= 4 ? 4 : 8
            let r = try Recipe.builtIn(bits: bits)
            for (k, d) in r.verify {
                guard let m = Threshold.Metric(rawValue: k) else { continue }
                out[m] = Threshold(metric: m, limit: d, origin: "default for int\(bits) (recipe \(r.name))")
            }
        } else {
            for (m, d) in (hasLLM ? floatDefaults : imageEncoderDefaults) { out[m] = Threshold(metric: m, limit: d, origin: "default for float bundles") }
        }
        for (m, d) in overrides { out[m] = Threshold(metric: m, limit: d, origin: "--" + m.rawValue.replacingOccurrences(of: "_", with: "-")) }
        return Threshold.Metric.allCases.compactMap { out[$0] }
    }
}
