import Foundation

/// A file written through a POSIX descriptor with a small staging buffer, so that many tiny tensors do not cost one
/// system call each while large pieces go straight to the kernel.
final class BufferedFileOutput {
    let path: String
    private var fd: Int32
    private var buffer: UnsafeMutableRawPointer
    private let capacity: Int
    private var used = 0
    private(set) var bytesWritten = 0

    init(path: String, bufferBytes: Int = 1 << 20) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw MM1Error(file: path, "cannot create: \(String(cString: strerror(errno)))") }
        capacity = bufferBytes
        buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferBytes, alignment: 64)
    }

    deinit {
        if fd >= 0 { Foundation.close(fd) }
        buffer.deallocate()
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count > 0 else { return }
        if used + bytes.count <= capacity {
            (buffer + used).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            used += bytes.count
        } else {
            try flush()
            if bytes.count >= capacity {
                try raw(bytes.baseAddress!, bytes.count)
            } else {
                buffer.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
                used = bytes.count
            }
        }
        bytesWritten += bytes.count
    }

    func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    func flush() throws {
        if used > 0 {
            try raw(UnsafeRawPointer(buffer), used)
            used = 0
        }
    }

    private func raw(_ p: UnsafeRawPointer, _ n: Int) throws {
        var off = 0
        while off < n {
            let r = Foundation.write(fd, p + off, n - off)
            if r < 0 {
                if errno == EINTR { continue }
                throw MM1Error(file: path, "write failed: \(String(cString: strerror(errno)))")
            }
            off += r
        }
    }

    /// Flushes and closes; the file is complete on disk only after this.
    func close() throws {
        guard fd >= 0 else { return }
        try flush()
        let r = Foundation.close(fd)
        fd = -1
        if r != 0 { throw MM1Error(file: path, "close failed: \(String(cString: strerror(errno)))") }
    }

    /// Closes without reporting errors (abandoning the file).
    func discard() {
        if fd >= 0 { Foundation.close(fd) }
        fd = -1
        used = 0
    }
}

/// Renames a finished temporary file into place.
func renameIntoPlace(_ temp: String, _ final: String) throws {
    guard rename(temp, final) == 0 else {
        throw MM1Error(file: final, "cannot rename \(temp) into place: \(String(cString: strerror(errno)))")
    }
}

/// Writes `bytes` to `path` through a temporary name, so a reader never sees a half-written file.
func writeFileAtomically(_ path: String, _ bytes: [UInt8]) throws {
    let temp = path + ".partial"
    let out = try BufferedFileOutput(path: temp)
    do {
        try out.write(bytes)
        try out.close()
    } catch {
        out.discard()
        unlink(temp)
        throw error
    }
    try renameIntoPlace(temp, path)
}

