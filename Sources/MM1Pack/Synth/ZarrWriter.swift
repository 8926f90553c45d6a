import CZstd
import Foundation

/// Writes one zarr v2 array the way TensorStore does for JAX/AXLearn checkpoints: a `.zarray` with sorted keys and
/// no spaces, `compressor {"id": "zstd", "level": L}`, `fill_value: null`, `order: "C"`, `filters: null`,
/// `dimension_separator: "."`, and one zstd frame per chunk, edge chunks stored full-size (zero-padded).
///
/// The data arrive in C order, in pieces of any size. The chunk shape must have the form `[1, …, 1, k, full, …]`
/// (ones, then one split axis, then whole axes) so that every chunk is a contiguous run of the C-order data and
/// the array streams: only one chunk is held in memory.
public final class ZarrArrayWriter {
    public let directory: String
    public let dtype: DType
    public let shape: [Int]
    public let chunks: [Int]
    public let level: Int32

    /// zarr v2 dtype string (TensorStore spells bf16 `"bfloat16"`).
    public static func zarrDType(_ d: DType) -> String {
        switch d {
        case .bf16: return "bfloat16"
        case .f32: return "<f4"
        case .f16: return "<f2"
        case .f64: return "<f8"
        case .i64: return "<i8"
        case .i32: return "<i4"
        case .i16: return "<i2"
        case .i8: return "|i1"
        case .u8: return "|u1"
        case .u16: return "<u2"
        case .u32: return "<u4"
        case .u64: return "<u8"
        case .bool: return "|b1"
        }
    }

    /// numpy's name for the AXLearn index (`str(dtype)`).
    public static func numpyName(_ d: DType) -> String {
        switch d {
        case .bf16: return "bfloat16"
        case .f32: return "float32"
        case .f16: return "float16"
        case .f64: return "float64"
        case .i64: return "int64"
        case .i32: return "int32"
        case .i16: return "int16"
        case .i8: return "int8"
        case .u8: return "uint8"
        case .u16: return "uint16"
        case .u32: return "uint32"
        case .u64: return "uint64"
        case .bool: return "bool"
        }
    }

    /// A streamable chunk shape of at most `maxChunkBytes` (when a single element row allows it): whole trailing
    /// axes, one split axis, ones before it. With `unitLeadingAxis` the first axis (a layer/repeat axis) is always
    /// split into single slices, so each layer is its own chunk (or run of chunks).
    public static func streamingChunks(shape: [Int], elementSize: Int, maxChunkBytes: Int,
                                       unitLeadingAxis: Bool = false) -> [Int] {
        let r = shape.count
        guard r > 0 else { return [] }
        var chunks = shape.map { max($0, 1) }
        // trailing[j] = bytes of one index step along axis j (product of the axes after j).
        var trailing = [Int](repeating: elementSize, count: r)
        for j in stride(from: r - 2, through: 0, by: -1) { trailing[j] = trailing[j + 1] * max(shape[j + 1], 1) }
        for j in 0..<r {
            let whole = trailing[j] * max(shape[j], 1)
            if whole <= maxChunkBytes && !(j == 0 && unitLeadingAxis && shape[0] > 1) {
                break  // axes j… are whole
            }
            let k = max(1, min(max(shape[j], 1), maxChunkBytes / trailing[j]))
            chunks[j] = (j == 0 && unitLeadingAxis) ? 1 : k
            if chunks[j] > 1 || trailing[j] <= maxChunkBytes { break }
            // a single slice along j is still too big: keep splitting the next axis
        }
        return chunks
    }

    private let splitAxis: Int  // the one axis with 1 < chunk < shape, or the last axis of the ones
    private let sliceBytes: Int  // bytes of one index step along splitAxis
    private let chunkBytes: Int
    private let grid: [Int]
    private let totalBytes: Int
    private let scratch: Scratch
    private var chunkBuffer: UnsafeMutableRawPointer { scratch.chunk }
    private var outBuffer: UnsafeMutableRawPointer { scratch.out }
    private var outCapacity: Int { scratch.outCapacity }
    private var cctx: OpaquePointer? { scratch.cctx }
    private var filled = 0
    private var chunkOrdinal = 0
    private var written = 0
    private var finished = false
    /// Bytes written to chunk files (compressed).
    public private(set) var storedBytes = 0
    /// Chunk file names written (relative to `directory`).
    public private(set) var chunkFiles: [String] = []

