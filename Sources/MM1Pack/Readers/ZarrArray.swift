import CZstd
import Foundation

/// One zarr v2 array on disk (a directory with `.zarray` and chunk files), as TensorStore writes them for JAX
/// checkpoints: C order, no filters, zstd or no compressor, `.` or `/` chunk key separator.
///
/// Reads decompress only the chunks that overlap the requested box; the last decompressed chunk is kept, so
/// reading consecutive slices of a stacked array decompresses each chunk once. Access is serialised by a lock.
public final class ZarrArray: @unchecked Sendable {
    /// What to do when a chunk file is absent and `fill_value` is null.
    public enum MissingChunkPolicy: Sendable {
        /// Report an error (the array is incomplete).
        case error
        /// Read the chunk as zeros, as TensorStore does (it does not store chunks equal to the fill value, and a
        /// null fill value reads as zero).
        case zeros
    }

    /// Absolute path of the array directory.
    public let directory: String
    /// Name used in messages (for example the checkpoint path `gda/model/...`).
    public let displayName: String
    public let shape: [Int]
    public let chunks: [Int]
    public let dtype: DType
    public let zstdCompressed: Bool
    /// One element's bytes, or nil when `fill_value` is null.
    public let fillValue: [UInt8]?
    public let separator: String
    public let missingChunkPolicy: MissingChunkPolicy

    /// Bytes of one (full-size) chunk.
    public let chunkByteCount: Int
    /// Number of chunks along each axis.
    public let chunkGrid: [Int]

    private let lock = NSLock()
    private var dctx: OpaquePointer?
    // One-chunk cache.
    private var cachedIndex: [Int]?
    private var cachedBuffer: UnsafeMutableRawBufferPointer?
    private var cachedMapping: MappedFile?  // uncompressed chunks are used in place
    private var cachedIsFill = false

    /// Largest chunk accepted (bytes); larger `.zarray` chunk shapes are refused before anything is allocated.
    public static let maxChunkBytes = 1 << 36

    public init(directory: String, displayName: String? = nil, missingChunks: MissingChunkPolicy = .error) throws {
        self.directory = directory
        self.displayName = displayName ?? directory
        self.missingChunkPolicy = missingChunks
        let metaPath = (directory as NSString).appendingPathComponent(".zarray")
        let name = self.displayName + "/.zarray"
        guard let data = FileManager.default.contents(atPath: metaPath) else {
            throw MM1Error(file: name, "missing or unreadable (\(metaPath))")
        }
        let obj: Any
        do { obj = try JSONSerialization.jsonObject(with: data) } catch {
            throw MM1Error(file: name, "not valid JSON: \(error.localizedDescription)")
        }
        if let dup = data.withUnsafeBytes({ JSONDuplicateKeyScanner.firstDuplicate(in: $0) }) {
            throw MM1Error(file: name, "duplicate JSON key '\(dup)'")
        }
        guard let m = obj as? [String: Any] else { throw MM1Error(file: name, "not a JSON object") }

        guard let fmt = m["zarr_format"].flatMap(jsonInt), fmt == 2 else {
            throw MM1Error(file: name, "zarr_format is \(m["zarr_format"].map { "\($0)" } ?? "missing"), expected 2")
        }
        func intList(_ key: String, min: Int) throws -> [Int] {
            guard let a = m[key] as? [Any] else { throw MM1Error(file: name, "'\(key)' missing or not a list") }
            var out: [Int] = []
            for v in a {
                guard let x = jsonInt(v), x >= min else {
                    throw MM1Error(file: name, "'\(key)' \(a) must hold integers ≥ \(min)")
                }
                out.append(x)
            }
            return out
        }
        let shape = try intList("shape", min: 0)
        let chunks = try intList("chunks", min: 1)
        guard shape.count == chunks.count else {
            throw MM1Error(file: name, "shape \(shape) and chunks \(chunks) have different ranks")
        }
        guard let dtName = m["dtype"] as? String else {
            throw MM1Error(file: name, "dtype missing or not a string (structured dtypes are not supported)")
        }
        let dtype = try ZarrArray.parseDType(dtName, file: name)

        if let order = m["order"] as? String {
            if order == "F" {
                throw MM1Error(file: name, "order 'F' (Fortran, column-major) is not supported; only 'C' arrays are read")
            }
            guard order == "C" else { throw MM1Error(file: name, "unknown order '\(order)'") }
        } else {
            throw MM1Error(file: name, "'order' missing")
        }
        if let f = m["filters"], !(f is NSNull) {
            if let list = f as? [Any], list.isEmpty {
                // an empty filter list is the same as none
            } else {
                throw MM1Error(file: name, "filters \(f) are not supported (only null)")
            }
        }
        var zstd = false
        if let c = m["compressor"], !(c is NSNull) {
            guard let cd = c as? [String: Any], let id = cd["id"] as? String else {
                throw MM1Error(file: name, "compressor must be null or an object with an 'id'")
            }
            guard id == "zstd" else {
                throw MM1Error(file: name, "compressor '\(id)' is not supported (only zstd or none)")
            }
            zstd = true
        }
        var sep = "."
        if let s = m["dimension_separator"], !(s is NSNull) {
            guard let ss = s as? String, ss == "." || ss == "/" else {
                throw MM1Error(file: name, "dimension_separator \(s) must be '.' or '/'")
            }
            sep = ss
        }
        let fill = try ZarrArray.parseFill(m["fill_value"], dtype: dtype, file: name)

        guard let chunkElems = checkedElementCount(chunks) else {
            throw MM1Error(file: name, "chunks \(chunks) overflow")
        }
        let (cb, o) = chunkElems.multipliedReportingOverflow(by: dtype.byteSize)
        guard !o, cb <= ZarrArray.maxChunkBytes else {
            throw MM1Error(file: name, "chunk shape \(chunks) × \(dtName) is larger than \(ZarrArray.maxChunkBytes) bytes")
        }
        guard checkedElementCount(shape) != nil else { throw MM1Error(file: name, "shape \(shape) overflows") }
        var grid: [Int] = []
        for (s, c) in zip(shape, chunks) { grid.append((s + c - 1) / c) }

        self.shape = shape
        self.chunks = chunks
        self.dtype = dtype
        self.zstdCompressed = zstd
        self.fillValue = fill
        self.separator = sep
        self.chunkByteCount = cb
        self.chunkGrid = grid
    }

