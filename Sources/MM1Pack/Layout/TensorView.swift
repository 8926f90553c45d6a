/// A lazy view of (part of) one source tensor: which source elements, in which order, make a canonical tensor.
///
/// Every layout transform we need (unstack a layer axis, split fused q/k/v, transpose [in,out] → [out,in], reshape,
/// RoPE interleaved → half permutation) only reorders or selects elements, so a transform never copies: it edits
/// this description. Bytes move once, when the writer walks the view.
///
/// Representation: the view has logical axes (the shape the mapping author sees); each logical axis is a row-major
/// list of physical sub-axes, each a (size, source axis, stride in that source axis) triple. Merging logical axes
/// concatenates their sub-axis lists and splitting one divides its sub-axes, so any reshape is expressible without
/// a copy, and a transpose just permutes logical axes.
public struct TensorView: Sendable, Equatable {
    public struct SubAxis: Sendable, Equatable {
        public var size: Int
        public var sourceAxis: Int
        public var stride: Int  // in elements along `sourceAxis`
    }

    /// Shape of the source tensor the view reads from.
    public let sourceShape: [Int]
    /// Start coordinate in the source, per source axis.
    public private(set) var start: [Int]
    /// Logical axes, each a row-major list of sub-axes.
    public private(set) var axes: [[SubAxis]]

    public init(sourceShape: [Int]) {
        self.sourceShape = sourceShape
        self.start = Array(repeating: 0, count: sourceShape.count)
        self.axes = sourceShape.enumerated().map { [SubAxis(size: $0.element, sourceAxis: $0.offset, stride: 1)] }
    }

    public var shape: [Int] { axes.map { $0.reduce(1) { $0 * $1.size } } }
    public var rank: Int { axes.count }
    public var elementCount: Int { shape.reduce(1, *) }

    // MARK: selections

    /// Fixes logical axis `axis` at `index`, removing the axis.
    public mutating func select(axis: Int, index: Int) throws {
        try checkAxis(axis)
        let n = shape[axis]
        guard index >= 0, index < n else { throw MM1Error("index \(index) out of range for axis \(axis) of size \(n)") }
        // Mixed-radix digits of `index` over the sub-axes, most significant first.
        var rem = index
        let subs = axes[axis]
        for j in stride(from: subs.count - 1, through: 0, by: -1) {
            let digit = rem % subs[j].size
            rem /= subs[j].size
            start[subs[j].sourceAxis] += digit * subs[j].stride
        }
        axes.remove(at: axis)
    }

    /// Keeps `count` consecutive indices from `from` on logical axis `axis`.
    public mutating func slice(axis: Int, from: Int, count: Int) throws {
        try checkAxis(axis)
        let n = shape[axis]
        guard from >= 0, count >= 1, from + count <= n else {
            throw MM1Error("slice \(from)..<\(from + count) out of range for axis \(axis) of size \(n)")
        }
        if count == n { return }
        // Only the leading sub-axis may be cut; the rest must be taken whole.
        var subs = axes[axis]
        let inner = subs.dropFirst().reduce(1) { $0 * $1.size }
        guard from % inner == 0, count % inner == 0 else {
            throw MM1Error("cannot slice axis \(axis) at \(from)..<\(from + count): not aligned to its inner size \(inner)")
        }
        start[subs[0].sourceAxis] += (from / inner) * subs[0].stride
        subs[0].size = count / inner
        axes[axis] = subs
    }

    // MARK: reorderings

    public mutating func transpose(_ perm: [Int]) throws {
        guard perm.count == rank, Set(perm) == Set(0..<rank) else {
            throw MM1Error("transpose permutation \(perm) does not fit a rank-\(rank) tensor")
        }
        axes = perm.map { axes[$0] }
    }