    /// Buffers and a zstd context that consecutive writers can share, so writing many arrays allocates once.
    public final class Scratch {
        fileprivate var chunk = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        fileprivate var chunkCapacity = 64
        fileprivate var out = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        fileprivate var outCapacity = 64
        fileprivate let cctx: OpaquePointer?

        public init() { cctx = ZSTD_createCCtx() }

        deinit {
            chunk.deallocate()
            out.deallocate()
            if let cctx { ZSTD_freeCCtx(cctx) }
        }

        fileprivate func reserve(chunkBytes: Int) {
            if chunkCapacity < chunkBytes {
                chunk.deallocate()
                chunk = .allocate(byteCount: chunkBytes, alignment: 64)
                chunkCapacity = chunkBytes
            }
            let bound = ZSTD_compressBound(chunkBytes)
            if outCapacity < bound {
                out.deallocate()
                out = .allocate(byteCount: bound, alignment: 64)
                outCapacity = bound
            }
        }
    }

    /// Creates `directory` (and parents) and writes `.zarray`. Pass a `scratch` to reuse buffers across arrays
    /// (one writer at a time per scratch).
    public init(directory: String, dtype: DType, shape: [Int], chunks: [Int], zstdLevel: Int32 = 1,
                scratch: Scratch? = nil) throws {
        guard shape.count == chunks.count else {
            throw MM1Error(file: directory, "shape \(shape) and chunks \(chunks) have different ranks")
        }
        guard shape.allSatisfy({ $0 >= 0 }), chunks.allSatisfy({ $0 >= 1 }), let elements = checkedElementCount(shape) else {
            throw MM1Error(file: directory, "invalid shape \(shape) or chunks \(chunks)")
        }
        // Chunk form [1…1, k, full…]: the split axis is the last one that is not whole; all before it are 1.
        var split = 0
        for j in 0..<shape.count where chunks[j] != max(shape[j], 1) { split = j }
        for j in 0..<split where chunks[j] != 1 {
            throw MM1Error(file: directory, "chunks \(chunks) do not stream for shape \(shape): every axis before the split axis \(split) must have chunk 1")
        }
        self.directory = directory
        self.dtype = dtype
        self.shape = shape
        self.chunks = chunks
        self.level = zstdLevel
        self.splitAxis = split
        var slice = dtype.byteSize
        if !shape.isEmpty { for j in (splitAxis + 1)..<shape.count { slice *= shape[j] } }
        self.sliceBytes = slice
        self.chunkBytes = (checkedElementCount(chunks) ?? 0) * dtype.byteSize
        self.grid = zip(shape, chunks).map { ($0 + $1 - 1) / $1 }
        self.totalBytes = elements * dtype.byteSize
        guard chunkBytes <= 1 << 32 else { throw MM1Error(file: directory, "chunk \(chunks) is too large to stream") }
        self.scratch = scratch ?? Scratch()
        self.scratch.reserve(chunkBytes: max(chunkBytes, 1))

        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let meta = "{\"chunks\":[\(chunks.map(String.init).joined(separator: ","))],"
            + "\"compressor\":{\"id\":\"zstd\",\"level\":\(zstdLevel)},\"dimension_separator\":\".\","
            + "\"dtype\":\"\(ZarrArrayWriter.zarrDType(dtype))\",\"fill_value\":null,\"filters\":null,\"order\":\"C\","
            + "\"shape\":[\(shape.map(String.init).joined(separator: ","))],\"zarr_format\":2}"
        try writeFileAtomically(directory + "/.zarray", Array(meta.utf8))
    }