    deinit {
        if let dctx { ZSTD_freeDCtx(dctx) }
        cachedBuffer?.deallocate()
    }

    // MARK: Metadata parsing

    static func parseDType(_ s: String, file: String) throws -> DType {
        if s == "bfloat16" || s == "<bfloat16" { return .bf16 }
        guard s.count >= 3, let first = s.first else { throw MM1Error(file: file, "unknown dtype '\(s)'") }
        let body = String(s.dropFirst())
        let table: [String: DType] = [
            "f2": .f16, "f4": .f32, "f8": .f64, "i1": .i8, "i2": .i16, "i4": .i32, "i8": .i64,
            "u1": .u8, "u2": .u16, "u4": .u32, "u8": .u64, "b1": .bool,
        ]
        guard let dt = table[body] else { throw MM1Error(file: file, "unknown or unsupported dtype '\(s)'") }
        switch first {
        case "<": return dt
        case "|":
            guard dt.byteSize == 1 else { throw MM1Error(file: file, "dtype '\(s)' has no byte order") }
            return dt
        case ">":
            if dt.byteSize == 1 { return dt }
            throw MM1Error(file: file, "big-endian dtype '\(s)' is not supported (only little-endian)")
        default:
            throw MM1Error(file: file, "unknown dtype '\(s)'")
        }
    }

