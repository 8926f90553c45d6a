import Foundation

/// Bicubic resampling that reproduces Pillow's `Image.resize((w, h), Image.BICUBIC)` on 8-bit
/// images (Pillow ≥ 7 convolution resampler, no `reducing_gap`).
///
/// The algorithm (written from the description of Pillow's resampler):
/// - separable: a horizontal pass over all source rows, into an 8-bit temporary
///   image, then a vertical pass; a pass is skipped when that dimension does not change;
/// - per output coordinate: scale = in/out, filterscale = max(scale, 1) (antialiasing when
///   downscaling), support = 2·filterscale, centre = (i + 0.5)·scale, taps
///   [trunc(centre − support + 0.5), trunc(centre + support + 0.5)) clamped to the image, weight
///   = cubic((j − centre + 0.5)/filterscale) with a = −0.5, normalised to sum 1;
/// - weights become fixed point with 22 fractional bits (rounded half away from zero), the sum
///   starts at 2^21 (rounding), and the result is shifted right by 22 and clipped to 0...255.
public enum ImageResize {
    static let precisionBits = 22

    static func cubic(_ xIn: Double) -> Double {
        let a = -0.5
        let x = abs(xIn)
        if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
        if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
        return 0
    }

    /// Fixed-point taps for one axis: for each output index, first source index, tap count, and
    /// `ksize` weights starting at `index * ksize`.
    struct Coeffs {
        var ksize: Int
        var start: [Int]
        var count: [Int]
        var weights: [Int32]
    }

    static func coefficients(inSize: Int, outSize: Int) -> Coeffs {
        let scale = Double(inSize) / Double(outSize)
        let filterscale = max(scale, 1.0)
        let support = 2.0 * filterscale
        let ksize = Int(support.rounded(.up)) * 2 + 1
        var c = Coeffs(ksize: ksize, start: [Int](repeating: 0, count: outSize),
                       count: [Int](repeating: 0, count: outSize),
                       weights: [Int32](repeating: 0, count: outSize * ksize))
        var w = [Double](repeating: 0, count: ksize)
        let inv = 1.0 / filterscale
        for i in 0..<outSize {
            let center = (Double(i) + 0.5) * scale
            var lo = Int(center - support + 0.5)   // C cast: truncation toward zero
            if lo < 0 { lo = 0 }
            var hi = Int(center + support + 0.5)
            if hi > inSize { hi = inSize }
            let n = hi - lo
            var total = 0.0
            for k in 0..<n {
                let v = cubic((Double(k + lo) - center + 0.5) * inv)
                w[k] = v; total += v
            }
            for k in 0..<n {
                let v = total != 0 ? w[k] / total : w[k]
                let f = v * Double(1 << precisionBits)
                c.weights[i * ksize + k] = Int32(f < 0 ? (f - 0.5).rounded(.towardZero) : (f + 0.5).rounded(.towardZero))
            }
            c.start[i] = lo; c.count[i] = n
        }
        return c
    }

    @inline(__always) static func clip8(_ v: Int) -> UInt8 {
        if v >= (1 << precisionBits) << 8 { return 255 }
        if v <= 0 { return 0 }
        return UInt8(v >> precisionBits)
    }

    /// Resizes to `width` × `height` with Pillow's bicubic filter. Same size returns a copy.
    public static func bicubic(_ img: RGBImage, width: Int, height: Int) -> RGBImage {
        precondition(width > 0 && height > 0, "resize to an empty image")
        if width == img.width && height == img.height { return img }
        var src = img
        if width != img.width {
            // Horizontal pass (over all rows: the rows a vertical pass would skip are never read).
            let c = coefficients(inSize: img.width, outSize: width)
            var out = [UInt8](repeating: 0, count: width * img.height * 3)
            let inW = img.width
            img.pixels.withUnsafeBufferPointer { s in
                out.withUnsafeMutableBufferPointer { o in
                    c.weights.withUnsafeBufferPointer { wt in
                        for y in 0..<img.height {
                            let rowIn = y * inW * 3, rowOut = y * width * 3
                            for x in 0..<width {
                                let lo = c.start[x], n = c.count[x], wb = x * c.ksize
                                var s0 = 1 << (precisionBits - 1), s1 = s0, s2 = s0
                                for k in 0..<n {
                                    let w = Int(wt[wb + k])
                                    let p = rowIn + (lo + k) * 3
                                    s0 += Int(s[p]) * w; s1 += Int(s[p + 1]) * w; s2 += Int(s[p + 2]) * w
                                }
                                o[rowOut + x * 3] = clip8(s0); o[rowOut + x * 3 + 1] = clip8(s1); o[rowOut + x * 3 + 2] = clip8(s2)
                            }
                        }
                    }
                }
            }
            src = RGBImage(width: width, height: img.height, pixels: out)
        }
        if height != img.height {
            let c = coefficients(inSize: img.height, outSize: height)
            var out = [UInt8](repeating: 0, count: width * height * 3)
            let rowLen = width * 3
            src.pixels.withUnsafeBufferPointer { s in
                out.withUnsafeMutableBufferPointer { o in
                    c.weights.withUnsafeBufferPointer { wt in
                        for y in 0..<height {
                            let lo = c.start[y], n = c.count[y], wb = y * c.ksize
                            for i in 0..<rowLen {
                                var acc = 1 << (precisionBits - 1)
                                for k in 0..<n { acc += Int(s[(lo + k) * rowLen + i]) * Int(wt[wb + k]) }
                                o[y * rowLen + i] = clip8(acc)
                            }
                        }
                    }
                }
            }
            src = RGBImage(width: width, height: height, pixels: out)
        }
        return src
    }
}
