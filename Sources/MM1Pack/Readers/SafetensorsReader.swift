import Foundation

/// Reads safetensors checkpoints: one `.safetensors` file, a directory holding `model.safetensors.index.json`
/// and its shards, or a directory holding a single `.safetensors` file.
///
/// Every file is memory-mapped and validated when opened, following the reference reader's rules (header size,
/// UTF-8 JSON object without duplicate keys, known dtypes, offsets that tile the data buffer exactly, nothing
/// after the last tensor). Integer and bool tensors are listed with their true dtype.
public final class SafetensorsReader: FileBackedTensorSource, @unchecked Sendable {
    public static let maxHeaderSize = 100_000_000
    public static let indexFileName = "model.safetensors.index.json"

    public let root: String
    public let tensors: [String: SourceTensorInfo]
    public let files: [String]
    /// `__metadata__` of each file, keyed by the file's path relative to `root` (empty maps are omitted).
    public let metadata: [String: [String: String]]

    struct Entry {
        var fileIndex: Int
        /// Absolute byte offset of the tensor in its file.
        var offset: Int
        var byteCount: Int
        var dtype: DType
        var shape: [Int]
    }

    private let mapped: [MappedFile]
    private let entries: [String: Entry]

    /// Opens a `.safetensors` file or a directory (sharded with an index, or holding one `.safetensors` file).
    public convenience init(path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw MM1Error(file: path, "no such file or directory")
        }
        if !isDir.boolValue {
            let url = URL(fileURLWithPath: path)
            try self.init(
                root: url.deletingLastPathComponent().path, relativeFiles: [url.lastPathComponent], weightMap: nil)
            return
        }
        let indexPath = (path as NSString).appendingPathComponent(SafetensorsReader.indexFileName)
        if FileManager.default.fileExists(atPath: indexPath) {
            let (shards, map) = try SafetensorsReader.readIndex(indexPath)
            try self.init(root: path, relativeFiles: shards, weightMap: map)
            return
        }
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: path)
                .filter { $0.hasSuffix(".safetensors") }.sorted()
        } catch {
            throw MM1Error(file: path, "cannot list directory: \(error.localizedDescription)")
        }
        if names.isEmpty {
            throw MM1Error(file: path, "no .safetensors file and no \(SafetensorsReader.indexFileName) in this directory")
        }
        if names.contains("model.safetensors") {
            try self.init(root: path, relativeFiles: ["model.safetensors"], weightMap: nil)
        } else if names.count == 1 {
            try self.init(root: path, relativeFiles: names, weightMap: nil)
        } else {
            throw MM1Error(
                file: path,
                "\(names.count) .safetensors files but no \(SafetensorsReader.indexFileName) saying how they "
                    + "fit together: \(names.joined(separator: ", ")); pass the files explicitly to use them all")
        }
    }

    /// Opens an explicit list of files as one checkpoint (tensor names must be unique across them). Paths are
    /// taken relative to `root` when they are not absolute; `root` defaults to the first file's directory.
    public convenience init(files: [String], root: String? = nil) throws {
        guard let first = files.first else { throw MM1Error("no safetensors files given") }
        let rootDir = root ?? URL(fileURLWithPath: first).deletingLastPathComponent().path
        let rel = files.map { f -> String in
            if f.hasPrefix("/") {
                let prefix = rootDir.hasSuffix("/") ? rootDir : rootDir + "/"
                return f.hasPrefix(prefix) ? String(f.dropFirst(prefix.count)) : f
            }
            return f
        }
        try self.init(root: rootDir, relativeFiles: rel, weightMap: nil)
    }

    private init(root: String, relativeFiles: [String], weightMap: [String: String]?) throws {
        self.root = root
        var mapped: [MappedFile] = []
        var entries: [String: Entry] = [:]
        var infos: [String: SourceTensorInfo] = [:]
        var metadata: [String: [String: String]] = [:]
        var seenFiles = Set<String>()
        for rel in relativeFiles {
            guard seenFiles.insert(rel).inserted else { continue }
            let full = rel.hasPrefix("/") ? rel : (root as NSString).appendingPathComponent(rel)
            if weightMap != nil, !FileManager.default.fileExists(atPath: full) {
                throw MM1Error(
                    file: (root as NSString).appendingPathComponent(SafetensorsReader.indexFileName),
                    "shard '\(rel)' listed in weight_map is missing (\(full))")
            }
            let file = try MappedFile(path: full)
            let parsed = try SafetensorsReader.parse(file)
            let fileIndex = mapped.count
            mapped.append(file)
            if !parsed.metadata.isEmpty { metadata[rel] = parsed.metadata }
            for t in parsed.tensors {
                if let other = entries[t.name] {
                    throw MM1Error(
                        file: full, tensor: t.name,
                        "also stored in \(mapped[other.fileIndex].path); tensor names must be unique across files")
                }
                if let weightMap {
                    guard let listed = weightMap[t.name] else {
                        throw MM1Error(
                            file: full, tensor: t.name,
                            "stored in shard '\(rel)' but not listed in \(SafetensorsReader.indexFileName) weight_map")
                    }
                    guard listed == rel else {
                        throw MM1Error(
                            file: full, tensor: t.name,
                            "stored in shard '\(rel)' but weight_map assigns it to '\(listed)'")
                    }
                }
                entries[t.name] = Entry(
                    fileIndex: fileIndex, offset: t.offset, byteCount: t.byteCount, dtype: t.dtype, shape: t.shape)
                infos[t.name] = SourceTensorInfo(name: t.name, dtype: t.dtype, shape: t.shape, file: rel)
            }
        }
        if let weightMap {
            for (name, shard) in weightMap.sorted(by: { $0.key < $1.key }) where entries[name] == nil {
                throw MM1Error(
                    file: (root as NSString).appendingPathComponent(shard), tensor: name,
                    "listed in \(SafetensorsReader.indexFileName) weight_map under shard '\(shard)' but the shard "
                        + "does not contain it")
            }
        }
        var fileList = Array(seenFiles).sorted()
        if weightMap != nil { fileList.insert(SafetensorsReader.indexFileName, at: 0) }
        self.files = fileList
        self.mapped = mapped
        self.entries = entries
        self.tensors = infos
        self.metadata = metadata
    }

    // MARK: TensorSource

    public func read(_ name: String, lower: [Int], upper: [Int], into: UnsafeMutableRawBufferPointer) throws {
        guard let e = entries[name] else { throw MM1Error(file: root, tensor: name, "no such tensor") }
        let file = mapped[e.fileIndex]
        let extent: [Int]
        do {
            extent = try checkedBox(
                shape: e.shape, lower: lower, upper: upper, elementSize: e.dtype.byteSize, bufferCount: into.count)
        } catch let err as MM1Error {
            throw err.inFile(file.path).forTensor(name)
        }
        if into.count == 0 { return }
        let src = file.slice(offset: e.offset, length: e.byteCount)
        copyBlock(
            src: src.baseAddress!, srcShape: e.shape, srcLower: lower,
            dst: into.baseAddress!, dstShape: extent, dstLower: [Int](repeating: 0, count: extent.count),
            extent: extent, elementSize: e.dtype.byteSize)
    }

    public func mappedBytes(_ name: String) throws -> UnsafeRawBufferPointer? {
        guard let e = entries[name] else { throw MM1Error(file: root, tensor: name, "no such tensor") }
        return mapped[e.fileIndex].slice(offset: e.offset, length: e.byteCount)
    }

    public func release(_ name: String) {
        guard let e = entries[name] else { return }
        mapped[e.fileIndex].dropPages(offset: e.offset, length: e.byteCount)
    }

    /// Asks the kernel to read a tensor ahead (useful right before reading it).
    public func prefetch(_ name: String) {
        guard let e = entries[name] else { return }
        mapped[e.fileIndex].willNeed(offset: e.offset, length: e.byteCount)
    }

    public func fileRange(_ name: String) -> FileRange? {
        entries[name].map { FileRange(path: mapped[$0.fileIndex].path, offset: $0.offset, length: $0.byteCount) }
    }

    /// Absolute path of the file holding `name`.
    public func filePath(of name: String) -> String? {
        entries[name].map { mapped[$0.fileIndex].path }
    }

    // MARK: Index

    static func readIndex(_ path: String) throws -> (shards: [String], map: [String: String]) {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw MM1Error(file: path, "cannot read: \(error.localizedDescription)")
        }
        let obj: Any
        do { obj = try JSONSerialization.jsonObject(with: data) } catch {
            throw MM1Error(file: path, "not valid JSON: \(error.localizedDescription)")
        }
        if let dup = data.withUnsafeBytes({ JSONDuplicateKeyScanner.firstDuplicate(in: $0) }) {
            throw MM1Error(file: path, "duplicate JSON key '\(dup)'")
        }
        guard let top = obj as? [String: Any] else { throw MM1Error(file: path, "not a JSON object") }
        guard let wm = top["weight_map"] as? [String: Any] else {
            throw MM1Error(file: path, "missing or invalid 'weight_map' object")
        }
        var map: [String: String] = [:]
        var shards: [String] = []
        var seen = Set<String>()
        for (name, v) in wm {
            guard let shard = v as? String else {
                throw MM1Error(file: path, tensor: name, "weight_map value is not a file name")
            }
            let parts = shard.split(separator: "/", omittingEmptySubsequences: false)
            if shard.isEmpty || shard.hasPrefix("/") || parts.contains("..") || parts.contains("") {
                throw MM1Error(file: path, tensor: name, "weight_map shard '\(shard)' is not a relative file name")
            }
            map[name] = shard
            if seen.insert(shard).inserted { shards.append(shard) }
        }
        if map.isEmpty { throw MM1Error(file: path, "weight_map is empty") }
        return (shards.sorted(), map)
    }

    // MARK: File parsing

    struct ParsedTensor {
        var name: String
        var dtype: DType
        var shape: [Int]
        var offset: Int
        var byteCount: Int
    }

    struct ParsedFile {
        var tensors: [ParsedTensor]
        var metadata: [String: String]
    }

    static func parse(_ file: MappedFile) throws -> ParsedFile {
        let path = file.path
        let bytes = file.bytes
        let fileSize = file.size
        guard fileSize >= 8 else {
            throw MM1Error(file: path, "file is \(fileSize) bytes, too small for the 8-byte header length")
        }
        var n64: UInt64 = 0
        for i in 0..<8 { n64 |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard n64 <= UInt64(maxHeaderSize) else {
            throw MM1Error(file: path, "header length \(n64) exceeds the limit of \(maxHeaderSize) bytes")
        }
        let n = Int(n64)
        guard 8 + n <= fileSize else {
            throw MM1Error(
                file: path,
                "header length \(n) runs past the end of the file (header would end at byte \(8 + n), "
                    + "file has \(fileSize) bytes; truncated?)")
        }
        let headerBytes = UnsafeRawBufferPointer(rebasing: bytes[8..<(8 + n)])
        guard String(validating: headerBytes, as: UTF8.self) != nil else {
            throw MM1Error(file: path, "header is not valid UTF-8")
        }
        guard n > 0, headerBytes[0] == UInt8(ascii: "{") else {
            throw MM1Error(file: path, "header does not start with '{'")
        }
        let obj: Any
        do {
            obj = try JSONSerialization.jsonObject(with: Data(headerBytes))
        } catch {
            throw MM1Error(file: path, "header is not valid JSON: \(error.localizedDescription)")
        }
        guard let top = obj as? [String: Any] else { throw MM1Error(file: path, "header is not a JSON object") }
        if let dup = JSONDuplicateKeyScanner.firstDuplicate(in: headerBytes) {
            throw MM1Error(file: path, tensor: dup, "duplicate key '\(dup)' in the header")
        }

        var meta: [String: String] = [:]
        if let m = top["__metadata__"] {
            guard let d = m as? [String: Any] else {
                throw MM1Error(file: path, "__metadata__ is not an object of strings")
            }
            for (k, v) in d {
                guard let s = v as? String else {
                    throw MM1Error(file: path, "__metadata__ value for '\(k)' is not a string")
                }
                meta[k] = s
            }
        }

        struct Raw {
            var name: String
            var dtype: DType
            var shape: [Int]
            var begin: Int
            var end: Int
        }
        var raws: [Raw] = []
        raws.reserveCapacity(top.count)
        for (name, value) in top where name != "__metadata__" {
            guard let d = value as? [String: Any] else {
                throw MM1Error(file: path, tensor: name, "header entry is not an object")
            }
            guard let dtName = d["dtype"] as? String else {
                throw MM1Error(file: path, tensor: name, "missing or non-string 'dtype'")
            }
            guard let dtype = DType(safetensors: dtName) else {
                throw MM1Error(file: path, tensor: name, "unknown or unsupported dtype '\(dtName)'")
            }
            guard let shapeArr = d["shape"] as? [Any] else {
                throw MM1Error(file: path, tensor: name, "missing or non-array 'shape'")
            }
            var shape: [Int] = []
            for s in shapeArr {
                guard let v = jsonInt(s), v >= 0 else {
                    throw MM1Error(file: path, tensor: name, "shape \(shapeArr) has a non-integer or negative dimension")
                }
                shape.append(v)
            }
            guard let offs = d["data_offsets"] as? [Any], offs.count == 2,
                let begin = jsonInt(offs[0]), let end = jsonInt(offs[1]), begin >= 0, end >= 0
            else {
                throw MM1Error(file: path, tensor: name, "'data_offsets' must be [begin, end] with non-negative integers")
            }
            guard begin <= end else {
                throw MM1Error(file: path, tensor: name, "data_offsets [\(begin), \(end)] has begin after end")
            }
            guard let numel = checkedElementCount(shape) else {
                throw MM1Error(file: path, tensor: name, "shape \(shape) overflows the element count")
            }
            let (need, o) = numel.multipliedReportingOverflow(by: dtype.byteSize)
            guard !o else {
                throw MM1Error(file: path, tensor: name, "shape \(shape) × \(dtName) overflows the byte count")
            }
            guard end - begin == need else {
                throw MM1Error(
                    file: path, tensor: name,
                    "data length \(end - begin) bytes (offsets [\(begin), \(end)]) does not match shape \(shape) × "
                        + "\(dtName) = \(need) bytes")
            }
            raws.append(Raw(name: name, dtype: dtype, shape: shape, begin: begin, end: end))
        }

        raws.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        let bufferSize = fileSize - 8 - n
        if let last = raws.max(by: { $0.end < $1.end }), last.end > bufferSize {
            throw MM1Error(
                file: path, tensor: last.name,
                "file is truncated: tensor data ends at byte \(8 + n + last.end) but the file has \(fileSize) bytes "
                    + "(expected \(8 + n + last.end), missing \(last.end - bufferSize))")
        }
        var expected = 0
        var previous: Raw?
        for r in raws {
            if r.begin > expected {
                let after = previous.map { "after tensor '\($0.name)' (ends at \($0.end))" } ?? "at the start of the data"
                throw MM1Error(
                    file: path, tensor: r.name,
                    "gap of \(r.begin - expected) bytes in the data buffer \(after), before this tensor (starts at "
                        + "\(r.begin))")
            }
            if r.begin < expected, let p = previous {
                throw MM1Error(
                    file: path, tensor: r.name,
                    "data [\(r.begin), \(r.end)) overlaps tensor '\(p.name)' [\(p.begin), \(p.end))")
            }
            expected = r.end
            previous = r
        }
        if expected != bufferSize {
            throw MM1Error(
                file: path,
                "\(bufferSize - expected) trailing bytes after the last tensor (data ends at byte \(8 + n + expected), "
                    + "file has \(fileSize) bytes)")
        }
        let tensors = raws.map {
            ParsedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape, offset: 8 + n + $0.begin, byteCount: $0.end - $0.begin)
        }
        return ParsedFile(tensors: tensors, metadata: meta)
    }
}

