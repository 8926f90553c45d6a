import Foundation

/// An 8-bit RGB image, rows top to bottom, pixels interleaved: `pixels[(y * width + x) * 3 + c]`
/// (shape [H, W, 3]).
public struct RGBImage: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height * 3, "RGBImage size mismatch")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// A solid image.
    public init(width: Int, height: Int, fill: (UInt8, UInt8, UInt8) = (0, 0, 0)) {
        self.width = width
        self.height = height
        var p = [UInt8](repeating: 0, count: width * height * 3)
        for i in 0..<(width * height) { p[3 * i] = fill.0; p[3 * i + 1] = fill.1; p[3 * i + 2] = fill.2 }
        pixels = p
    }

    public func pixel(x: Int, y: Int) -> (UInt8, UInt8, UInt8) {
        let i = (y * width + x) * 3
        return (pixels[i], pixels[i + 1], pixels[i + 2])
    }

    /// The rectangle [x, x+w) × [y, y+h); parts outside the image are filled with `fill`.
    public func crop(x: Int, y: Int, width w: Int, height h: Int, fill: (UInt8, UInt8, UInt8) = (0, 0, 0)) -> RGBImage {
        var out = RGBImage(width: w, height: h, fill: fill)
        let x0 = max(0, x), x1 = min(width, x + w)
        guard x1 > x0 else { return out }
        for oy in 0..<h {
            let sy = y + oy
            guard sy >= 0 && sy < height else { continue }
            let src = (sy * width + x0) * 3
            let dst = (oy * w + (x0 - x)) * 3
            let n = (x1 - x0) * 3
            out.pixels.withUnsafeMutableBufferPointer { d in
                pixels.withUnsafeBufferPointer { s in
                    for k in 0..<n { d[dst + k] = s[src + k] }
                }
            }
        }
        return out
    }
}

/// Limits applied before any pixel buffer is allocated.
public struct ImageDecodeLimits: Sendable {
    /// Largest accepted width × height (default 64 Mpixel).
    public var maxPixels: Int
    /// Largest accepted width or height.
    public var maxDimension: Int

    public init(maxPixels: Int = 64 * 1024 * 1024, maxDimension: Int = 1 << 24) {
        self.maxPixels = maxPixels
        self.maxDimension = maxDimension
    }

    func check(width: Int, height: Int, format: String) throws {
        guard width > 0, height > 0 else { throw MM1Error("\(format) header declares an empty image (\(width)×\(height))") }
        guard width <= maxDimension, height <= maxDimension else {
            throw MM1Error("\(format) image is \(width)×\(height), a side exceeds the limit of \(maxDimension)")
        }
        let (pixels, overflow) = width.multipliedReportingOverflow(by: height)
        guard !overflow, pixels <= maxPixels else {
            throw MM1Error("\(format) image is \(width)×\(height) pixels, more than the limit of \(maxPixels) pixels (decompression bomb?)")
        }
    }
}

/// Format detection and decoding entry points.
public enum ImageDecoder {
    /// Reads and decodes a PNG or JPEG file (detected from its first bytes, not its name).
    public static func decode(path: String, limits: ImageDecodeLimits = ImageDecodeLimits()) throws -> RGBImage {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MM1Error(file: path, "cannot read the image file")
        }
        return try decode(bytes: [UInt8](data), file: path, limits: limits)
    }

    /// Decodes PNG or JPEG bytes; `file` names the source in errors.
    public static func decode(bytes: [UInt8], file: String, limits: ImageDecodeLimits = ImageDecodeLimits()) throws -> RGBImage {
        do {
            if bytes.starts(with: PNGDecoder.signature) {
                return try PNGDecoder.decode(bytes, limits: limits)
            }
            if bytes.count >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff {
                return try JPEGDecoder.decode(bytes, limits: limits)
            }
            throw MM1Error("is neither a PNG nor a JPEG file (unrecognised signature)")
        } catch let e as MM1Error {
            throw e.inFile(file)
        }
    }
}
