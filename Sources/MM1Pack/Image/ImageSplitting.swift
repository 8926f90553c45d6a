import Foundation

/// MM1.5 dynamic image splitting (arXiv 2409.20566 §3; formats/probes.md "Dynamic image splitting").
///
/// **Grid selection.** Candidates are all (n_h, n_w) with n_min ≤ n_h·n_w ≤ n_max (n_h rows,
/// n_w columns). For a grid, the image (h × w) is scaled, aspect kept, to fit the grid canvas
/// (n_h·r) × (n_w·r): s = min(n_h·r/h, n_w·r/w), giving h_g × w_g = (h·s) × (w·s).
/// - *cover*: if some grid has n_h·r ≥ h and n_w·r ≥ w, choose among those the grid with the
///   least padding n_h·n_w·r² − h_g·w_g (s may be > 1: the image is enlarged to touch the canvas);
/// - *downscale*: otherwise every grid shrinks the image; choose the grid with the largest fitted
///   area h_g·w_g (least resolution loss).
/// Ties go to the fewest tiles n_h·n_w, then to the fewest rows n_h. Areas are compared exactly
/// (rational arithmetic), so e.g. 399×401 and 401×399 are treated symmetrically.
///
/// **Images produced** (`split`): the image is resized with Pillow bicubic to h_g × w_g (the side
/// that touches the canvas is exactly n·r, the other is rounded to nearest, at least 1), placed at
/// the top-left of an (n_h·r) × (n_w·r) canvas filled with `padColor`, and cut into r × r tiles in
/// row-major order. The overview image (the whole image resized to r × r, squashed) comes after
/// the tiles; there is none for a 1×1 grid.
///
/// **Position indicators** (text to tokenize, placed *before* the image they name; "[img]" below is
/// where an image's tokens go), for image number k (0-based) split into a 2×3 grid:
/// - `none`:  `[img][img][img][img][img][img][img]`
/// - `seps`:  `[img],[img],[img]<n>[img],[img],[img]:[img]` — "," between the tiles of a row,
///   "<n>" between rows, ":" before the overview (no ":" when there is no overview);
/// - `index`: `(k,1,1)[img](k,1,2)[img](k,1,3)[img](k,2,1)[img](k,2,2)[img](k,2,3)[img](k,0,0)[img]`
///   — row i and column j from 1, the overview is (k,0,0) (so (0,0,0) for the first image).
/// When a sample has 3 or more images nothing is split: each image becomes its overview alone
/// (r × r), with no indicator text.
public enum ImageSplitting {
    public struct Grid: Equatable, Hashable, Sendable, CustomStringConvertible {
        public var rows: Int   // n_h
        public var cols: Int   // n_w
        public init(rows: Int, cols: Int) { self.rows = rows; self.cols = cols }
        public var count: Int { rows * cols }
        public var description: String { "\(rows)×\(cols)" }
    }

    public enum Regime: String, Sendable { case cover, downscale }

    public struct Choice: Equatable, Sendable {
        public var grid: Grid
        public var regime: Regime
        /// n_h·n_w·r² − h_g·w_g for `cover`, h_g·w_g for `downscale` (as a Double, for reports).
        public var score: Double
    }

    public enum PositionIndicator: String, Sendable { case none, seps, index }

    /// All grids with nMin ≤ rows·cols ≤ nMax, by rows then cols.
    public static func candidates(nMin: Int, nMax: Int) -> [Grid] {
        var g: [Grid] = []
        guard nMax >= 1 else { return g }
        for rows in 1...nMax {
            for cols in 1...nMax where rows * cols >= nMin && rows * cols <= nMax {
                g.append(Grid(rows: rows, cols: cols))
            }
        }
        return g
    }

    /// A non-negative rational n/d (d > 0), compared exactly.
    struct Ratio {
        var n: UInt64, d: UInt64
        static func < (a: Ratio, b: Ratio) -> Bool {
            let l = a.n.multipliedFullWidth(by: b.d), r = b.n.multipliedFullWidth(by: a.d)
            return l.high < r.high || (l.high == r.high && l.low < r.low)
        }
        static func == (a: Ratio, b: Ratio) -> Bool {
            let l = a.n.multipliedFullWidth(by: b.d), r = b.n.multipliedFullWidth(by: a.d)
            return l.high == r.high && l.low == r.low
        }
        var double: Double { Double(n) / Double(d) }
    }

    /// Fitted area h_g·w_g of an h × w image scaled into the grid canvas, exactly.
    static func fittedArea(height h: Int, width w: Int, grid g: Grid, r: Int) -> Ratio {
        let gh = UInt64(g.rows * r), gw = UInt64(g.cols * r)
        // s = min(gh/h, gw/w); gh/h ≤ gw/w ⇔ gh·w ≤ gw·h
        if gh * UInt64(w) <= gw * UInt64(h) {
            return Ratio(n: gh * gh * UInt64(w), d: UInt64(h))      // (gh)² · w / h
        } else {
            return Ratio(n: gw * gw * UInt64(h), d: UInt64(w))      // (gw)² · h / w
        }
    }

