import Foundation

/// The whole model as a user runs it: image files are decoded and preprocessed per the bundle's
/// `image_processor`, encoded by the ViT, turned into token embeddings by the connector, and spliced into the
/// token sequence in place of each image token (formats/probes.md), which the language model then reads.
public final class MultimodalModel {
    public let weights: ModelWeights
    public let llm: LanguageModel?
    public let vision: VisionEncoder?
    public let connector: Connector?
    public let preprocessor: ImagePreprocessor?
    public let imageTokenID: Int?
    public let tokenizer: BPETokenizer?
    /// MM1.5 dynamic image splitting (config `image_split`), nil when images are used whole.
    public let imageSplit: ImageSplitConfig?

    public init(weights: ModelWeights) throws {
        self.weights = weights
        let cfg = weights.config
        llm = cfg["llm"] is [String: Any] ? try LanguageModel(weights: weights) : nil
        vision = cfg["vision"] is [String: Any] ? try VisionEncoder(weights: weights) : nil
        connector = cfg["connector"] is [String: Any] ? try Connector(weights: weights) : nil
        if let p = cfg["image_processor"] as? [String: Any] {
            preprocessor = try ImagePreprocessor(json: p, file: weights.bundle.path)
        } else if let v = cfg["vision"] as? [String: Any], let size = v["image_size"] as? Int {
            // No processor config: CLIP's defaults at the encoder's native size.
            preprocessor = ImagePreprocessor(imageSize: size, mean: [0.48145466, 0.4578275, 0.40821073],
                                             std: [0.26862954, 0.26130258, 0.27577711], resize: .shortestEdgeCrop)
        } else {
            preprocessor = nil
        }
        imageTokenID = cfg["image_token_id"] as? Int
        imageSplit = try (cfg["image_split"] as? [String: Any]).map { try ImageSplitConfig($0, file: weights.bundle.path) }
        if weights.bundle.section(named: "tokenizer.json") != nil {
            tokenizer = try BPETokenizer(json: try weights.bundle.sectionData(named: "tokenizer.json"),
                                         file: weights.bundle.path + ":tokenizer.json")
        } else {
            tokenizer = nil
        }
    }

    public convenience init(path: String) throws {
        try self.init(weights: ModelWeights(path: path))
    }

    /// An id marks an image when it equals the config's image token or is negative (Honeybee's convention).
    public func isImageToken(_ id: Int) -> Bool { id < 0 || id == imageTokenID }

    /// The pixel tensor [3, S, S] the ViT receives for an image file.
    public func pixels(imageAt path: String) throws -> [Float] {
        guard let preprocessor else { throw MM1Error(file: weights.bundle.path, "this model has no image encoder") }
        return preprocessor(try ImageDecoder.decode(path: path))
    }

    /// The ViT features handed to the connector: [tokens, E]. `size` is the pixel tensor's side (default: the
    /// preprocessor's); other sizes use interpolated position embeddings.
    public func visionFeatures(pixels: [Float], size: Int? = nil, hooks: (any ForwardHooks)? = nil) throws -> (data: [Float], rows: Int) {
        guard let vision, let preprocessor else { throw MM1Error(file: weights.bundle.path, "this model has no image encoder") }
        let f = try vision.forward(pixels: pixels, size: size ?? preprocessor.imageSize, hooks: hooks)
        return (f.features, f.tokens)
    }

    /// An image's token embeddings in the language model: [Q, D].
    public func imageEmbeddings(pixels: [Float], size: Int? = nil, hooks: (any ForwardHooks)? = nil) throws -> (data: [Float], rows: Int) {
        guard let connector else { throw MM1Error(file: weights.bundle.path, "this model has no connector") }
        let f = try visionFeatures(pixels: pixels, size: size, hooks: hooks)
        let out = try connector.forward(features: f.data, tokens: f.rows)
        hooks.report(.named("conn.output"), out, [out.count / connector.outputSize, connector.outputSize])
        return (out, out.count / connector.outputSize)
    }

    /// Token ids of a probe: given, or encoded with the bundle's tokenizer.
    public func ids(of probe: Probe) throws -> [Int] {
        if let ids = probe.inputIDs { return ids }
        guard let text = probe.text else { throw MM1Error(tensor: nil, "probe '\(probe.id)' has no input_ids or text") }
        guard let tokenizer else {
            throw MM1Error(file: weights.bundle.path, "probe '\(probe.id)' gives text, but the bundle carries no tokenizer.json; give input_ids")
        }
        return try tokenizer.encode(text)
    }

    /// What one image token stands for: the image itself, or (MM1.5 splitting) its indicator text and tiles.
    public enum ImagePiece {
        case pixels([Float], size: Int)
        case text([Int])
    }

    /// The pieces of each image of a sample, in order: whole images, or split per `image_split`.
    public func imagePieces(_ paths: [String]) throws -> [[ImagePiece]] {
        try imagePieces(images: paths.map { try ImageDecoder.decode(path: $0) })
    }

    /// `imagePieces` for images already decoded (the quantizer's built-in calibration images are made in memory).
    public func imagePieces(images: [RGBImage]) throws -> [[ImagePiece]] {
        guard let preprocessor else {
            if images.isEmpty { return [] }
            throw MM1Error(file: weights.bundle.path, "this model has no image encoder")
        }
        guard let split = imageSplit, !images.isEmpty else {
            return images.map { [.pixels(preprocessor($0), size: preprocessor.imageSize)] }
        }
        let sample = try ImageSplitting.prepareSample(images, tileSize: split.tileSize, nMin: split.nMin, nMax: split.nMax,
                                                      indicator: split.indicator, padColor: split.padColor)
        return try sample.segments.map { segs in
            try segs.compactMap { seg -> ImagePiece? in
                switch seg {
                case .image(let j):
                    // Tiles and the overview are already tile-sized: normalise them without resizing.
                    return .pixels(preprocessor.normalize(sample.images[j]), size: split.tileSize)
                case .text(let t):
                    if t.isEmpty { return nil }
                    guard let tokenizer else {
                        throw MM1Error(file: weights.bundle.path, "image_split uses '\(split.indicator.rawValue)' indicators, which are text, but the bundle carries no tokenizer.json")
                    }
                    return .text(try tokenizer.encode(t))
                }
            }
        }
    }

