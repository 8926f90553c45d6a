import Foundation

/// `mm1pack bench quantize`: quantizes a bundle once and reports wall time, throughput and peak RSS against two
/// baselines measured in the same process: the fp forward pass over the same calibration inputs (what the
/// calibration pass cannot be faster than, since it runs every block at least twice), and the memory bound of
/// formats/quantization.md §3.3 (twice the largest block in f32 plus the calibration data held at once).
public enum QuantizeBench {
    public struct Result: Sendable {
        public var quantizeSeconds: Double
        public var forwardSeconds: Double
        public var params: Int
        public var quantizedParams: Int
        public var peakRSSBytes: Int
        public var largestBlockBytes: Int
        public var peakCalibrationBytes: Int
        public var bundleBytes: Int
        public var sourceBytes: Int
        public var bitsPerWeight: Double
        public var samples: Int
        public var tokens: Int
        public var images: Int
        public var blasCore: String
        public var phases: [String: Double]
        public var peakAt: String

        public var boundBytes: Int { 2 * largestBlockBytes + peakCalibrationBytes }
    }

    public static func run(bundle: String, output: String, options: QuantizeOptions, log: (String) -> Void) throws -> Result {
        let weights = try ModelWeights(path: bundle)
        let model = try MultimodalModel(weights: weights)
        let calibration = try CalibrationSet(options: options, model: model)
        // Baseline: the fp model over the same inputs, one forward pass each (sequences cut as the quantizer cuts them).
        let t0 = Date()
        for s in calibration.samples {
            let pieces = try model.imagePieces(images: s.images)
            var x = try model.inputEmbeddings(ids: s.ids, images: pieces)
            if let llm = model.llm {
                if x.rows > options.seqLength { x.data = Array(x.data[0..<(options.seqLength * llm.config.hiddenSize)]); x.rows = options.seqLength }
                _ = try llm.forward(embeddings: x.data, count: x.rows)
            }
        }
        let forward = Date().timeIntervalSince(t0)
        log(String(format: "fp forward over %d calibration samples: %.2f s", calibration.samples.count, forward))
        weights.overrides.removeAll()
        let q = try Quantizer(weights: ModelWeights(path: bundle), options: options)
        let t1 = Date()
        let report = try q.run(output: output, calibration: calibration)
        let seconds = Date().timeIntervalSince(t1)
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let attrs = { (p: String) in (try? FileManager.default.attributesOfItem(atPath: p)[.size] as? Int) ?? 0 }
        return Result(quantizeSeconds: seconds, forwardSeconds: forward,
                      params: report.overall.params, quantizedParams: report.layers.reduce(0) { $0 + $1.params },
                      peakRSSBytes: Int(usage.ru_maxrss) * 1024, largestBlockBytes: q.largestBlockBytes,
                      peakCalibrationBytes: q.peakCalibrationBytes, bundleBytes: attrs(output), sourceBytes: attrs(bundle),
                      bitsPerWeight: report.overall.bitsPerWeight, samples: report.calibration?.samples ?? 0,
                      tokens: report.calibration?.tokens ?? 0, images: report.calibration?.images ?? 0,
                      blasCore: Linear.blasCore, phases: report.phaseSeconds, peakAt: String(format: "%.0f MB after %@", Double(report.peakResident.bytes) / 1e6, report.peakResident.at))
    }

    public static func summary(_ r: Result) -> String {
        func mb(_ b: Int) -> String { String(format: "%.0f MB", Double(b) / 1e6) }
        return """
        quantize: \(String(format: "%.1f", r.quantizeSeconds)) s for \(r.params) parameters (\(r.quantizedParams) quantized), \
        \(String(format: "%.2f", Double(r.quantizedParams) / r.quantizeSeconds / 1e6)) M quantized parameters/s, \
        \(String(format: "%.1f", r.quantizeSeconds / max(1e-9, r.forwardSeconds)))× the fp forward pass over the same \
        \(r.samples) samples (\(r.tokens) tokens, \(r.images) images; forward \(String(format: "%.1f", r.forwardSeconds)) s)
        bundle: \(mb(r.sourceBytes)) → \(mb(r.bundleBytes)), \(String(format: "%.3f", r.bitsPerWeight)) bits/weight
        peak RSS: \(mb(r.peakRSSBytes)); bound 2 × largest block (\(mb(r.largestBlockBytes)) f32) + calibration data \
        (\(mb(r.peakCalibrationBytes))) = \(mb(r.boundBytes)): \(String(format: "%.2f", Double(r.peakRSSBytes) / Double(max(1, r.boundBytes))))× the bound; \
        f32 model \(mb(r.params * 4)); largest resident set sampled between phases: \(r.peakAt)
        time by phase: \(r.phases.sorted { $0.value > $1.value }.map { String(format: "%@ %.1f s", $0.key, $0.value) }.joined(separator: ", "))
        BLAS core: \(r.blasCore)
        """
    }
}