    static func parseFill(_ v: Any?, dtype: DType, file: String) throws -> [UInt8]? {
        guard let v, !(v is NSNull) else { return nil }
        var d: Double
        var exactInt: Int?
        if jsonIsBool(v), let n = v as? NSNumber {
            let b = n.boolValue
            d = b ? 1 : 0
            exactInt = b ? 1 : 0
        } else if let s = v as? String {
            switch s {
            case "NaN": d = .nan
            case "Infinity": d = .infinity
            case "-Infinity": d = -.infinity
            default: throw MM1Error(file: file, "fill_value '\(s)' is not understood")
            }
        } else if let n = v as? NSNumber {
            exactInt = jsonInt(n)
            d = n.doubleValue
        } else {
            throw MM1Error(file: file, "fill_value \(v) is not a number")
        }
        func le<T: FixedWidthInteger>(_ x: T) -> [UInt8] { withUnsafeBytes(of: x.littleEndian) { Array($0) } }
        func intFill<T: FixedWidthInteger>(_ t: T.Type) throws -> [UInt8] {
            guard let i = exactInt, let x = T(exactly: i) else {
                throw MM1Error(file: file, "fill_value \(v) does not fit dtype \(dtype)")
            }
            return le(x)
        }
        switch dtype {
        case .f32: return le(Float(d).bitPattern)
        case .f64: return le(d.bitPattern)
        case .f16: return le(Float16(Float(d)).bitPattern)
        case .bf16: return le(bf16Bits(Float(d)))
        case .i8: return try intFill(Int8.self)
        case .i16: return try intFill(Int16.self)
        case .i32: return try intFill(Int32.self)
        case .i64: return try intFill(Int64.self)
        case .u8, .bool: return try intFill(UInt8.self)
        case .u16: return try intFill(UInt16.self)
        case .u32: return try intFill(UInt32.self)
        case .u64: return try intFill(UInt64.self)
        }
    }

    static func bf16Bits(_ f: Float) -> UInt16 {
        let b = f.bitPattern
        if f.isNaN { return UInt16(b >> 16) | 0x40 }
        let rounding = UInt32(0x7FFF) + ((b >> 16) & 1)
        return UInt16((b &+ rounding) >> 16)
    }

    // MARK: Chunks

    /// The chunk key of a chunk index (`0` for a zero-dimensional array).
    public func chunkKey(_ index: [Int]) -> String {
        if index.isEmpty { return "0" }
        return index.map(String.init).joined(separator: separator)
    }

    /// Every chunk index of the array, row-major. Empty when the array has no elements.
    public func allChunkIndices() -> [[Int]] {
        if shape.isEmpty { return [[]] }
        if chunkGrid.contains(0) { return [] }
        var out: [[Int]] = []
        var idx = [Int](repeating: 0, count: shape.count)
        while true {
            out.append(idx)
            var a = shape.count - 1
            while true {
                idx[a] += 1
                if idx[a] < chunkGrid[a] { break }
                idx[a] = 0
                if a == 0 { return out }
                a -= 1
            }
        }
    }

    /// Total number of chunks (overflow-checked).
    public var chunkCount: Int? { checkedElementCount(chunkGrid) }

    public func chunkPath(_ index: [Int]) -> String {
        (directory as NSString).appendingPathComponent(chunkKey(index))
    }

    /// Reads the box `lower ..< upper` into `into` (row-major, stored dtype).
    public func read(lower: [Int], upper: [Int], into: UnsafeMutableRawBufferPointer) throws {
        let es = dtype.byteSize
        let extent: [Int]
        do {
            extent = try checkedBox(shape: shape, lower: lower, upper: upper, elementSize: es, bufferCount: into.count)
        } catch let e as MM1Error {
            throw e.inFile(displayName)
        }
        if into.count == 0 { return }
        lock.lock()
        defer { lock.unlock() }
        let rank = shape.count
        if rank == 0 {
            let chunk = try loadChunk([])
            if let chunk {
                memcpy(into.baseAddress!, chunk, es)
            } else {
                fillBlock(dst: into.baseAddress!, dstShape: [], dstLower: [], extent: [], element: fillElement())
            }
            return
        }
        var first = [Int](repeating: 0, count: rank)
        var last = [Int](repeating: 0, count: rank)
        for a in 0..<rank {
            first[a] = lower[a] / chunks[a]
            last[a] = (upper[a] - 1) / chunks[a]
        }
        var ci = first
        var lo = [Int](repeating: 0, count: rank)
        var ext = [Int](repeating: 0, count: rank)
        var srcLower = [Int](repeating: 0, count: rank)
        var dstLower = [Int](repeating: 0, count: rank)
        while true {
            for a in 0..<rank {
                let origin = ci[a] * chunks[a]
                let l = max(lower[a], origin)
                let h = min(upper[a], origin + chunks[a])
                lo[a] = l
                ext[a] = h - l
                srcLower[a] = l - origin
                dstLower[a] = l - lower[a]
            }
            if let chunk = try loadChunk(ci) {
                copyBlock(
                    src: chunk, srcShape: chunks, srcLower: srcLower,
                    dst: into.baseAddress!, dstShape: extent, dstLower: dstLower,
                    extent: ext, elementSize: es)
            } else {
                fillBlock(dst: into.baseAddress!, dstShape: extent, dstLower: dstLower, extent: ext, element: fillElement())
            }
            // next chunk index in [first, last]
            var a = rank - 1
            while true {
                ci[a] += 1
                if ci[a] <= last[a] { break }
                ci[a] = first[a]
                if a == 0 { return }
                a -= 1
            }
        }
    }

