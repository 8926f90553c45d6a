#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only (`PROT_READ`, `MAP_PRIVATE`). The mapping lives as long as the object.
///
/// `dropPages` hands the pages of a range back to the kernel (`MADV_DONTNEED`): they stay in the page cache but
/// no longer count towards this process's resident memory, which keeps streaming a large checkpoint bounded.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    /// File size in bytes at the time it was mapped.
    public let size: Int
    /// Start of the mapping; nil for an empty file (nothing is mapped).
    private let base: UnsafeMutableRawPointer?

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            throw MM1Error(file: path, "cannot open: \(errnoText())")
        }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 {
            throw MM1Error(file: path, "cannot stat: \(errnoText())")
        }
        if (st.st_mode & S_IFMT) != S_IFREG {
            throw MM1Error(file: path, "not a regular file")
        }
        let size = Int(st.st_size)
        self.size = size
        if size == 0 {
            base = nil
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        if p == MAP_FAILED || p == nil {
            throw MM1Error(file: path, "cannot map \(size) bytes: \(errnoText())")
        }
        base = p
    }

    deinit {
        if let base { munmap(base, size) }
    }

    /// The mapped bytes (empty for an empty file).
    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base.map { UnsafeRawPointer($0) }, count: base == nil ? 0 : size)
    }

    /// Bytes `offset ..< offset + length`; the caller has checked the range.
    public func slice(offset: Int, length: Int) -> UnsafeRawBufferPointer {
        precondition(offset >= 0 && length >= 0 && offset <= size && length <= size - offset)
        guard let base, length > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: UnsafeRawPointer(base + offset), count: length)
    }

    /// Drops the pages that cover `offset ..< offset + length` from the process (`MADV_DONTNEED`). Pages at the
    /// edges that are shared with neighbouring data are dropped too; they are simply faulted in again if read.
    public func dropPages(offset: Int, length: Int) {
        advise(offset: offset, length: length, MADV_DONTNEED)
    }

    /// Hints that `offset ..< offset + length` will be read soon (`MADV_WILLNEED`), so the kernel reads ahead.
    public func willNeed(offset: Int, length: Int) {
        advise(offset: offset, length: length, MADV_WILLNEED)
    }

    private func advise(offset: Int, length: Int, _ advice: Int32) {
        guard let base, length > 0, offset >= 0, offset < size else { return }
        let page = MappedFile.pageSize
        let end = min(size, offset + min(length, size - offset))
        let start = offset - offset % page
        var stop = end + (page - end % page) % page
        let mappedEnd = size + (page - size % page) % page
        if stop > mappedEnd { stop = mappedEnd }
        guard stop > start else { return }
        _ = madvise(base + start, stop - start, advice)
    }

    static let pageSize: Int = {
        let p = sysconf(Int32(_SC_PAGESIZE))
        return p > 0 ? Int(p) : 4096
    }()
}

func errnoText() -> String {
    String(cString: strerror(errno))
}

// MARK: - Box geometry shared by the readers

/// Checks a box request against a tensor and returns its extent per axis.
func checkedBox(
    shape: [Int], lower: [Int], upper: [Int], elementSize: Int, bufferCount: Int
) throws -> [Int] {
    guard lower.count == shape.count, upper.count == shape.count else {
        throw MM1Error(
            "box rank \(lower.count)/\(upper.count) does not match tensor rank \(shape.count) (shape \(shape))")
    }
    var extent = [Int](repeating: 0, count: shape.count)
    for i in 0..<shape.count {
        guard lower[i] >= 0, lower[i] <= upper[i], upper[i] <= shape[i] else {
            throw MM1Error("box \(lower)..<\(upper) is outside shape \(shape) on axis \(i)")
        }
        extent[i] = upper[i] - lower[i]
    }
    guard let n = checkedElementCount(extent) else {
        throw MM1Error("box \(lower)..<\(upper) is too large")
    }
    let (bytes, o) = n.multipliedReportingOverflow(by: elementSize)
    guard !o, bytes == bufferCount else {
        throw MM1Error(
            "output buffer holds \(bufferCount) bytes, box \(lower)..<\(upper) needs \(o ? "too many" : String(bytes))")
    }
    return extent
}

