import Foundation

/// The bundle's `image_processor` section (formats/canonical.md) and the pixel pipeline it
/// describes, matching transformers' `CLIPImageProcessor` (slow, PIL-based) for
/// `shortest_edge_crop` and open_clip's `resize_mode="squash"` for `squash`.
public struct ImagePreprocessor: Equatable, Sendable {
    public enum ResizeMode: String, Sendable {
        /// Resize to image_size × image_size ignoring the aspect ratio.
        case squash
        /// Resize so the shorter side is image_size (aspect kept), then center-crop image_size².
        case shortestEdgeCrop = "shortest_edge_crop"
    }

    public var imageSize: Int
    public var mean: [Float]
    public var std: [Float]
    public var resize: ResizeMode
    public var rescaleFactor: Float

    public init(imageSize: Int, mean: [Float], std: [Float], resize: ResizeMode, rescaleFactor: Float = 1.0 / 255.0) {
        self.imageSize = imageSize
        self.mean = mean
        self.std = std
        self.resize = resize
        self.rescaleFactor = rescaleFactor
    }

    /// Reads the `image_processor` object of a bundle config (a JSON dictionary as parsed by
    /// JSONSerialization). `file` names the source in errors.
    public init(json: [String: Any], file: String? = nil) throws {
        func num(_ v: Any?) -> Double? { (v as? NSNumber)?.doubleValue }
        guard let size = num(json["image_size"]), size >= 1, size == size.rounded(), size <= 65536 else {
            throw MM1Error(file: file, "image_processor.image_size is missing or not a positive integer")
        }
        guard let m = json["image_mean"] as? [Any], m.count == 3, let mean = Optional(m.compactMap(num)), mean.count == 3 else {
            throw MM1Error(file: file, "image_processor.image_mean must be 3 numbers")
        }
        guard let s = json["image_std"] as? [Any], s.count == 3, let std = Optional(s.compactMap(num)), std.count == 3,
              std.allSatisfy({ $0 != 0 }) else {
            throw MM1Error(file: file, "image_processor.image_std must be 3 non-zero numbers")
        }
        guard let r = json["resize"] as? String, let mode = ResizeMode(rawValue: r) else {
            throw MM1Error(file: file, "image_processor.resize must be \"squash\" or \"shortest_edge_crop\"")
        }
        let rescale = json["rescale_factor"] == nil ? 1.0 / 255.0 : num(json["rescale_factor"])
        guard let rescale else { throw MM1Error(file: file, "image_processor.rescale_factor is not a number") }
        self.init(imageSize: Int(size), mean: mean.map(Float.init), std: std.map(Float.init), resize: mode,
                  rescaleFactor: Float(rescale))
    }

    /// Output size (height, width) of transformers' `get_resize_output_image_size` with
    /// `{"shortest_edge": size}` and `default_to_square=False`: the short side becomes `size`,
    /// the long side `int(size * long / short)` (truncated).
    public static func shortestEdgeSize(height: Int, width: Int, size: Int) -> (height: Int, width: Int) {
        let short = min(height, width), long = max(height, width)
        let newLong = Int((Double(size * long) / Double(short)).rounded(.towardZero))
        return width <= height ? (newLong, size) : (size, newLong)
    }

    /// Resize (and crop) to image_size × image_size as 8-bit RGB, before normalisation.
    public func resized(_ img: RGBImage) -> RGBImage {
        let s = imageSize
        switch resize {
        case .squash:
            return ImageResize.bicubic(img, width: s, height: s)
        case .shortestEdgeCrop:
            let (h, w) = Self.shortestEdgeSize(height: img.height, width: img.width, size: s)
            let r = ImageResize.bicubic(img, width: w, height: h)
            // transformers center_crop: top = (H - crop) // 2, left = (W - crop) // 2 (H, W ≥ crop here).
            return r.crop(x: (w - s) / 2, y: (h - s) / 2, width: s, height: s)
        }
    }

    /// Rescale and normalise an image already of model size into CHW float32 [3, H, W]:
    /// `(p · rescale_factor − mean[c]) / std[c]`.
    public func normalize(_ img: RGBImage) -> [Float] {
        let hw = img.width * img.height
        var out = [Float](repeating: 0, count: 3 * hw)
        for c in 0..<3 {
            let m = mean[c], sd = std[c]
            for i in 0..<hw { out[c * hw + i] = (Float(img.pixels[i * 3 + c]) * rescaleFactor - m) / sd }
        }
        return out
    }

    /// Full pipeline: resize/crop, rescale, normalise → CHW float32 of shape [3, image_size, image_size].
    public func callAsFunction(_ img: RGBImage) -> [Float] { normalize(resized(img)) }
}
