import CSystemShims
import Crypto
import Foundation

/// Writes a bundle (formats/bundle.md) in one streaming pass.
///
/// The layout (offsets, lengths) is fixed before any data is written, and digests are fixed-width hex, so the
/// header's length is known up front: data goes straight to its final offset in a temporary file, digests are
/// computed on the way, the header is written last, and the file is renamed into place only when complete.
public final class BundleWriter {
    public struct TensorEntry {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var length: Int
        public var quant: [String: Any]?

        public init(name: String, dtype: String, shape: [Int], length: Int, quant: [String: Any]? = nil) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.length = length
            self.quant = quant
        }
    }

    public struct Section {
        public var name: String
        public var raw: [UInt8]

        public init(name: String, raw: [UInt8]) {
            self.name = name
            self.raw = raw
        }
    }

    public static let magic: [UInt8] = [0x4D, 0x4D, 0x31, 0x50, 0x41, 0x43, 0x4B, 0x00]
    public static let formatVersion: UInt32 = 1
    public static let prefixSize = 96
    public static let alignment = 64
    public static let dataAlignment = 4096

    let finalPath: String
    let tempPath: String
    let fd: Int32
    let entries: [TensorEntry]
    let offsets: [Int]
    let sectionRecords: [(name: String, encoding: String, stored: [UInt8], rawLength: Int, sha: String, offset: Int)]
    var headerBase: [String: Any]
    let headerLength: Int
    public let dataOffset: Int
    let dataLength: Int

    private var current = -1
    private var written = 0  // bytes of the current tensor so far
    private var hasher = SHA256()
    private var digests: [String] = []
    private var buffer: UnsafeMutableRawPointer
    private var buffered = 0
    private var filePos: Int
    private let bufferSize = 8 << 20
    private var finished = false

    /// - Parameters:
    ///   - header: `config`, `provenance`, `metadata` (the writer adds `format`, `format_version`, `alignment`,
    ///     `tensors`, `sections`).
    public init(path: String, tensors: [TensorEntry], sections: [Section], config: [String: Any],
                provenance: [String: Any], metadata: [String: Any]) throws {
        finalPath = path
        let dir = (path as NSString).deletingLastPathComponent
        let base = (path as NSString).lastPathComponent
        tempPath = (dir.isEmpty ? "." : dir) + "/.\(base).partial-\(getpid())"
        entries = tensors

        var names = Set<String>()
        var offs: [Int] = []
        var pos = 0
        for t in tensors {
            guard names.insert(t.name).inserted else { throw MM1Error(file: path, tensor: t.name, "listed twice") }
            pos = BundleWriter.align(pos, BundleWriter.alignment)
            offs.append(pos)
            pos += t.length
        }
        offsets = offs
        var secs: [(name: String, encoding: String, stored: [UInt8], rawLength: Int, sha: String, offset: Int)] = []
        for s in sections {
            pos = BundleWriter.align(pos, BundleWriter.alignment)
            let compressed = try Zstd.compress(s.raw, level: 19)
            let useZstd = compressed.count < s.raw.count
            let stored = useZstd ? compressed : s.raw
            secs.append((s.name, useZstd ? "zstd" : "raw", stored, s.raw.count, hex(SHA256.hash(data: s.raw)), pos))
            pos += stored.count
        }
        sectionRecords = secs
        dataLength = pos
        headerBase = ["format": "mm1pack", "format_version": Int(BundleWriter.formatVersion),
                      "alignment": BundleWriter.alignment, "config": config, "provenance": provenance,
                      "metadata": metadata]
        let placeholder = String(repeating: "0", count: 64)
        let probe = try BundleWriter.headerBytes(headerBase, entries: tensors, offsets: offs,
                                                 digests: Array(repeating: placeholder, count: tensors.count),
                                                 sections: secs)
        headerLength = probe.count
        guard headerLength <= 64 << 20 else { throw MM1Error(file: path, "header would be \(headerLength) bytes, over the 64 MiB limit") }
        dataOffset = BundleWriter.align(BundleWriter.prefixSize + headerLength, BundleWriter.dataAlignment)
        filePos = dataOffset

        fd = open(tempPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw MM1Error(file: tempPath, "cannot create: \(String(cString: strerror(errno)))") }
        TemporaryFiles.add(tempPath)
        // Test hook: holds the temporary file open so that a test can interrupt the command while it exists.
        if let s = ProcessInfo.processInfo.environment["MM1PACK_TEST_HOLD_OUTPUT_SECONDS"], let t = Double(s) {
            Thread.sleep(forTimeInterval: t)
        }
        buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 4096)
    }

    deinit {
        _ = background.wait()
        buffer.deallocate()
        if sourceFD >= 0 { close(sourceFD) }
        if !finished {
            close(fd)
            unlink(tempPath)
        }
        TemporaryFiles.remove(tempPath)
    }

    /// Abandons the output: the temporary file is removed and nothing appears at the final path.
    public func abort() {
        // Background hashers read the caller's mapping: they must be done before the caller may unmap it.
        _ = background.wait()
        guard !finished else { return }
        finished = true
        close(fd)
        unlink(tempPath)
        TemporaryFiles.remove(tempPath)
    }

    static func align(_ x: Int, _ a: Int) -> Int { (x + a - 1) / a * a }

    /// Starts the next tensor in table order.
    public func beginTensor(_ name: String) throws {
        try endTensorIfNeeded()
        current += 1
        guard current < entries.count, entries[current].name == name else {
            throw MM1Error(file: finalPath, tensor: name, "written out of table order")
        }
        try zeros(offsets[current] - (filePos + buffered - dataOffset))
        written = 0
        hasher = SHA256()
        hasherUsed = false
    }

    /// Appends bytes to the current tensor.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard current >= 0 else { throw MM1Error(file: finalPath, "data written before any tensor") }
        written += bytes.count
        guard written <= entries[current].length else {
            throw MM1Error(file: finalPath, tensor: entries[current].name, "more bytes than its declared length \(entries[current].length)")
        }
        try hashPendingNow()
        hasherUsed = true
        if bytes.count >= BundleWriter.parallelHashBytes {
            try hashing(bytes) { try append(bytes) }
        } else {
            hasher.update(bufferPointer: bytes)
            try append(bytes)
        }
    }

    /// Appends a tensor's bytes that are stored unchanged in a source file: the kernel copies them file to file
    /// (copy_file_range, as `cp` does), and the tensor's digest is computed from `bytes`, the same bytes seen
    /// through the source's memory map, by a background thread once the tensor is complete (one thread per core,
    /// several tensors at once), while the next tensors are copied. `bytes` must therefore stay mapped until
    /// `tensorDigests`, `finish` or `abort` returns.
    ///
    /// Where the kernel cannot copy (copy_file_range refuses to cross file systems since Linux 5.19), the background
    /// thread also writes the bytes, each piece right after hashing it while it is still in the CPU cache, to the
    /// place reserved for it in the file; the tensors are then written by several threads at once. (sendfile would
    /// cross file systems, but perf counted 2.8 times the CPU time in its in-kernel copy as in a plain write.)
    ///
    /// `check` validates the bytes (the converter refuses NaN and Inf) in the same pass over them as the digest, on
    /// the background thread for large tensors; its error is then thrown by `tensorDigests` or `finish`, and the
    /// output never appears.
    public func write(copying range: FileRange, bytes: UnsafeRawBufferPointer, check: ByteCheck? = nil) throws {
        guard range.length == bytes.count else { throw MM1Error(file: range.path, "internal error: range and bytes differ in length") }
        guard current >= 0 else { throw MM1Error(file: finalPath, "data written before any tensor") }
        guard written + bytes.count <= entries[current].length else {
            throw MM1Error(file: finalPath, tensor: entries[current].name, "more bytes than its declared length \(entries[current].length)")
        }
        if bytes.count < BundleWriter.parallelHashBytes {
            try check?(bytes)
            try write(bytes)
            return
        }
        try flush()
        // The bytes stay readable (they are the source's mapping, which the caller keeps until `finish`), so the
        // digest is computed later, on another core, while the next tensors are copied.
        if try kernelCopy(range) {
            pending.append(Chunk(bytes: bytes, check: check, writeAt: nil))
        } else {
            pending.append(Chunk(bytes: bytes, check: check, writeAt: filePos))
            filePos += bytes.count
        }
        written += bytes.count
    }

    /// Validates a chunk of a tensor's bytes; throws to refuse the tensor.
    public typealias ByteCheck = @Sendable (UnsafeRawBufferPointer) throws -> Void

    /// Bytes of the current tensor kept for hashing, with the check still to run on them, and the file offset to
    /// write them at when the kernel did not copy them.
    struct Chunk: @unchecked Sendable {
        let bytes: UnsafeRawBufferPointer
        let check: ByteCheck?
        let writeAt: Int?
    }

    // MARK: digests computed in the background

    /// Chunks of the current tensor that arrived through `write(copying:)` and are not hashed yet.
    private var pending: [Chunk] = []
    /// Whether the current tensor's hasher has seen bytes (then pending chunks must be hashed in order, here).
    private var hasherUsed = false
    private lazy var background = BackgroundHashes(slots: ProcessInfo.processInfo.activeProcessorCount, fd: fd, path: tempPath)

    /// Checks and hashes the pending chunks on this thread, in order (before bytes that are not kept).
    private func hashPendingNow() throws {
        guard !pending.isEmpty else { return }
        let chunks = pending
        pending.removeAll()
        hasherUsed = true
        for c in chunks {
            try c.check?(c.bytes)
            hasher.update(bufferPointer: c.bytes)
            if let at = c.writeAt { try pwriteAll(c.bytes, at: at) }
        }
    }

    /// Waits for every background digest and puts it in the table; throws the first tensor's check failure.
    private func waitForDigests() throws {
        let (done, failure) = background.wait()
        for (i, d) in done { digests[i] = d }
        if let failure { throw failure }
    }

    /// Tensors hashed (and written, for chunks with `writeAt`) on other threads: at most `slots` at once (the
    /// submitter waits for a free one, which bounds the work in flight), each digest kept under its table index
    /// until `wait`.
    private final class BackgroundHashes: @unchecked Sendable {
        private let group = DispatchGroup()
        private let slots: DispatchSemaphore
        private let lock = NSLock()
        private var digests: [Int: String] = [:]
        private var failures: [Int: Error] = [:]
        private let fd: Int32
        private let path: String

        init(slots n: Int, fd: Int32, path: String) {
            slots = DispatchSemaphore(value: max(1, n))
            self.fd = fd
            self.path = path
        }

        /// `chunks` view a file mapping the caller keeps until `wait` returns. Each chunk is checked, hashed and
        /// written if it has to be, piece by piece in one pass, then its pages are dropped from the resident set.
        func submit(tensor index: Int, chunks: [Chunk]) {
            slots.wait()
            group.enter()
            DispatchQueue.global(qos: .userInitiated).async { [self] in
                var h = SHA256()
                var failure: Error?
                for c in chunks {
                    // Check and hash a few MB at a time, so that the bytes are read from memory once for both.
                    var at = 0, unwritten = 0
                    while at < c.bytes.count && failure == nil {
                        let piece = UnsafeRawBufferPointer(rebasing: c.bytes[at..<min(c.bytes.count, at + BundleWriter.checkPieceBytes)])
                        do { try c.check?(piece) } catch { failure = error }
                        h.update(bufferPointer: piece)
                        at += piece.count
                        if let w = c.writeAt, failure == nil, at - unwritten >= BundleWriter.writePieceBytes || at == c.bytes.count {
                            let done = UnsafeRawBufferPointer(rebasing: c.bytes[unwritten..<at])
                            do { try BundleWriter.pwriteAll(fd, path, done, at: w + unwritten) } catch { failure = error }
                            unwritten = at
                        }
                    }
                    if let w = c.writeAt, failure == nil { _ = mm1_start_writeback(fd, Int64(w), Int64(c.bytes.count)) }
                    // The caller may already have dropped these pages; hashing faulted them back in. Drop them
                    // again, or the whole source would end up resident.
                    if let p = c.bytes.baseAddress { Widen.releasePages(p, bytes: c.bytes.count) }
                }
                let d = hex(h.finalize())
                lock.lock()
                digests[index] = d
                if let failure { failures[index] = failure }
                lock.unlock()
                slots.signal()
                group.leave()
            }
        }

        /// Waits for every submitted tensor; returns (and forgets) their digests, and the check failure of the
        /// first failing tensor in table order.
        func wait() -> (digests: [Int: String], failure: Error?) {
            group.wait()
            lock.lock()
            defer { digests.removeAll(); failures.removeAll(); lock.unlock() }
            return (digests, failures.keys.min().map { failures[$0]! })
        }
    }

    /// Whether copy_file_range works between the source and the output; tests clear it to take the other path.
    var kernelCopyWorks = true
    private var sourceFD: Int32 = -1
    private var sourcePath = ""

    /// Copies `range` to the current file position with copy_file_range; false when the kernel cannot do it here
    /// (nothing was copied then, and later calls do not try again).
    private func kernelCopy(_ range: FileRange) throws -> Bool {
        guard kernelCopyWorks else { return false }
        if sourcePath != range.path {
            if sourceFD >= 0 { close(sourceFD) }
            sourceFD = open(range.path, O_RDONLY | O_CLOEXEC)
            sourcePath = range.path
            guard sourceFD >= 0 else { return false }
        }
        var inOff = Int64(range.offset)
        var outOff = Int64(filePos)
        var left = range.length
        while left > 0 {
            let n = mm1_copy_file_range(sourceFD, &inOff, fd, &outOff, left)
            if n < 0 {
                if errno == EINTR { continue }
                let err = errno
                if left == range.length && [ENOSYS, EXDEV, EINVAL, EOPNOTSUPP, EBADF].contains(err) {
                    kernelCopyWorks = false
                    return false
                }
                throw MM1Error(file: tempPath, "copying from \(range.path) failed: \(String(cString: strerror(err)))")
            }
            if n == 0 { throw MM1Error(file: range.path, "ended before the tensor's bytes did") }
            left -= n
        }
        filePos += range.length
        startWriteback()
        return true
    }

    /// Runs `work` (which moves `bytes` to the file) while another thread adds `bytes` to the current tensor's
    /// digest, so the two passes over the bytes overlap on two cores.
    private func hashing<T>(_ bytes: UnsafeRawBufferPointer, _ work: () throws -> T) throws -> T {
        let box = HasherBox(hasher, bytes)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global(qos: .userInitiated).async {
            box.hasher.update(bufferPointer: box.chunk)
            done.signal()
        }
        let result = Result { try work() }
        done.wait()
        hasher = box.hasher
        return try result.get()
    }

    /// Chunks at least this large are hashed on a second thread while they are written.
    static let parallelHashBytes = 1 << 20

    /// Background checks and hashing walk a tensor in pieces this large (they stay in the CPU caches between the
    /// check and the hash).
    static let checkPieceBytes = 256 << 10

    /// Background threads that also write (see `write(copying:)`) write this much at a time: still in the last-level
    /// cache after hashing, and few enough calls that contention for the file's lock stays low.
    static let writePieceBytes = 2 << 20

    /// Hands the hasher and the chunk to the hashing thread; the caller waits for it before touching either.
    private final class HasherBox: @unchecked Sendable {
        var hasher: SHA256
        let chunk: UnsafeRawBufferPointer
        init(_ h: SHA256, _ c: UnsafeRawBufferPointer) {
            hasher = h
            chunk = c
        }
    }

    private func endTensorIfNeeded() throws {
        guard current >= 0, digests.count == current else { return }
        guard written == entries[current].length else {
            throw MM1Error(file: finalPath, tensor: entries[current].name, "wrote \(written) bytes, declared \(entries[current].length)")
        }
        if !pending.isEmpty && !hasherUsed {
            digests.append("")
            background.submit(tensor: current, chunks: pending)
            pending.removeAll()
            return
        }
        try hashPendingNow()
        digests.append(hex(hasher.finalize()))
    }

    /// Every tensor's SHA-256 (hex), in table order, once all tensors are written (this completes the last one).
    /// Available before `finish`, so that digests derived from them can go into the header.
    public func tensorDigests() throws -> [String] {
        try endTensorIfNeeded()
        try waitForDigests()
        guard digests.count == entries.count else {
            throw MM1Error(file: finalPath, "only \(digests.count) of \(entries.count) tensors were written")
        }
        return digests
    }

    /// Replaces the provenance (e.g. once source digests are known); it must encode to the same length.
    public func setProvenance(_ provenance: [String: Any]) throws {
        headerBase["provenance"] = provenance
    }

    /// Writes the sections and the header, flushes, and renames the file into place.
    public func finish() throws {
        try endTensorIfNeeded()
        try waitForDigests()
        guard digests.count == entries.count else {
            throw MM1Error(file: finalPath, "only \(digests.count) of \(entries.count) tensors were written")
        }
        for s in sectionRecords {
            try zeros(s.offset - (filePos + buffered - dataOffset))
            try s.stored.withUnsafeBytes { try append($0) }
        }
        try zeros(dataLength - (filePos + buffered - dataOffset))
        try flush()
        let header = try BundleWriter.headerBytes(headerBase, entries: entries, offsets: offsets, digests: digests,
                                                  sections: sectionRecords)
        guard header.count == headerLength else {
            throw MM1Error(file: finalPath, "internal error: header length changed from \(headerLength) to \(header.count)")
        }
        var prefix = [UInt8](repeating: 0, count: BundleWriter.prefixSize)
        prefix.replaceSubrange(0..<8, with: BundleWriter.magic)
        putLE(&prefix, 8, UInt64(BundleWriter.formatVersion), 4)
        putLE(&prefix, 16, UInt64(headerLength), 8)
        putLE(&prefix, 24, UInt64(dataOffset), 8)
        putLE(&prefix, 32, UInt64(dataLength), 8)
        prefix.replaceSubrange(40..<72, with: Array(SHA256.hash(data: header)))
        var head = prefix + header
        head += [UInt8](repeating: 0, count: dataOffset - head.count)
        try head.withUnsafeBytes { try pwriteAll($0, at: 0) }
        guard fsync(fd) == 0 else { throw MM1Error(file: tempPath, "fsync failed: \(String(cString: strerror(errno)))") }
        close(fd)
        finished = true
        defer { TemporaryFiles.remove(tempPath) }
        guard rename(tempPath, finalPath) == 0 else {
            let msg = String(cString: strerror(errno))
            unlink(tempPath)
            throw MM1Error(file: finalPath, "cannot rename the finished file into place: \(msg)")
        }
    }

    private func putLE(_ a: inout [UInt8], _ at: Int, _ v: UInt64, _ n: Int) {
        for i in 0..<n { a[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }

    private func zeros(_ n: Int) throws {
        guard n >= 0 else { throw MM1Error(file: finalPath, "internal error: negative padding") }
        var left = n
        while left > 0 {
            if buffered == bufferSize { try flush() }
            let k = min(left, bufferSize - buffered)
            (buffer + buffered).initializeMemory(as: UInt8.self, repeating: 0, count: k)
            buffered += k
            left -= k
        }
    }

    private func append(_ bytes: UnsafeRawBufferPointer) throws {
        var src = bytes.baseAddress!
        var left = bytes.count
        if buffered == 0 && left >= bufferSize {
            // Large writes skip the staging buffer.
            try pwriteAll(bytes, at: filePos)
            filePos += left
            startWriteback()
            return
        }
        while left > 0 {
            if buffered == bufferSize { try flush() }
            let k = min(left, bufferSize - buffered)
            (buffer + buffered).copyMemory(from: src, byteCount: k)
            buffered += k
            src += k
            left -= k
        }
    }

    private func flush() throws {
        guard buffered > 0 else { return }
        try pwriteAll(UnsafeRawBufferPointer(start: buffer, count: buffered), at: filePos)
        filePos += buffered
        buffered = 0
        startWriteback()
    }

    private var writebackStart = 0

    /// Hands everything written since the last call to the kernel's writeback now, instead of letting dirty pages
    /// accumulate until the kernel throttles the writer (which, measured, slowed copies eightfold).
    private func startWriteback() {
        guard filePos - writebackStart >= BundleWriter.writebackBytes else { return }
        _ = mm1_start_writeback(fd, Int64(writebackStart), Int64(filePos - writebackStart))
        writebackStart = filePos
    }

    static let writebackBytes = 32 << 20

    private func pwriteAll(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        try BundleWriter.pwriteAll(fd, tempPath, bytes, at: offset)
    }

    fileprivate static func pwriteAll(_ fd: Int32, _ path: String, _ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw MM1Error(file: path, "write failed: \(String(cString: strerror(errno)))")
            }
            if n == 0 { throw MM1Error(file: path, "write failed: no progress (disk full?)") }
            done += n
        }
    }

    static func headerBytes(_ base: [String: Any], entries: [TensorEntry], offsets: [Int], digests: [String],
                            sections: [(name: String, encoding: String, stored: [UInt8], rawLength: Int, sha: String, offset: Int)]) throws -> [UInt8] {
        var h = base
        h["tensors"] = entries.enumerated().map { i, t -> [String: Any] in
            var d: [String: Any] = ["name": t.name, "dtype": t.dtype, "shape": t.shape, "offset": offsets[i],
                                    "length": t.length, "sha256": digests[i]]
            if let q = t.quant { d["quant"] = q }
            return d
        }
        h["sections"] = sections.map {
            ["name": $0.name, "encoding": $0.encoding, "offset": $0.offset, "length": $0.stored.count,
             "raw_length": $0.rawLength, "sha256": $0.sha] as [String: Any]
        }
        return try CanonicalJSON.bytes(h)
    }
}

func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
    let chars = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    for b in digest {
        out.append(chars[Int(b >> 4)])
        out.append(chars[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// JSON with sorted keys and no insignificant whitespace, so equal values give equal bytes.
public enum CanonicalJSON {
    public static func bytes(_ value: Any) throws -> [UInt8] {
        do {
            let data = try JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes])
            return [UInt8](data)
        } catch {
            throw MM1Error("cannot encode JSON: \(error)")
        }
    }
}