// MARK: - JSON helpers shared by the readers

/// True for a JSON `true`/`false` parsed by JSONSerialization.
func jsonIsBool(_ v: Any) -> Bool {
    guard let n = v as? NSNumber else { return false }
    return String(cString: n.objCType) == "c"
}

/// An exact JSON integer (not a bool, not a float).
func jsonInt(_ v: Any) -> Int? {
    // Foundation gives JSON numbers and booleans as NSNumber (`is Bool` holds for 0 and 1 too); booleans are the
    // ones whose objCType is "c".
    guard let n = v as? NSNumber else { return nil }
    let t = String(cString: n.objCType)
    switch t {
    case "c", "B", "f", "d": return nil
    case "Q", "L":
        let u = n.uint64Value
        return u <= UInt64(Int.max) ? Int(u) : nil
    default:
        return n.intValue
    }
}

/// Finds the first key repeated within one JSON object, at any depth. Foundation's parser keeps only one of
/// duplicate keys silently; formats that forbid them need this pass. Runs on text already accepted as JSON.
enum JSONDuplicateKeyScanner {
    static func firstDuplicate(in bytes: UnsafeRawBufferPointer) -> String? {
        var s = Scanner(bytes: bytes)
        return s.scanValue(depth: 0)
    }

    struct Scanner {
        let bytes: UnsafeRawBufferPointer
        var i = 0

