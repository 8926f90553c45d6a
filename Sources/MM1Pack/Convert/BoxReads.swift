import Foundation

/// Reads the boxes a conversion will need (sources without a memory map: zstd zarr chunks, quantized GGUF tensors)
/// on a thread of their own, one box ahead of the converter, so that decompressing the next box overlaps with
/// converting, hashing and writing the current one. The order of the boxes is fixed before conversion starts; the
/// converter takes them in that order with `next`.
///
/// Memory: `depth` buffers, each as large as the largest box (the converter's row batches bound that).
final class BoxReads: @unchecked Sendable {
    struct Request: Equatable {
        var source: String
        var lower: [Int]
        var upper: [Int]
        var bytes: Int
    }

    private let source: TensorSource
    private let requests: [Request]
    private let depth: Int
    private var buffers: [UnsafeMutableRawBufferPointer]
    /// Per slot: the request index it holds, and the read's error if it failed.
    private var filled: [Int?]
    private var errors: [Error?]
    private var taken = 0
    private var stopped = false
    private var finished = false
    private let cond = NSCondition()

    init(source: TensorSource, requests: [Request], depth: Int = 2) {
        self.source = source
        self.requests = requests
        self.depth = depth
        buffers = Array(repeating: UnsafeMutableRawBufferPointer(start: nil, count: 0), count: depth)
        filled = Array(repeating: nil, count: depth)
        errors = Array(repeating: nil, count: depth)
        guard !requests.isEmpty else {
            finished = true
            return
        }
        let t = Thread { [self] in produce() }
        t.stackSize = 1 << 20
        t.start()
    }

    deinit {
        for b in buffers { b.deallocate() }
    }

    private func produce() {
        for (i, r) in requests.enumerated() {
            let slot = i % depth
            cond.lock()
            // The slot is free once the converter has moved past the request that used it before (i - depth).
            while !stopped && filled[slot] != nil { cond.wait() }
            if stopped {
                finished = true
                cond.broadcast()
                cond.unlock()
                return
            }
            if buffers[slot].count < r.bytes {
                buffers[slot].deallocate()
                buffers[slot] = .allocate(byteCount: max(r.bytes, 64), alignment: 64)
            }
            let into = UnsafeMutableRawBufferPointer(rebasing: buffers[slot][0..<r.bytes])
            cond.unlock()
            var failure: Error?
            do {
                try source.read(r.source, lower: r.lower, upper: r.upper, into: into)
            } catch {
                failure = error
            }
            cond.lock()
            filled[slot] = i
            errors[slot] = failure
            cond.broadcast()
            cond.unlock()
            if failure != nil { break }
        }
        cond.lock()
        finished = true
        cond.broadcast()
        cond.unlock()
    }

    /// The next box, which must be `expected`; valid until the following call to `next` or `stop`. Throws the
    /// read's error.
    func next(_ expected: Request) throws -> UnsafeRawBufferPointer {
        cond.lock()
        defer { cond.unlock() }
        let i = taken
        guard i < requests.count, requests[i] == expected else {
            throw MM1Error(file: source.root, tensor: expected.source, "internal error: box reads out of order")
        }
        // Taking request i frees the slot of request i - 1.
        if i > 0, filled[(i - 1) % depth] == i - 1 { filled[(i - 1) % depth] = nil }
        taken = i + 1
        cond.broadcast()
        let slot = i % depth
        while filled[slot] != i {
            if finished && filled[slot] != i {
                throw MM1Error(file: source.root, tensor: expected.source, "internal error: box read never arrived")
            }
            cond.wait()
        }
        if let e = errors[slot] { throw e }
        return UnsafeRawBufferPointer(rebasing: buffers[slot][0..<expected.bytes])
    }

    /// Stops reading ahead and waits until the reading thread has let go of the source and the buffers.
    func stop() {
        cond.lock()
        stopped = true
        cond.broadcast()
        while !finished { cond.wait() }
        cond.unlock()
    }
}

extension BoxReads.Request {
    /// The box of `source` that the row batch `view` reads (in the stored dtype).
    init(source: String, view: TensorView, dtype: DType) {
        let (lower, upper) = view.sourceBox
        self.init(source: source, lower: lower, upper: upper,
                  bytes: zip(lower, upper).reduce(1) { $0 * ($1.1 - $1.0) } * dtype.byteSize)
    }
}
