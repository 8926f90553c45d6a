import Foundation

/// Resampling of position-embedding grids, matching PyTorch `F.interpolate(mode="bicubic", align_corners=False)`
/// (no antialiasing): source coordinate `scale·(d + 0.5) − 0.5` with `scale = in/out` (not clamped), Keys' cubic
/// convolution kernel with `a = −0.75`, and input indices clamped to the border.
public enum Interpolate {
    public static let cubicA: Float = -0.75

    /// The four weights for taps at offsets −1, 0, +1, +2 from `floor(src)`, with `t = src − floor(src)`.
    public static func cubicWeights(_ t: Float, a: Float = cubicA) -> (Float, Float, Float, Float) {
        // |x| ≤ 1: ((a+2)|x| − (a+3))|x|² + 1;  1 < |x| < 2: ((a|x| − 5a)|x| + 8a)|x| − 4a  (PyTorch's form).
        func near(_ x: Float) -> Float { ((a + 2) * x - (a + 3)) * x * x + 1 }
        func far(_ x: Float) -> Float { ((a * x - 5 * a) * x + 8 * a) * x - 4 * a }
        return (far(t + 1), near(t), near(1 - t), far(2 - t))
    }

    /// For each output index along one axis: the four clamped input indices and their weights.
    static func axis(input n: Int, output m: Int) -> [(idx: (Int, Int, Int, Int), w: (Float, Float, Float, Float))] {
        let scale = Float(n) / Float(m)
        return (0..<m).map { d in
            let src = scale * (Float(d) + 0.5) - 0.5
            let f = src.rounded(.down)
            let i = Int(f)
            func clamp(_ j: Int) -> Int { min(max(j, 0), n - 1) }
            return ((clamp(i - 1), clamp(i), clamp(i + 1), clamp(i + 2)), cubicWeights(src - f))
        }
    }

    /// Bicubic resize of a channels-last grid `[ih·iw, c]` → `[oh·ow, c]`. Same size returns the input unchanged.
    public static func bicubic(_ x: [Float], channels c: Int, inHeight ih: Int, inWidth iw: Int,
                               outHeight oh: Int, outWidth ow: Int) -> [Float] {
        precondition(x.count == ih * iw * c, "bicubic: input shape mismatch")
        if ih == oh && iw == ow { return x }
        let ys = axis(input: ih, output: oh), xs = axis(input: iw, output: ow)
        // Along x first into [ih, ow, c], then along y.
        var tmp = [Float](repeating: 0, count: ih * ow * c)
        var y = [Float](repeating: 0, count: oh * ow * c)
        x.withUnsafeBufferPointer { xp in
            tmp.withUnsafeMutableBufferPointer { tp in
                let xb = xp.baseAddress!, tb = tp.baseAddress!
                for r in 0..<ih {
                    for (ox, e) in xs.enumerated() {
                        let out = tb + (r * ow + ox) * c
                        let p0 = xb + (r * iw + e.idx.0) * c, p1 = xb + (r * iw + e.idx.1) * c
                        let p2 = xb + (r * iw + e.idx.2) * c, p3 = xb + (r * iw + e.idx.3) * c
                        let (w0, w1, w2, w3) = e.w
                        for ch in 0..<c { out[ch] = w0 * p0[ch] + w1 * p1[ch] + w2 * p2[ch] + w3 * p3[ch] }
                    }
                }
            }
        }
        tmp.withUnsafeBufferPointer { tp in
            y.withUnsafeMutableBufferPointer { yp in
                let tb = tp.baseAddress!, yb = yp.baseAddress!
                for (oy, e) in ys.enumerated() {
                    let (w0, w1, w2, w3) = e.w
                    let r0 = tb + e.idx.0 * ow * c, r1 = tb + e.idx.1 * ow * c
                    let r2 = tb + e.idx.2 * ow * c, r3 = tb + e.idx.3 * ow * c
                    let out = yb + oy * ow * c
                    for j in 0..<(ow * c) { out[j] = w0 * r0[j] + w1 * r1[j] + w2 * r2[j] + w3 * r3[j] }
                }
            }
        }
        return y
    }

    /// A ViT position embedding `[N, e]` (row 0 the class token's when `classToken`, then a square grid of
    /// `g × g` rows) resized to a `gh × gw` patch grid, as transformers' `interpolate_pos_encoding` does: the
    /// class-token row is kept aside, the grid is resized bicubically, and the class row is put back in front.
    public static func positionEmbedding(_ pos: [Float], width e: Int, classToken: Bool, toHeight gh: Int, width gw: Int) throws -> [Float] {
        let n = pos.count / e
        let patches = n - (classToken ? 1 : 0)
        let g = Int(Double(patches).squareRoot().rounded())
        guard g * g == patches, pos.count == n * e else {
            throw MM1Error(tensor: "vit.pos_embed", "has \(patches) patch positions, not a square grid")
        }
        if g == gh && g == gw { return pos }
        let head = classToken ? Array(pos[0..<e]) : []
        let grid = Array(pos[(classToken ? e : 0)...])
        return head + bicubic(grid, channels: e, inHeight: g, inWidth: g, outHeight: gh, outWidth: gw)
    }
}
