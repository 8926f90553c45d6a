import CKernels
import Foundation

/// Moves elements from a source buffer to a destination buffer, walking a view's loops and converting the float
/// encoding on the way (f32/f16/bf16, round-to-nearest-even when narrowing). This is the converter's only inner
/// loop, so the common cases (same dtype, contiguous rows) are memcpy.
public enum ElementCopy {
    /// Copies `loops` (outermost first; an element offset `base + Σ iₖ·strideₖ` in the source) into `dst`
    /// densely, converting `from` → `to`.
    public static func gather(src: UnsafeRawPointer, from: DType, base: Int, loops: [(size: Int, stride: Int)],
                              dst: UnsafeMutableRawPointer, to: DType) {
        let inner = loops.last ?? (size: 1, stride: 1)
        // A transpose (the innermost loop strided, the one around it not): walking it row by row touches one cache
        // line per element; tiles reuse each line for a whole tile's rows. On the 3B AXLearn synth, whose weights
        // are stored [in, out], perf counted half the samples in this function that the row walk took.
        if loops.count >= 2 && inner.stride != 1 && inner.size >= tile && loops[loops.count - 2].size >= tile {
            let plane = loops[loops.count - 2]
            let outer = Array(loops.dropLast(2))
            walk(outer, base: base) { offset, i in
                tiled(src: src + offset * from.byteSize, from: from, rows: plane, cols: inner,
                      dst: dst + i * plane.size * inner.size * to.byteSize, to: to)
            }
            return
        }
        let outer = Array(loops.dropLast())
        walk(outer, base: base) { offset, i in
            row(src: src + offset * from.byteSize, from: from, stride: inner.stride, count: inner.size,
                dst: dst + i * inner.size * to.byteSize, to: to)
        }
    }

    /// Calls `body(offset, i)` for the i-th combination of `loops` (an odometer, outermost first).
    @inline(__always)
    static func walk(_ loops: [(size: Int, stride: Int)], base: Int, _ body: (Int, Int) -> Void) {
        var counters = Array(repeating: 0, count: loops.count)
        let total = loops.reduce(1) { $0 * $1.size }
        var offset = base
        for i in 0..<total {
            body(offset, i)
            var k = loops.count - 1
            while k >= 0 {
                let l = loops[k]
                counters[k] += 1
                offset += l.stride
                if counters[k] < l.size { break }
                offset -= l.stride * l.size
                counters[k] = 0
                k -= 1
            }
        }
    }

    /// Tile edge of the blocked transpose: 32 rows of 2-byte elements fill a 64-byte cache line.
    static let tile = 32

    /// `dst[r][c] = src[r·rows.stride + c·cols.stride]` for a rows.size × cols.size plane, tile by tile (a single
    /// row in one piece), converting `from` → `to`.
    static func tiled(src: UnsafeRawPointer, from: DType, rows: (size: Int, stride: Int), cols: (size: Int, stride: Int),
                      dst: UnsafeMutableRawPointer, to: DType) {
        switch (from, to) {
        case (.f32, .f32): plane(src, UInt32.self, rows, cols, dst) { $0 }
        case (.f16, .f16), (.bf16, .bf16): plane(src, UInt16.self, rows, cols, dst) { $0 }
        case (.bf16, .f32): plane(src, UInt16.self, rows, cols, dst) { UInt32($0) << 16 }
        case (.f16, .f32): plane(src, UInt16.self, rows, cols, dst) { Float(Float16(bitPattern: $0)).bitPattern }
        case (.f32, .f16): plane(src, UInt32.self, rows, cols, dst) { Float16(Float(bitPattern: $0)).bitPattern }
        case (.f32, .bf16): plane(src, UInt32.self, rows, cols, dst) { bf16(fromBits: $0) }
        case (.bf16, .f16): plane(src, UInt16.self, rows, cols, dst) { Float16(Float(bitPattern: UInt32($0) << 16)).bitPattern }
        case (.f16, .bf16): plane(src, UInt16.self, rows, cols, dst) { bf16(fromBits: Float(Float16(bitPattern: $0)).bitPattern) }
        default: preconditionFailure("unsupported conversion \(from) → \(to): the planner admits only f32/f16/bf16")
        }
    }

    @inline(__always)
    static func plane<S, D>(_ src: UnsafeRawPointer, _: S.Type, _ rows: (size: Int, stride: Int), _ cols: (size: Int, stride: Int),
                            _ dst: UnsafeMutableRawPointer, _ f: (S) -> D) {
        let s = src.assumingMemoryBound(to: S.self)
        let d = dst.assumingMemoryBound(to: D.self)
        let colTile = rows.size == 1 ? max(cols.size, 1) : tile
        var r0 = 0
        while r0 < rows.size {
            let r1 = min(r0 + tile, rows.size)
            var c0 = 0
            while c0 < cols.size {
                let c1 = min(c0 + colTile, cols.size)
                for r in r0..<r1 {
                    let srow = s + r * rows.stride
                    let drow = d + r * cols.size
                    var j = c0 * cols.stride
                    for c in c0..<c1 {
                        drow[c] = f(srow[j])
                        j += cols.stride
                    }
                }
                c0 = c1
            }
            r0 = r1
        }
    }

    /// One row: memcpy when nothing changes, else a plane of one row (walked without tiles).
    @inline(__always)
    static func row(src: UnsafeRawPointer, from: DType, stride: Int, count: Int, dst: UnsafeMutableRawPointer, to: DType) {
        if from == to && stride == 1 {
            dst.copyMemory(from: src, byteCount: count * from.byteSize)
            return
        }
        tiled(src: src, from: from, rows: (size: 1, stride: 0), cols: (size: count, stride: stride), dst: dst, to: to)
    }

    /// binary32 bits → bfloat16, round to nearest even (finite inputs; NaN/Inf are refused before this matters).
    @inline(__always)
    public static func bf16(fromBits u: UInt32) -> UInt16 {
        UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
    }

    /// Index of the first element that is NaN or ±Inf in a dense buffer of `dtype`, or nil.
    public static func firstNonFinite(_ p: UnsafeRawPointer, count: Int, dtype: DType) -> Int? {
        let r: Int64
        switch dtype {
        case .f32: r = mm1_first_nonfinite_f32(p, count)
        case .f16: r = mm1_first_nonfinite_f16(p, count)
        case .bf16: r = mm1_first_nonfinite_bf16(p, count)
        default: return nil
        }
        return r < 0 ? nil : Int(r)
    }

    /// The value at `index` of a dense buffer, widened to Float, for error messages.
    public static func value(_ p: UnsafeRawPointer, index: Int, dtype: DType) -> Float {
        switch dtype {
        case .f32: return p.load(fromByteOffset: index * 4, as: Float.self)
        case .f16: return Float(Float16(bitPattern: p.load(fromByteOffset: index * 2, as: UInt16.self)))
        case .bf16: return Float(bitPattern: UInt32(p.load(fromByteOffset: index * 2, as: UInt16.self)) << 16)
        default: return .nan
        }
    }
}
