import Crypto
import Foundation

/// The inputs the quantizer runs through the model: token ids with image tokens, and the images (decoded).
public struct CalibrationSample: Sendable {
    public var id: String
    public var ids: [Int]
    public var images: [RGBImage]
}

/// A calibration set: a probe-format JSONL file (formats/probes.md) given with `--calib`, or the built-in set.
/// The digest identifies exactly what was run: the file's bytes and every image file's bytes, or the built-in
/// set's generator version and parameters.
public struct CalibrationSet: Sendable {
    public var samples: [CalibrationSample]
    /// The file path, or "built-in".
    public var source: String
    public var digest: String
    public var isBuiltIn: Bool { source == "built-in" }

    /// Loads `limit` samples of a probe file after the first `skip`. Text is tokenized with the bundle's tokenizer.
    public static func load(_ path: String, skip: Int = 0, limit: Int?, model: MultimodalModel) throws -> CalibrationSet {
        var probes = Array(try ProbeFile.load(path).dropFirst(skip))
        if let limit { probes = Array(probes.prefix(limit)) }
        var h = SHA256()
        h.update(data: [UInt8](FileManager.default.contents(atPath: path) ?? Data()))
        var samples: [CalibrationSample] = []
        for p in probes {
            var images: [RGBImage] = []
            for img in p.images {
                guard let bytes = FileManager.default.contents(atPath: img) else {
                    throw MM1Error(file: path, "calibration sample '\(p.id)': cannot read image \(img)")
                }
                h.update(data: [UInt8](bytes))
                do { images.append(try ImageDecoder.decode(bytes: [UInt8](bytes), file: img)) } catch let e as MM1Error {
                    throw MM1Error(file: path, "calibration sample '\(p.id)': \(e.description)")
                }
            }
            let ids: [Int]
            if model.llm == nil {
                guard !images.isEmpty else { throw MM1Error(file: path, "calibration sample '\(p.id)' has no images, and the model is an image encoder only") }
                ids = []
            } else {
                do { ids = try model.ids(of: p) } catch let e as MM1Error {
                    throw MM1Error(file: path, "calibration sample '\(p.id)': \(e.description)")
                }
            }
            samples.append(CalibrationSample(id: p.id, ids: ids, images: images))
        }
        return CalibrationSet(samples: samples, source: path, digest: hex(h.finalize()))
    }

    /// Version of the built-in generator: bump it whenever `builtIn` changes what it produces.
    static let builtInVersion = 1

    /// Built-in passages: prose, dialogue, code, numbers and lists, so that the LLM sees varied token statistics.
    static let passages: [String] = [
        "The picture shows a red bicycle leaning against a stone wall. A basket on the handlebars holds bread and flowers, and the shadow of a tree falls across the street in the late afternoon light.",
        "User: What is written on the sign in this image?\nAssistant: The sign says \"Open 9 to 5, closed on Sundays\" in white letters on a blue background.",
        "def moving_average(values, window):\n    total = sum(values[:window])\n    out = [total / window]\n    for i in range(window, len(values)):\n        total += values[i] - values[i - window]\n        out.append(total / window)\n    return out\n",
        "Quarterly revenue rose 12.4% to $3.81 billion, while operating costs fell from 2,140 to 1,985 million. The table lists 2021: 14.2, 2022: 15.9, 2023: 17.3 and 2024: 19.0.",
        "Ingredients: 2 cups flour, 1 teaspoon salt, 3 eggs, 250 ml milk. Whisk the eggs, add the milk, then fold in the flour until the batter is smooth. Rest for 30 minutes before cooking.",
        "Die Katze sitzt auf dem Fenster und beobachtet die Vögel im Garten. Le chat regarde les oiseaux. El gato mira los pájaros desde la ventana.",
        "Question: How many people are standing near the bus stop, and what are they holding? Answer step by step, counting from left to right.",
        "In 1905, Einstein published four papers: on the photoelectric effect, Brownian motion, special relativity and the equivalence of mass and energy, E = mc^2.",
    ]