    /// Chooses the grid for an image of `height` × `width` pixels with tile side `r`.
    public static func selectGrid(height: Int, width: Int, tileSize r: Int, nMin: Int, nMax: Int) throws -> Choice {
        guard height > 0, width > 0, r > 0 else { throw MM1Error("image splitting needs positive sizes (image \(height)×\(width), tile \(r))") }
        guard nMin >= 1, nMax >= nMin, nMax <= 256, r <= 4096, height <= 1 << 20, width <= 1 << 20 else {
            throw MM1Error("image splitting needs 1 ≤ n_min ≤ n_max ≤ 256, r ≤ 4096 and sides ≤ 2^20 (got n_min \(nMin), n_max \(nMax), r \(r), image \(height)×\(width))")
        }
        let all = candidates(nMin: nMin, nMax: nMax)
        guard !all.isEmpty else { throw MM1Error("no grid has between \(nMin) and \(nMax) tiles") }
        let covering = all.filter { $0.rows * r >= height && $0.cols * r >= width }
        func better(_ a: Grid, _ b: Grid) -> Bool { a.count != b.count ? a.count < b.count : a.rows < b.rows }
        if !covering.isEmpty {
            var best: (Grid, Ratio)? = nil
            for g in covering {
                let f = fittedArea(height: height, width: width, grid: g, r: r)
                let canvas = UInt64(g.count * r * r)
                let pad = Ratio(n: canvas * f.d - f.n, d: f.d)
                if let b = best, !(pad < b.1 || (pad == b.1 && better(g, b.0))) { continue }
                best = (g, pad)
            }
            return Choice(grid: best!.0, regime: .cover, score: best!.1.double)
        }
        var best: (Grid, Ratio)? = nil
        for g in all {
            let f = fittedArea(height: height, width: width, grid: g, r: r)
            if let b = best, !(b.1 < f || (f == b.1 && better(g, b.0))) { continue }
            best = (g, f)
        }
        return Choice(grid: best!.0, regime: .downscale, score: best!.1.double)
    }

    /// The result of splitting one image.
    public struct Split: Sendable {
        public var grid: Grid
        /// r × r tiles, row-major.
        public var tiles: [RGBImage]
        /// The whole image at r × r; nil for a 1×1 grid.
        public var overview: RGBImage?
        /// Tiles then the overview: the order the model sees them.
        public var images: [RGBImage] { tiles + (overview.map { [$0] } ?? []) }
    }

    /// Splits `img` per the selected grid (see the type documentation).
    public static func split(_ img: RGBImage, tileSize r: Int, nMin: Int, nMax: Int,
                             padColor: (UInt8, UInt8, UInt8) = (0, 0, 0)) throws -> Split {
        let choice = try selectGrid(height: img.height, width: img.width, tileSize: r, nMin: nMin, nMax: nMax)
        let g = choice.grid
        let gh = g.rows * r, gw = g.cols * r
        var hg: Int, wg: Int
        if gh * img.width <= gw * img.height {
            hg = gh
            wg = Int((Double(img.width) * Double(gh) / Double(img.height)).rounded(.toNearestOrAwayFromZero))
        } else {
            wg = gw
            hg = Int((Double(img.height) * Double(gw) / Double(img.width)).rounded(.toNearestOrAwayFromZero))
        }
        hg = min(max(hg, 1), gh); wg = min(max(wg, 1), gw)
        let fitted = ImageResize.bicubic(img, width: wg, height: hg)
        var tiles: [RGBImage] = []
        for i in 0..<g.rows {
            for j in 0..<g.cols {
                tiles.append(fitted.crop(x: j * r, y: i * r, width: r, height: r, fill: padColor))
            }
        }
        // 1×1: the single tile is the image fitted into r × r, and there is no overview.
        let overview = g.count == 1 ? nil : ImageResize.bicubic(img, width: r, height: r)
        return Split(grid: g, tiles: tiles, overview: overview)
    }

    /// One piece of the interleaved text/image sequence of a sample.
    public enum Segment: Equatable, Sendable {
        case text(String)
        /// Index into the flat image list returned alongside.
        case image(Int)
    }

    /// Indicator text and image order for one image number `k` split into `grid`
    /// (`hasOverview` false for a 1×1 grid). Image indices start at `firstImage`.
    public static func segments(k: Int, grid: Grid, hasOverview: Bool, indicator: PositionIndicator,
                                firstImage: Int = 0) -> [Segment] {
        var s: [Segment] = []
        var n = firstImage
        for i in 1...grid.rows {
            for j in 1...grid.cols {
                switch indicator {
                case .none: break
                case .seps:
                    if j > 1 { s.append(.text(",")) } else if i > 1 { s.append(.text("<n>")) }
                case .index: s.append(.text("(\(k),\(i),\(j))"))
                }
                s.append(.image(n)); n += 1
            }
        }
        if hasOverview {
            switch indicator {
            case .none: break
            case .seps: s.append(.text(":"))
            case .index: s.append(.text("(\(k),0,0)"))
            }
            s.append(.image(n))
        }
        return s
    }

    /// Prepares all images of one sample: splits each (fewer than 3 images) or resizes each to
    /// r × r (3 or more images), and returns the flat image list with the segment sequence.
    public static func prepareSample(_ images: [RGBImage], tileSize r: Int, nMin: Int, nMax: Int,
                                     indicator: PositionIndicator,
                                     padColor: (UInt8, UInt8, UInt8) = (0, 0, 0)) throws -> (images: [RGBImage], segments: [[Segment]]) {
        var flat: [RGBImage] = []
        var segs: [[Segment]] = []
        if images.count >= 3 {
            for img in images {
                segs.append([.image(flat.count)])
                flat.append(ImageResize.bicubic(img, width: r, height: r))
            }
            return (flat, segs)
        }
        for (k, img) in images.enumerated() {
            let sp = try split(img, tileSize: r, nMin: nMin, nMax: nMax, padColor: padColor)
            segs.append(segments(k: k, grid: sp.grid, hasOverview: sp.overview != nil, indicator: indicator,
                                 firstImage: flat.count))
            flat.append(contentsOf: sp.images)
        }
        return (flat, segs)
    }
}