    /// Number of data bytes the current chunk holds (less than `chunkBytes` for an edge chunk).
    private func currentChunkDataBytes() -> Int {
        if shape.isEmpty { return dtype.byteSize }
        // The split-axis position of this chunk: chunk ordinal modulo the grid along the split axis.
        let along = chunkOrdinal % grid[splitAxis]
        let rows = min(chunks[splitAxis], shape[splitAxis] - along * chunks[splitAxis])
        return rows * sliceBytes
    }

    private func chunkKey(_ ordinal: Int) -> String {
        if shape.isEmpty { return "0" }
        var idx = [Int](repeating: 0, count: shape.count)
        var o = ordinal
        for j in stride(from: shape.count - 1, through: 0, by: -1) {
            idx[j] = o % grid[j]
            o /= grid[j]
        }
        return idx.map(String.init).joined(separator: ".")
    }

    private func flushChunk() throws {
        if filled < chunkBytes { (chunkBuffer + filled).initializeMemory(as: UInt8.self, repeating: 0, count: chunkBytes - filled) }
        let n = ZSTD_compressCCtx(cctx, outBuffer, outCapacity, chunkBuffer, chunkBytes, level)
        if ZSTD_isError(n) != 0 {
            throw MM1Error(file: directory, "zstd compression failed: \(String(cString: ZSTD_getErrorName(n)))")
        }
        let key = chunkKey(chunkOrdinal)
        let out = try BufferedFileOutput(path: directory + "/" + key, bufferBytes: 4096)
        do {
            try out.write(UnsafeRawBufferPointer(start: outBuffer, count: n))
            try out.close()
        } catch {
            out.discard()
            throw error
        }
        chunkFiles.append(key)
        storedBytes += n
        chunkOrdinal += 1
        filled = 0
    }

    /// Appends the next bytes of the array in C order.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard !finished else { throw MM1Error(file: directory, "write after finish") }
        guard written + bytes.count <= totalBytes else {
            throw MM1Error(file: directory, "more data than the array's \(totalBytes) bytes")
        }
        var p = bytes.baseAddress
        var left = bytes.count
        while left > 0 {
            let want = currentChunkDataBytes() - filled
            let n = min(want, left)
            (chunkBuffer + filled).copyMemory(from: p!, byteCount: n)
            filled += n
            p = p! + n
            left -= n
            written += n
            if filled == currentChunkDataBytes() { try flushChunk() }
        }
    }

    public func finish() throws {
        guard !finished else { return }
        guard written == totalBytes else {
            throw MM1Error(file: directory, "finish() after \(written) of \(totalBytes) bytes")
        }
        finished = true
    }
}

/// The AXLearn `index` file: `json.dumps` of `[["step", n], [path, {"dtype": numpy name, "shape": str(tuple)}], …]`
/// (Python's default separators, one line), in the order given (AXLearn writes `prng_key`, then `model/...`, then
/// `learner/...`, keys sorted within each).
public enum AXLearnIndex {
    public struct Entry: Sendable {
        public var path: String
        public var dtype: DType
        public var shape: [Int]

        public init(path: String, dtype: DType, shape: [Int]) {
            self.path = path
            self.dtype = dtype
            self.shape = shape
        }
    }

    /// Python's `str(tuple)`: `"()"`, `"(5,)"`, `"(2, 3)"`.
    public static func pythonTuple(_ shape: [Int]) -> String {
        switch shape.count {
        case 0: return "()"
        case 1: return "(\(shape[0]),)"
        default: return "(" + shape.map(String.init).joined(separator: ", ") + ")"
        }
    }

    public static func render(step: Int, entries: [Entry]) -> String {
        var parts = ["[\"step\", \(step)]"]
        for e in entries {
            parts.append("[\(jsonQuoted(e.path)), {\"dtype\": \"\(ZarrArrayWriter.numpyName(e.dtype))\", \"shape\": \"\(pythonTuple(e.shape))\"}]")
        }
        return "[" + parts.joined(separator: ", ") + "]"
    }

    /// Writes `<stepDir>/index` (through a temporary name: the index is AXLearn's commit marker).
    public static func write(stepDir: String, step: Int, entries: [Entry]) throws {
        try writeFileAtomically(stepDir + "/index", Array(render(step: step, entries: entries).utf8))
    }
}