/// A JSON string literal (for hand-built JSON whose key order must be fixed).
func jsonQuoted(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 {
                out += String(format: "\\u%04x", u.value)
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}

/// Streams a safetensors checkpoint (one file, or shards plus `model.safetensors.index.json`).
///
/// All tensors are declared up front, so the header (and the shard plan) is known before any data: the header is
/// written first, then the caller hands over each tensor's bytes in declaration order, in pieces of any size; no
/// tensor is ever held whole. Each file is written under a temporary name (`<name>.partial`) and renamed into place
/// by `finish()`; the index, when there is one, is written last.
///
/// Format: 8-byte little-endian header length, then a JSON header `{"__metadata__": {...}, name: {"dtype",
/// "shape", "data_offsets": [begin, end]}, ...}` (tensors in declaration order, offsets relative to the data that
/// follows the header) padded with spaces to a multiple of 8, then the tensors' bytes back to back.
public final class SafetensorsWriter {
    public struct Tensor: Sendable, Equatable {
        public var name: String
        public var dtype: DType
        public var shape: [Int]

        public init(name: String, dtype: DType, shape: [Int]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
        }

        public var byteCount: Int { shape.reduce(1, *) * dtype.byteSize }
    }

    public static let indexFileName = "model.safetensors.index.json"

    /// Directory written into.
    public let directory: String
    public let tensors: [Tensor]
    /// Final file names (relative to `directory`), in shard order.
    public let files: [String]
    /// Shard number of each tensor.
    public let shardOf: [Int]
    /// Sum of all tensors' bytes (the index's `total_size`).
    public let totalBytes: Int

    private let headers: [[UInt8]]
    private let shardEnds: [Int]  // index past the last tensor of each shard
    private var current: BufferedFileOutput?
    private var currentShard = -1
    private var tensorIndex = 0
    private var remainingInTensor = 0
    private var finished = false
    private var created: [String] = []  // temporary paths that exist

    static func safetensorsName(_ d: DType) throws -> String {
        switch d {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .f64: return "F64"
        case .i64: return "I64"
        case .i32: return "I32"
        case .i16: return "I16"
        case .i8: return "I8"
        case .u8: return "U8"
        case .u16: return "U16"
        case .u32: return "U32"
        case .u64: return "U64"
        case .bool: return "BOOL"
        }
    }

    /// - Parameters:
    ///   - directory: where the files go (must exist).
    ///   - tensors: every tensor, in the order the data will be written.
    ///   - maxShardBytes: largest amount of tensor data per file. When everything fits, one `model.safetensors` is
    ///     written and no index; otherwise `model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`.
    ///     Tensors are assigned greedily in order; a tensor larger than the limit gets a shard of its own.
    ///   - metadata: the header's `__metadata__` (transformers expects `{"format": "pt"}`).
    public init(directory: String, tensors: [Tensor], maxShardBytes: Int = Int.max,
                metadata: [String: String] = ["format": "pt"]) throws {
        guard maxShardBytes > 0 else { throw MM1Error("maxShardBytes must be positive") }
        var seen = Set<String>()
        for t in tensors {
            guard !t.name.isEmpty, t.name != "__metadata__" else {
                throw MM1Error(tensor: t.name, "is not a valid safetensors tensor name")
            }
            guard seen.insert(t.name).inserted else { throw MM1Error(tensor: t.name, "declared twice") }
            guard t.shape.allSatisfy({ $0 >= 0 }), checkedElementCount(t.shape) != nil else {
                throw MM1Error(tensor: t.name, "has an invalid shape \(t.shape)")
            }
        }
        self.directory = directory
        self.tensors = tensors

        // Shard plan.
        var ends: [Int] = []
        var shardOf: [Int] = []
        var size = 0
        for (i, t) in tensors.enumerated() {
            if i > 0 && size > 0 && size + t.byteCount > maxShardBytes {
                ends.append(i)
                size = 0
            }
            size += t.byteCount
            shardOf.append(ends.count)
        }
        ends.append(tensors.count)
        let n = ends.count
        self.shardEnds = ends
        self.shardOf = shardOf
        self.files = n == 1
            ? ["model.safetensors"]
            : (1...n).map { String(format: "model-%05d-of-%05d.safetensors", $0, n) }
        self.totalBytes = tensors.reduce(0) { $0 + $1.byteCount }

        // Headers.
        var headers: [[UInt8]] = []
        var start = 0
        let meta = metadata.keys.sorted().map { "\(jsonQuoted($0)):\(jsonQuoted(metadata[$0]!))" }.joined(separator: ",")
        for end in ends {
            var json = "{\"__metadata__\":{\(meta)}"
            var offset = 0
            for t in tensors[start..<end] {
                let shape = t.shape.map(String.init).joined(separator: ",")
                json += ",\(jsonQuoted(t.name)):{\"dtype\":\"\(try SafetensorsWriter.safetensorsName(t.dtype))\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + t.byteCount)]}"
                offset += t.byteCount
            }
            json += "}"
            var bytes = Array(json.utf8)
            while bytes.count % 8 != 0 { bytes.append(0x20) }
            var h: [UInt8] = []
            var len = UInt64(bytes.count)
            for _ in 0..<8 {
                h.append(UInt8(len & 0xFF))
                len >>= 8
            }
            headers.append(h + bytes)
            start = end
        }
        self.headers = headers
        try advance()
    }

    deinit {
        if !finished { abort() }
    }

    private func tempPath(_ shard: Int) -> String { directory + "/" + files[shard] + ".partial" }

    /// Moves to the next tensor that has bytes to receive, opening its shard when needed.
    private func advance() throws {
        while tensorIndex < tensors.count && tensors[tensorIndex].byteCount == 0 {
            try openShard(shardOf[tensorIndex])
            tensorIndex += 1
        }
        if tensorIndex < tensors.count {
            try openShard(shardOf[tensorIndex])
            remainingInTensor = tensors[tensorIndex].byteCount
        } else {
            // Shards that hold only empty tensors (or nothing at all) still need their files.
            try openShard(files.count - 1)
        }
    }

    private func openShard(_ s: Int) throws {
        while currentShard < s {
            if let c = current { try c.close() }
            currentShard += 1
            let p = tempPath(currentShard)
            let out = try BufferedFileOutput(path: p, bufferBytes: 4 << 20)
            created.append(p)
            TemporaryFiles.add(p)
            current = out
            try out.write(headers[currentShard])
        }
    }

    /// Name of the tensor the next bytes belong to (nil when all data has been written).
    public var currentTensor: String? { tensorIndex < tensors.count ? tensors[tensorIndex].name : nil }

    /// Checks that the writer is at the start of tensor `name`; catches a caller that lost track of the order.
    public func beginTensor(_ name: String) throws {
        guard tensorIndex < tensors.count else {
            throw MM1Error(tensor: name, "all declared tensors have been written already")
        }
        let t = tensors[tensorIndex]
        guard t.name == name || t.byteCount == 0 else {
            throw MM1Error(tensor: name, "written out of order: the writer expects '\(t.name)' next")
        }
        if t.name == name {
            guard remainingInTensor == t.byteCount else {
                throw MM1Error(tensor: name, "begun twice (\(t.byteCount - remainingInTensor) bytes already written)")
            }
        } else {
            // Skip declared empty tensors before `name`.
            var i = tensorIndex
            while i < tensors.count && tensors[i].byteCount == 0 && tensors[i].name != name { i += 1 }
            guard i < tensors.count, tensors[i].name == name else {
                throw MM1Error(tensor: name, "written out of order: the writer expects '\(t.name)' next")
            }
        }
    }

    /// Appends the next bytes of the data stream (they may end one tensor and start the next).
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard !finished else { throw MM1Error(file: directory, "write after finish") }
        var p = bytes.baseAddress
        var left = bytes.count
        while left > 0 {
            guard tensorIndex < tensors.count, let out = current else {
                throw MM1Error(file: directory, "\(left) bytes more than the declared tensors hold")
            }
            let n = min(left, remainingInTensor)
            try out.write(UnsafeRawBufferPointer(start: p, count: n))
            p = p.map { $0 + n }
            left -= n
            remainingInTensor -= n
            if remainingInTensor == 0 {
                tensorIndex += 1
                try advance()
            }
        }
    }

    /// Closes the files, renames them into place and writes the index (when sharded).
    public func finish() throws {
        guard !finished else { return }
        guard tensorIndex == tensors.count else {
            throw MM1Error(file: directory, tensor: tensors[tensorIndex].name,
                           "finish() before all data was written (\(remainingInTensor) bytes of this tensor missing)")
        }
        try current?.close()
        current = nil
        for s in 0..<files.count { try renameIntoPlace(tempPath(s), directory + "/" + files[s]) }
        for p in created { TemporaryFiles.remove(p) }
        created = []
        if files.count > 1 {
            var json = "{\n  \"metadata\": {\n    \"total_size\": \(totalBytes)\n  },\n  \"weight_map\": {\n"
            let entries = tensors.indices.sorted { tensors[$0].name < tensors[$1].name }.map {
                "    \(jsonQuoted(tensors[$0].name)): \(jsonQuoted(files[shardOf[$0]]))"
            }
            json += entries.joined(separator: ",\n") + "\n  }\n}\n"
            try writeFileAtomically(directory + "/" + SafetensorsWriter.indexFileName, Array(json.utf8))
        }
        finished = true
    }

    /// Abandons the output: temporary files are removed, nothing is renamed into place.
    public func abort() {
        current?.discard()
        current = nil
        for p in created {
            unlink(p)
            TemporaryFiles.remove(p)
        }
        created = []
        finished = true
    }
}