    /// Any reshape with the same element count (row-major semantics, like numpy/torch `reshape`).
    public mutating func reshape(_ newShape: [Int]) throws {
        var target = newShape
        let total = elementCount
        if let neg = target.firstIndex(of: -1) {
            let known = target.enumerated().filter { $0.offset != neg }.reduce(1) { $0 * $1.element }
            guard known > 0, total % known == 0 else { throw MM1Error("cannot reshape \(shape) to \(newShape)") }
            target[neg] = total / known
        }
        guard target.allSatisfy({ $0 >= 1 }), target.reduce(1, *) == total else {
            throw MM1Error("cannot reshape \(shape) to \(newShape)")
        }
        // Flatten to one sub-axis list, drop size-1 sub-axes, then carve the new axes off it.
        var flat = axes.flatMap { $0 }.filter { $0.size != 1 }
        var out: [[SubAxis]] = []
        for size in target {
            var need = size
            var group: [SubAxis] = []
            while need > 1 {
                guard !flat.isEmpty else { throw MM1Error("cannot reshape \(shape) to \(newShape)") }
                let s = flat[0]
                if s.size <= need {
                    guard need % s.size == 0 else { throw MM1Error("cannot reshape \(shape) to \(newShape)") }
                    group.append(s)
                    need /= s.size
                    flat.removeFirst()
                } else {
                    guard s.size % need == 0 else { throw MM1Error("cannot reshape \(shape) to \(newShape)") }
                    let inner = s.size / need
                    group.append(SubAxis(size: need, sourceAxis: s.sourceAxis, stride: s.stride * inner))
                    flat[0] = SubAxis(size: inner, sourceAxis: s.sourceAxis, stride: s.stride)
                    need = 1
                }
            }
            if group.isEmpty { group = [SubAxis(size: 1, sourceAxis: 0, stride: 0)] }
            out.append(group)
        }
        axes = out
    }

    /// Removes a logical axis of size 1.
    public mutating func squeeze(axis: Int) throws {
        try checkAxis(axis)
        guard shape[axis] == 1 else { throw MM1Error("cannot squeeze axis \(axis) of size \(shape[axis])") }
        axes.remove(at: axis)
    }

    /// Rotary embeddings stored with interleaved pairs (x[2j], x[2j+1]) → half-rotation layout (x[j], x[j+Dh/2]),
    /// per head, along logical axis `axis` (of size heads × headDim).
    public mutating func ropeInterleavedToHalf(axis: Int, headDim: Int) throws {
        try checkAxis(axis)
        let n = shape[axis]
        guard headDim >= 2, headDim % 2 == 0, n % headDim == 0 else {
            throw MM1Error("RoPE permutation: axis \(axis) of size \(n) is not a whole number of heads of \(headDim)")
        }
        var pre = shape
        pre.replaceSubrange(axis...axis, with: [n / headDim, headDim / 2, 2])
        try reshape(pre)
        var perm = Array(0..<rank)
        perm.swapAt(axis + 1, axis + 2)
        try transpose(perm)
        var post = shape
        post.replaceSubrange(axis...(axis + 2), with: [n])
        try reshape(post)
    }

    private func checkAxis(_ axis: Int) throws {
        guard axis >= 0, axis < rank else { throw MM1Error("axis \(axis) out of range for rank \(rank) (shape \(shape))") }
    }

    // MARK: walking

    /// The bounding box of source coordinates the view touches: lower (inclusive) and upper (exclusive) per axis.
    public var sourceBox: (lower: [Int], upper: [Int]) {
        var upper = start.map { $0 + 1 }
        for s in axes.joined() where s.size > 1 {
            upper[s.sourceAxis] += (s.size - 1) * s.stride
        }
        return (start, upper)
    }

    /// The walk in element offsets relative to a row-major buffer of `boxShape` whose origin is at source
    /// coordinate `boxOrigin`: a base offset and (size, stride) loops, outermost first, with adjacent loops merged
    /// where the memory is contiguous.
    public func loops(boxOrigin: [Int], boxShape: [Int]) -> (base: Int, loops: [(size: Int, stride: Int)]) {
        var boxStrides = Array(repeating: 1, count: boxShape.count)
        var acc = 1
        for a in stride(from: boxShape.count - 1, through: 0, by: -1) {
            boxStrides[a] = acc
            acc *= boxShape[a]
        }
        var base = 0
        for a in 0..<start.count { base += (start[a] - boxOrigin[a]) * boxStrides[a] }
        var loops: [(size: Int, stride: Int)] = []
        for s in axes.joined() where s.size > 1 {
            let st = s.stride * boxStrides[s.sourceAxis]
            if let last = loops.last, last.stride == st * s.size {
                loops[loops.count - 1] = (last.size * s.size, st)
            } else {
                loops.append((s.size, st))
            }
        }
        return (base, loops)
    }
}