        mutating func skipSpace() {
            while i < bytes.count {
                let c = bytes[i]
                if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { i += 1 } else { break }
            }
        }

        /// Returns a duplicate key found inside the value, or nil.
        mutating func scanValue(depth: Int) -> String? {
            skipSpace()
            guard i < bytes.count, depth < 512 else { return nil }
            switch bytes[i] {
            case UInt8(ascii: "{"):
                i += 1
                var keys = Set<String>()
                while true {
                    skipSpace()
                    guard i < bytes.count else { return nil }
                    if bytes[i] == UInt8(ascii: "}") { i += 1; return nil }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    guard bytes[i] == UInt8(ascii: "\"") else { return nil }
                    let key = scanString()
                    if !keys.insert(key).inserted { return key }
                    skipSpace()
                    if i < bytes.count, bytes[i] == UInt8(ascii: ":") { i += 1 }
                    if let d = scanValue(depth: depth + 1) { return d }
                }
            case UInt8(ascii: "["):
                i += 1
                while true {
                    skipSpace()
                    guard i < bytes.count else { return nil }
                    if bytes[i] == UInt8(ascii: "]") { i += 1; return nil }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    if let d = scanValue(depth: depth + 1) { return d }
                }
            case UInt8(ascii: "\""):
                _ = scanString()
                return nil
            default:
                // number, true, false, null
                while i < bytes.count {
                    let c = bytes[i]
                    if c == UInt8(ascii: ",") || c == UInt8(ascii: "}") || c == UInt8(ascii: "]") || c == 0x20
                        || c == 0x09 || c == 0x0A || c == 0x0D
                    {
                        break
                    }
                    i += 1
                }
                return nil
            }
        }