    /// Frees the cached chunk.
    public func dropCache() {
        lock.lock()
        defer { lock.unlock() }
        cachedBuffer?.deallocate()
        cachedBuffer = nil
        cachedMapping = nil
        cachedIndex = nil
        cachedIsFill = false
    }

    private func fillElement() -> [UInt8] {
        fillValue ?? [UInt8](repeating: 0, count: dtype.byteSize)
    }

    /// Returns the chunk's decoded bytes (full chunk size), or nil when the chunk is absent and reads as fill.
    private func loadChunk(_ index: [Int]) throws -> UnsafeRawPointer? {
        if let c = cachedIndex, c == index {
            if cachedIsFill { return nil }
            if let m = cachedMapping { return m.bytes.baseAddress }
            return UnsafeRawPointer(cachedBuffer!.baseAddress!)
        }
        cachedIndex = nil
        cachedMapping = nil
        let key = chunkKey(index)
        let path = chunkPath(index)
        let label = displayName + "/" + key
        let file: MappedFile
        if !FileManager.default.fileExists(atPath: path) {
            if fillValue == nil && missingChunkPolicy == .error {
                throw MM1Error(
                    file: label,
                    "chunk \(index) is missing and fill_value is null (incomplete checkpoint? TensorStore also omits "
                        + "all-zero chunks; read missing chunks as zeros only if the checkpoint is known complete)")
            }
            cachedIndex = index
            cachedIsFill = true
            return nil
        }
        file = try MappedFile(path: path)
        cachedIsFill = false
        let src = file.bytes
        if !zstdCompressed {
            guard src.count == chunkByteCount else {
                throw MM1Error(
                    file: label,
                    "uncompressed chunk has \(src.count) bytes, expected \(chunkByteCount) (chunk shape \(chunks) × \(dtype))")
            }
            cachedMapping = file
            cachedIndex = index
            return src.baseAddress
        }
        if cachedBuffer == nil || cachedBuffer!.count != chunkByteCount {
            cachedBuffer?.deallocate()
            cachedBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(chunkByteCount, 1), alignment: 64)
        }
        try decompress(src, into: cachedBuffer!, label: label)
        file.dropPages(offset: 0, length: file.size)
        cachedIndex = index
        return UnsafeRawPointer(cachedBuffer!.baseAddress!)
    }

    private static let contentSizeUnknown = UInt64.max
    private static let contentSizeError = UInt64.max - 1

    private func decompress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer, label: String) throws {
        guard src.count > 0, let srcBase = src.baseAddress else {
            throw MM1Error(file: label, "chunk file is empty (expected a zstd frame of \(chunkByteCount) bytes)")
        }
        let declared = ZSTD_getFrameContentSize(srcBase, src.count)
        if declared == ZarrArray.contentSizeError {
            throw MM1Error(file: label, "chunk is not a valid zstd frame (corrupt file)")
        }
        if declared != ZarrArray.contentSizeUnknown, declared != UInt64(chunkByteCount) {
            throw MM1Error(
                file: label,
                "zstd frame declares \(declared) bytes but a chunk of shape \(chunks) × \(dtype) has \(chunkByteCount)")
        }
        if dctx == nil { dctx = ZSTD_createDCtx() }
        guard let dctx else { throw MM1Error(file: label, "cannot create a zstd decompression context") }
        // The destination is exactly one chunk: a frame that decodes to more fails with dstSize_tooSmall.
        let n = ZSTD_decompressDCtx(dctx, dst.baseAddress, chunkByteCount, srcBase, src.count)
        if ZSTD_isError(n) != 0 {
            let msg = String(cString: ZSTD_getErrorName(n))
            throw MM1Error(file: label, "zstd decompression failed: \(msg) (corrupt chunk, or larger than \(chunkByteCount) bytes)")
        }
        guard n == chunkByteCount else {
            throw MM1Error(
                file: label,
                "chunk decompresses to \(n) bytes, expected \(chunkByteCount) (chunk shape \(chunks) × \(dtype))")
        }
    }
}
