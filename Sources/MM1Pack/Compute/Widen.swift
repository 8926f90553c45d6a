import CKernels
import Foundation

/// Widening bundle tensors (f32/f16/bf16 in the memory map) to f32 for the forward pass, cheaply:
/// - the conversion is a vectorised C kernel (`mm1_widen_*`), split across the cores;
/// - the f32 copy goes into a reused scratch buffer (`ScratchPool`), so a forward pass does not page-fault
///   gigabytes of freshly allocated memory in every layer;
/// - the source pages are dropped from the process (`madvise(MADV_DONTNEED)`; they stay in the page cache) once
///   widened, so the resident set holds the layer being computed, not every layer the pass has read.
enum Widen {
    /// Widens elements `offset ..< offset + count` of `t` into `dst`.
    static func copy(_ t: BundleTensor, offset: Int = 0, count: Int, into dst: UnsafeMutablePointer<Float>, release: Bool = true) {
        guard count > 0, let dtype = t.dtype else { return }
        precondition(offset >= 0 && offset + count <= t.elementCount, "widen: range outside tensor")
        let es = dtype.byteSize
        let src = t.data.baseAddress! + offset * es
        let kernel: (UnsafeRawPointer, UnsafeMutablePointer<Float>, Int) -> Void
        switch dtype {
        case .bf16: kernel = { s, d, n in mm1_widen_bf16_f32(s, d, n) }
        case .f16: kernel = { s, d, n in mm1_widen_f16_f32(s, d, n) }
        case .f32: kernel = { s, d, n in UnsafeMutableRawPointer(d).copyMemory(from: s, byteCount: n * 4) }
        default:
            ElementCopy.gather(src: t.data.baseAddress!, from: dtype, base: offset, loops: [(count, 1)], dst: dst, to: .f32)
            return
        }
        let box = UnsafeSendableBox((src, dst))
        MM1Parallel.chunks(count, minPerChunk: 1 << 17) { lo, hi in
            kernel(box.value.0 + lo * es, box.value.1 + lo, hi - lo)
        }
        if release { releasePages(src, bytes: count * es) }
    }

    /// A fresh f32 array of elements `offset ..< offset + count` of `t`.
    static func array(_ t: BundleTensor, offset: Int = 0, count: Int? = nil, release: Bool = true) -> [Float] {
        let n = count ?? t.elementCount
        guard n > 0 else { return [] }
        return [Float](unsafeUninitializedCapacity: n) { buf, initialized in
            copy(t, offset: offset, count: n, into: buf.baseAddress!, release: release)
            initialized = n
        }
    }

    /// Runs `body` on elements `offset ..< offset + count` of `t` as f32: aligned f32 tensors in place, others widened
    /// into a pooled scratch buffer that is valid only during `body`.
    static func with<R>(_ t: BundleTensor, offset: Int = 0, count: Int? = nil,
                        _ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        let n = count ?? t.elementCount
        if t.dtype == .f32, n > 0 {
            let p = t.data.baseAddress! + offset * 4
            if Int(bitPattern: p) % MemoryLayout<Float>.alignment == 0 {
                return try body(p.assumingMemoryBound(to: Float.self))
            }
        }
        return try ScratchPool.shared.with(max(1, n)) { buf in
            copy(t, offset: offset, count: n, into: buf)
            return try body(buf)
        }
    }

    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Drops the whole pages inside `[p, p + bytes)` from this process's resident set. The mapping is read-only, so
    /// the next access reads them back (from the page cache); nothing can be lost.
    static func releasePages(_ p: UnsafeRawPointer, bytes: Int) {
        guard bytes >= pageSize else { return }
        let a = Int(bitPattern: p)
        let lo = (a + pageSize - 1) / pageSize * pageSize, hi = (a + bytes) / pageSize * pageSize
        guard hi > lo, let start = UnsafeMutableRawPointer(bitPattern: lo) else { return }
        _ = madvise(start, hi - lo, Int32(MADV_DONTNEED))
    }
}

/// Reusable f32 scratch buffers (grow-only, 64-byte aligned), so that the per-layer weight copies of a forward pass
/// reuse memory that is already mapped instead of faulting in fresh pages every time. Thread-safe; keeps at most
/// `keep` idle buffers (the largest).
final class ScratchPool: @unchecked Sendable {
    static let shared = ScratchPool()
    private let lock = NSLock()
    private var idle: [(p: UnsafeMutablePointer<Float>, capacity: Int)] = []
    private let keep = 2

    func with<R>(_ n: Int, _ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        let b = acquire(n)
        defer { release(b) }
        return try body(b.p)
    }

    private func acquire(_ n: Int) -> (p: UnsafeMutablePointer<Float>, capacity: Int) {
        lock.lock()
        if let i = idle.indices.filter({ idle[$0].capacity >= n }).min(by: { idle[$0].capacity < idle[$1].capacity }) {
            let b = idle.remove(at: i)
            lock.unlock()
            return b
        }
        lock.unlock()
        // Round up to 2 MiB so that the kernel can back the buffer with huge pages (fewer TLB misses in sgemm).
        let bytes = (n * 4 + (2 << 20) - 1) / (2 << 20) * (2 << 20)
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 2 << 20, bytes) == 0, let raw else { fatalError("scratch: out of memory (\(bytes) bytes)") }
        _ = madvise(raw, bytes, 14 /* MADV_HUGEPAGE */)
        return (raw.bindMemory(to: Float.self, capacity: bytes / 4), bytes / 4)
    }

    /// Frees the idle buffers (between phases whose largest tensors differ, so memory follows the current one).
    func trim() {
        lock.lock()
        let drop = idle
        idle.removeAll()
        lock.unlock()
        for d in drop { free(d.p) }
    }

    private func release(_ b: (p: UnsafeMutablePointer<Float>, capacity: Int)) {
        lock.lock()
        idle.append(b)
        idle.sort { $0.capacity > $1.capacity }
        let drop = idle.count > keep ? Array(idle[keep...]) : []
        if idle.count > keep { idle.removeLast(idle.count - keep) }
        lock.unlock()
        for d in drop { free(d.p) }
    }
}
