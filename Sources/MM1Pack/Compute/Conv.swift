import Foundation

/// Convolutions and pooling for the image encoder and the connector.
///
/// Feature maps are kept **channels-last**: a map of `height × width` pixels and `c` channels is a row-major
/// `[height·width, c]` buffer, pixel `(y, x)` at row `y·width + x`. That is the token layout of a ViT, so a 1×1
/// convolution is `Linear.forward` (one sgemm), and a LayerNorm over channels (timm `LayerNorm2d`) is
/// `Norm.layerNorm` over rows. Weights keep the PyTorch orientation `[out, in/groups, kh, kw]`.
public enum Conv {
    /// Patch embedding: a convolution with kernel = stride = `p`, no padding, on one image `[c, h, w]` (CHW, as
    /// PyTorch). Rows and columns that do not fill a whole patch are ignored, as PyTorch does. Returns the
    /// channels-last output `[gh·gw, out]` (im2col + one sgemm).
    public static func patchEmbed(_ image: [Float], channels c: Int, height h: Int, width w: Int, patch p: Int,
                                  weight: [Float], out e: Int, bias: [Float]?) -> (tokens: [Float], gh: Int, gw: Int) {
        precondition(image.count == c * h * w, "patchEmbed: image shape mismatch")
        precondition(weight.count == e * c * p * p, "patchEmbed: weight shape mismatch")
        let gh = h / p, gw = w / p
        let k = c * p * p
        var cols = [Float](repeating: 0, count: gh * gw * k)
        image.withUnsafeBufferPointer { src in
            cols.withUnsafeMutableBufferPointer { dst in
                for gy in 0..<gh {
                    for gx in 0..<gw {
                        let row = (gy * gw + gx) * k
                        for ch in 0..<c {
                            for ky in 0..<p {
                                let s = (ch * h + gy * p + ky) * w + gx * p
                                let d = row + (ch * p + ky) * p
                                for kx in 0..<p { dst[d + kx] = src[s + kx] }
                            }
                        }
                    }
                }
            }
        }
        let y = Linear.forward(cols, rows: gh * gw, weight: weight, out: e, in: k, bias: bias)
        return (y, gh, gw)
    }

    /// 1×1 convolution on a channels-last map `[pixels, cin]` with weight `[cout, cin, 1, 1]`: one sgemm.
    public static func pointwise(_ x: [Float], pixels: Int, weight: [Float], out: Int, in cin: Int, bias: [Float]? = nil) -> [Float] {
        Linear.forward(x, rows: pixels, weight: weight, out: out, in: cin, bias: bias)
    }

    /// Depthwise convolution (groups = channels), stride 1, zero padding `padding`, on a channels-last map
    /// `[h·w, c]`. `weight` is PyTorch's `[c, 1, k, k]`. The output is `[oh·ow, c]` with
    /// `oh = h + 2·padding − k + 1` (same size for k = 3, padding = 1). The inner loop runs over channels.
    public static func depthwise(_ x: [Float], height h: Int, width w: Int, channels c: Int, weight: [Float], kernel k: Int,
                                 padding pad: Int, bias: [Float]? = nil) -> (output: [Float], height: Int, width: Int) {
        precondition(x.count == h * w * c, "depthwise: input shape mismatch")
        precondition(weight.count == c * k * k, "depthwise: weight shape mismatch")
        let oh = h + 2 * pad - k + 1, ow = w + 2 * pad - k + 1
        precondition(oh > 0 && ow > 0, "depthwise: kernel larger than the padded input")
        // Taps first, channels last, so that the inner loop reads contiguous weights.
        var wt = [Float](repeating: 0, count: k * k * c)
        for ch in 0..<c { for t in 0..<(k * k) { wt[t * c + ch] = weight[ch * k * k + t] } }
        var y = [Float](repeating: 0, count: oh * ow * c)
        x.withUnsafeBufferPointer { xp in
            wt.withUnsafeBufferPointer { wp in
                y.withUnsafeMutableBufferPointer { yp in
                    let xb = xp.baseAddress!, wb = wp.baseAddress!, yb = yp.baseAddress!
                    for oy in 0..<oh {
                        for ox in 0..<ow {
                            let out = yb + (oy * ow + ox) * c
                            if let bias { for ch in 0..<c { out[ch] = bias[ch] } }
                            for ky in 0..<k {
                                let iy = oy + ky - pad
                                if iy < 0 || iy >= h { continue }
                                for kx in 0..<k {
                                    let ix = ox + kx - pad
                                    if ix < 0 || ix >= w { continue }
                                    let inp = xb + (iy * w + ix) * c
                                    let tap = wb + (ky * k + kx) * c
                                    for ch in 0..<c { out[ch] += tap[ch] * inp[ch] }
                                }
                            }
                        }
                    }
                }
            }
        }
        return (y, oh, ow)
    }

    /// PyTorch `AdaptiveAvgPool` bins: output `i` averages inputs `floor(i·in/out) ..< ceil((i+1)·in/out)`.
    /// The windows are uneven and may overlap when `out` does not divide `in` (7 → 3, 27 → 12).
    public static func adaptiveBins(input n: Int, output m: Int) -> [Range<Int>] {
        precondition(n > 0 && m > 0, "adaptiveBins: empty size")
        return (0..<m).map { i in (i * n) / m ..< ((i + 1) * n + m - 1) / m }
    }

    /// `AdaptiveAvgPool2d((oh, ow))` on a channels-last map `[h·w, c]` → `[oh·ow, c]`.
    public static func adaptiveAvgPool(_ x: [Float], height h: Int, width w: Int, channels c: Int,
                                       outHeight oh: Int, outWidth ow: Int) -> [Float] {
        precondition(x.count == h * w * c, "adaptiveAvgPool: input shape mismatch")
        let rows = adaptiveBins(input: h, output: oh), cols = adaptiveBins(input: w, output: ow)
        var y = [Float](repeating: 0, count: oh * ow * c)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                let xb = xp.baseAddress!, yb = yp.baseAddress!
                for (oy, ry) in rows.enumerated() {
                    for (ox, rx) in cols.enumerated() {
                        let out = yb + (oy * ow + ox) * c
                        for iy in ry { for ix in rx {
                            let inp = xb + (iy * w + ix) * c
                            for ch in 0..<c { out[ch] += inp[ch] }
                        } }
                        let inv = 1 / Float(ry.count * rx.count)
                        for ch in 0..<c { out[ch] *= inv }
                    }
                }
            }
        }
        return y
    }

    /// x += y elementwise (residual adds).
    public static func accumulate(_ x: inout [Float], _ y: [Float]) {
        precondition(x.count == y.count, "accumulate: length mismatch")
        x.withUnsafeMutableBufferPointer { xp in
            y.withUnsafeBufferPointer { yp in
                for i in 0..<xp.count { xp[i] += yp[i] }
            }
        }
    }
}