        /// Decodes a string starting at the opening quote (escapes resolved, so "a" and "\u0061" compare equal).
        mutating func scanString() -> String {
            i += 1
            var out: [UInt8] = []
            var utf16: [UInt16] = []
            func flushUTF16(_ out: inout [UInt8], _ utf16: inout [UInt16]) {
                if utf16.isEmpty { return }
                out.append(contentsOf: Array(String(decoding: utf16, as: UTF16.self).utf8))
                utf16.removeAll()
            }
            while i < bytes.count {
                let c = bytes[i]
                if c == UInt8(ascii: "\"") { i += 1; break }
                if c == UInt8(ascii: "\\"), i + 1 < bytes.count {
                    let e = bytes[i + 1]
                    i += 2
                    if e == UInt8(ascii: "u"), i + 4 <= bytes.count {
                        var v: UInt16 = 0
                        for k in 0..<4 {
                            let h = bytes[i + k]
                            let d: UInt16
                            switch h {
                            case 0x30...0x39: d = UInt16(h - 0x30)
                            case 0x41...0x46: d = UInt16(h - 0x41 + 10)
                            case 0x61...0x66: d = UInt16(h - 0x61 + 10)
                            default: d = 0
                            }
                            v = v << 4 | d
                        }
                        i += 4
                        utf16.append(v)
                        continue
                    }
                    flushUTF16(&out, &utf16)
                    switch e {
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    default: out.append(e)
                    }
                    continue
                }
                flushUTF16(&out, &utf16)
                out.append(c)
                i += 1
            }
            flushUTF16(&out, &utf16)
            return String(decoding: out, as: UTF8.self)
        }
    }
}