    /// The expanded input sequence: text rows from the embedding table, each image token replaced in place by
    /// its pieces (indicator text rows and image rows).
    public func inputEmbeddings(ids: [Int], images: [[ImagePiece]], hooks: (any ForwardHooks)? = nil) throws -> (data: [Float], rows: Int) {
        try inputEmbeddings(ids: ids, images: images) { p, size in try imageEmbeddings(pixels: p, size: size, hooks: hooks) }
    }

    /// `inputEmbeddings` with the image rows supplied by `encode`, called once per image piece in sequence order
    /// (the quantizer passes rows it computed block by block).
    public func inputEmbeddings(ids: [Int], images: [[ImagePiece]],
                                encode: ([Float], Int) throws -> (data: [Float], rows: Int)) throws -> (data: [Float], rows: Int) {
        guard let llm else { throw MM1Error(file: weights.bundle.path, "this model has no language model") }
        let slots = ids.enumerated().filter { isImageToken($0.element) }.map(\.offset)
        guard slots.count == images.count else {
            throw MM1Error(file: weights.bundle.path, "the input has \(slots.count) image token(s) but \(images.count) image(s)")
        }
        let d = llm.config.hiddenSize
        var out: [Float] = []
        var rows = 0
        var next = 0
        var textRun: [Int] = []
        func flushText() throws {
            guard !textRun.isEmpty else { return }
            out += try llm.embed(textRun)
            rows += textRun.count
            textRun.removeAll()
        }
        for (i, id) in ids.enumerated() {
            guard next < slots.count && slots[next] == i else {
                textRun.append(id)
                continue
            }
            for piece in images[next] {
                switch piece {
                case .text(let t):
                    textRun += t
                case .pixels(let p, let size):
                    try flushText()
                    let img = try encode(p, size)
                    guard img.data.count == img.rows * d else {
                        throw MM1Error(file: weights.bundle.path, "the connector's output width does not match the language model's \(d)")
                    }
                    out += img.data
                    rows += img.rows
                }
            }
            next += 1
        }
        try flushText()
        return (out, rows)
    }

    /// What `mm1pack logits` writes for a probe: the logits [T, V] of the expanded sequence, or for an
    /// image-encoder-only bundle the ViT features of each image, stacked [n_images · tokens, E].
    public func run(_ probe: Probe, hooks: (any ForwardHooks)? = nil) throws -> (data: [Float], shape: [Int]) {
        guard let llm else {
            let pixels = try probe.images.map { try self.pixels(imageAt: $0) }
            var all: [Float] = []
            var tokens = 0
            for p in pixels {
                let f = try visionFeatures(pixels: p, hooks: hooks)
                all += f.data
                tokens = f.rows
            }
            guard !pixels.isEmpty else { throw MM1Error("probe '\(probe.id)' has no images for an image-encoder-only model") }
            return (all, [pixels.count, tokens, all.count / max(1, pixels.count * tokens)])
        }
        let x = try inputEmbeddings(ids: try ids(of: probe), images: try imagePieces(probe.images), hooks: hooks)
        let logits = try llm.forward(embeddings: x.data, count: x.rows, hooks: hooks)
        return (logits, [x.rows, logits.count / max(1, x.rows)])
    }
}

/// MM1.5 dynamic image splitting settings (canonical config `image_split`, formats/canonical.md).
public struct ImageSplitConfig: Sendable, Equatable {
    public var tileSize: Int
    public var nMin: Int
    public var nMax: Int
    public var indicator: ImageSplitting.PositionIndicator
    public var padColor: (UInt8, UInt8, UInt8)

    public init(_ d: [String: Any], file: String) throws {
        func int(_ k: String) throws -> Int {
            guard let v = d[k] as? Int, v >= 1 else { throw MM1Error(file: file, "config.image_split.\(k) must be a positive integer") }
            return v
        }
        tileSize = try int("tile_size")
        nMin = try int("n_min")
        nMax = try int("n_max")
        guard nMin <= nMax else { throw MM1Error(file: file, "config.image_split: n_min \(nMin) > n_max \(nMax)") }
        let ind = (d["indicator"] as? String) ?? "none"
        guard let i = ImageSplitting.PositionIndicator(rawValue: ind) else {
            throw MM1Error(file: file, "config.image_split.indicator '\(ind)' is not none, seps or index")
        }
        indicator = i
        if let c = d["pad_color"] as? [Int] {
            guard c.count == 3, c.allSatisfy({ (0...255).contains($0) }) else {
                throw MM1Error(file: file, "config.image_split.pad_color must be three integers 0…255")
            }
            padColor = (UInt8(c[0]), UInt8(c[1]), UInt8(c[2]))
        } else {
            padColor = (0, 0, 0)
        }
    }

    public static func == (a: ImageSplitConfig, b: ImageSplitConfig) -> Bool {
        a.tileSize == b.tileSize && a.nMin == b.nMin && a.nMax == b.nMax && a.indicator == b.indicator
            && a.padColor == b.padColor
    }
}
