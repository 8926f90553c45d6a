import Foundation

/// Probe sets for verification. Probes are held out from calibration: the built-in ones use passages and image
/// seeds the built-in calibration set never uses.
public enum VerifyProbes {
    static let builtInVersion = 1

    static let passages: [String] = [
        "Describe what you see: a wooden table by a window, three cups of tea, a folded newspaper and a cat asleep on a chair in the sun.",
        "User: Read the numbers on the two receipts and add them up.\nAssistant: The first receipt totals 18.40 and the second 7.95, so together they come to 26.35.",
        "Compare both pictures. Which one was taken at night, and how can you tell from the lights, the sky and the shadows?",
    ]

    /// Three probes when the model has a language model: text only, one image, two images (text only without an
    /// image encoder); three single-image probes for an image-encoder-only model.
    public static func builtIn(model: MultimodalModel) throws -> [CalibrationSample] {
        let hasVision = model.vision != nil && model.preprocessor != nil
        let size = model.preprocessor?.imageSize ?? 224
        var rng = SplitMix64(seed: 7, key: "verify")
        var out: [CalibrationSample] = []
        guard let llm = model.llm else {
            for i in 0..<3 {
                out.append(CalibrationSample(id: "verify-image-\(i)", ids: [],
                                             images: [CalibrationSet.syntheticImage(kind: 5 + i, size: size, rng: &rng)]))
            }
            return out
        }
        let vocab = llm.config.vocabSize
        let names = ["verify-text", "verify-one-image", "verify-two-images"]
        for i in 0..<3 {
            var ids: [Int]
            if let tok = model.tokenizer {
                ids = try tok.encode(passages[i])
            } else {
                ids = (0..<48).map { _ in Int(rng.next() % UInt64(vocab)) }
                if let it = model.imageTokenID { ids = ids.map { $0 == it ? ($0 + 1) % vocab : $0 } }
            }
            var images: [RGBImage] = []
            if hasVision, model.connector != nil, i > 0, let it = model.imageTokenID ?? Optional(-1) {
                for j in 0..<i { images.append(CalibrationSet.syntheticImage(kind: 5 + i + j, size: size, rng: &rng)) }
                ids = Array(repeating: it, count: i) + ids
            }
            out.append(CalibrationSample(id: names[i], ids: ids, images: images))
        }
        return out
    }

    /// The probes of a probe-format file (formats/probes.md), images decoded and text tokenized.
    public static func load(_ path: String, model: MultimodalModel) throws -> [CalibrationSample] {
        try CalibrationSet.load(path, limit: nil, model: model).samples
    }
}