/// Copies an `extent`-shaped block of elements between two row-major arrays: from `src` (shape `srcShape`,
/// starting at element `srcLower`) into `dst` (shape `dstShape`, starting at `dstLower`). Trailing axes along
/// which both arrays are fully covered are merged, so the work is one `memcpy` per contiguous run.
/// The caller guarantees every index is in range.
func copyBlock(
    src: UnsafeRawPointer, srcShape: [Int], srcLower: [Int],
    dst: UnsafeMutableRawPointer, dstShape: [Int], dstLower: [Int],
    extent: [Int], elementSize: Int
) {
    let rank = extent.count
    if rank == 0 {
        memcpy(dst, src, elementSize)
        return
    }
    for e in extent where e == 0 { return }
    // Row-major strides in bytes.
    var srcStride = [Int](repeating: elementSize, count: rank)
    var dstStride = [Int](repeating: elementSize, count: rank)
    var i = rank - 2
    while i >= 0 {
        srcStride[i] = srcStride[i + 1] * srcShape[i + 1]
        dstStride[i] = dstStride[i + 1] * dstShape[i + 1]
        i -= 1
    }
    var srcOffset = 0
    var dstOffset = 0
    for a in 0..<rank {
        srcOffset += srcLower[a] * srcStride[a]
        dstOffset += dstLower[a] * dstStride[a]
    }
    // Merge trailing axes: axis a joins the run when every axis after it is copied whole in both arrays.
    var runBytes = extent[rank - 1] * elementSize
    var outer = rank - 1  // axes 0..<outer are iterated
    while outer > 0 {
        let inner = outer  // axis `inner` is already inside the run
        let wholeInBoth = extent[inner] == srcShape[inner] && extent[inner] == dstShape[inner]
        if !wholeInBoth { break }
        runBytes *= extent[inner - 1]
        outer -= 1
    }
    if outer == 0 {
        memcpy(dst + dstOffset, src + srcOffset, runBytes)
        return
    }
    // Odometer over axes 0..<outer.
    var counter = [Int](repeating: 0, count: outer)
    var s = srcOffset
    var d = dstOffset
    while true {
        memcpy(dst + d, src + s, runBytes)
        var a = outer - 1
        while true {
            counter[a] += 1
            s += srcStride[a]
            d += dstStride[a]
            if counter[a] < extent[a] { break }
            s -= srcStride[a] * extent[a]
            d -= dstStride[a] * extent[a]
            counter[a] = 0
            if a == 0 { return }
            a -= 1
        }
    }
}

/// Fills an `extent`-shaped block of `dst` (shape `dstShape`, starting at `dstLower`) with one repeated element.
func fillBlock(
    dst: UnsafeMutableRawPointer, dstShape: [Int], dstLower: [Int], extent: [Int], element: [UInt8]
) {
    let es = element.count
    let rank = extent.count
    let allZero = element.allSatisfy { $0 == 0 }
    func fillRun(_ p: UnsafeMutableRawPointer, _ count: Int) {
        if allZero {
            memset(p, 0, count * es)
            return
        }
        element.withUnsafeBytes { e in
            for k in 0..<count { memcpy(p + k * es, e.baseAddress!, es) }
        }
    }
    if rank == 0 {
        fillRun(dst, 1)
        return
    }
    for e in extent where e == 0 { return }
    var stride = [Int](repeating: es, count: rank)
    var i = rank - 2
    while i >= 0 {
        stride[i] = stride[i + 1] * dstShape[i + 1]
        i -= 1
    }
    var offset = 0
    for a in 0..<rank { offset += dstLower[a] * stride[a] }
    var runCount = extent[rank - 1]
    var outer = rank - 1
    while outer > 0, extent[outer] == dstShape[outer] {
        runCount *= extent[outer - 1]
        outer -= 1
    }
    if outer == 0 {
        fillRun(dst + offset, runCount)
        return
    }
    var counter = [Int](repeating: 0, count: outer)
    var d = offset
    while true {
        fillRun(dst + d, runCount)
        var a = outer - 1
        while true {
            counter[a] += 1
            d += stride[a]
            if counter[a] < extent[a] { break }
            d -= stride[a] * extent[a]
            counter[a] = 0
            if a == 0 { return }
            a -= 1
        }
    }
}