    /// The built-in set: `count` samples alternating text-only and image + text (two images every fourth sample
    /// when the model has an image encoder), with deterministic synthetic images (gradients, shapes, stripes and
    /// noise) at `imageSize` pixels. Without a tokenizer, ids are drawn from a fixed-seed generator.
    public static func builtIn(model: MultimodalModel, count: Int) throws -> CalibrationSet {
        let hasVision = model.vision != nil && model.llm != nil && model.preprocessor != nil
        let size = model.preprocessor?.imageSize ?? 224
        let vocab = model.llm?.config.vocabSize ?? 1
        let imageToken = model.imageTokenID ?? -1
        var rng = SplitMix64(seed: 1, key: "calibration")
        var samples: [CalibrationSample] = []
        for i in 0..<count {
            let passage = passages[i % passages.count]
            var ids: [Int]
            if let tok = model.tokenizer {
                ids = try tok.encode(passage)
            } else {
                ids = (0..<64).map { _ in Int(rng.next() % UInt64(vocab)) }
                if let it = model.imageTokenID { ids = ids.map { $0 == it ? ($0 + 1) % vocab : $0 } }
            }
            var images: [RGBImage] = []
            if hasVision && i % 2 == 1 {
                let n = i % 4 == 3 ? 2 : 1
                for j in 0..<n { images.append(syntheticImage(kind: i + j, size: size, rng: &rng)) }
                ids = Array(repeating: imageToken, count: n) + ids
            }
            if model.llm == nil {
                images = [syntheticImage(kind: i, size: size, rng: &rng)]
            }
            samples.append(CalibrationSample(id: "builtin-\(i)", ids: ids, images: images))
        }
        let desc = "mm1pack built-in calibration v\(builtInVersion): \(count) samples, images \(size) px"
        return CalibrationSet(samples: samples, source: "built-in", digest: hex(SHA256.hash(data: Array(desc.utf8))))
    }

    /// A deterministic test image: smooth colour gradients with discs, stripes and pixel noise mixed by `kind`,
    /// so that ViT activations cover flat regions, edges and texture.
    static func syntheticImage(kind: Int, size s: Int, rng: inout SplitMix64) -> RGBImage {
        var px = [UInt8](repeating: 0, count: s * s * 3)
        let cx = Double(s) * (0.3 + 0.4 * Double(rng.next() % 100) / 100), cy = Double(s) * (0.3 + 0.4 * Double(rng.next() % 100) / 100)
        let r = Double(s) * (0.1 + 0.2 * Double(rng.next() % 100) / 100)
        let period = 4 + Int(rng.next() % 24)
        for y in 0..<s {
            for x in 0..<s {
                let fx = Double(x) / Double(s), fy = Double(y) / Double(s)
                var c = [255 * fx, 255 * fy, 255 * (1 - fx) * (kind % 2 == 0 ? 1 : fy)]
                let dx = Double(x) - cx, dy = Double(y) - cy
                if dx * dx + dy * dy < r * r { c = [230, 40 + 50 * Double(kind % 4), 30] }
                if kind % 3 == 1 && (x / period + y / period) % 2 == 0 { c = c.map { $0 * 0.35 } }
                if kind % 3 == 2 && (x + 2 * y) / period % 2 == 0 { c[2] = 200 }
                let noise = Double(Int(rng.next() % 41) - 20)
                for ch in 0..<3 { px[(y * s + x) * 3 + ch] = UInt8(max(0, min(255, c[ch] + noise))) }
            }
        }
        return RGBImage(width: s, height: s, pixels: px)
    }
}

// In an extension, so that the memberwise initializer stays available.
extension CalibrationSet {
    /// The set a quantize run uses: `--calib` (its first `--samples` lines) or the built-in set (`--samples`, 8).
    public init(options: QuantizeOptions, model: MultimodalModel) throws {
        if let c = options.calibrationPath {
            self = try CalibrationSet.load(c, limit: options.samples, model: model)
        } else {
            self = try CalibrationSet.builtIn(model: model, count: options.samples ?? 8)
        }
        guard !samples.isEmpty else { throw MM1Error(file: options.calibrationPath, "no calibration samples") }
    }
}
