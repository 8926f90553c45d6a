import Foundation

/// Reads an AXLearn TensorStore checkpoint (`checkpoints/step_XXXXXXXX/`).
///
/// Layout (apple/axlearn `axlearn/common/checkpointer.py`, `TensorStoreStateStorage`):
/// - `index`: written last, as the commit marker, with `json.dumps` of a list of `[path, value]` pairs. The first
///   is `["step", n]`; an array leaf is `[path, {"dtype": str(dtype), "shape": str(tuple(shape))}]`, so dtype is a
///   numpy name such as `"float32"` or `"bfloat16"` and shape a Python tuple string such as `"(4, 8)"`, `"(5,)"`
///   or `"()"`; tf.data iterators are `[path, "<class ...>"]`; other leaves are stored as their value.
/// - `gda/<path>/`: one zarr v2 array per array leaf (`.zarray` + chunk files, zstd, chunks = per-device shard).
///
/// Only `model/...` arrays become tensors; every other index path (learner/optimizer state, `prng_key`, the step,
/// iterators) is listed in `ignoredPaths`.
public final class AXLearnReader: TensorSource, @unchecked Sendable {
    /// The step directory read.
    public let root: String
    public let step: Int?
    public let tensors: [String: SourceTensorInfo]
    public let files: [String]
    /// Index paths that are not model tensors, in index order.
    public let ignoredPaths: [String]

    private let arrays: [String: ZarrArray]

    /// Opens a step directory (`.../checkpoints/step_00001000`), or a `checkpoints/` directory (or the trainer
    /// directory above it), in which case the highest step with an `index` file is read.
    public init(path: String, missingChunks: ZarrArray.MissingChunkPolicy = .error) throws {
        let stepDir = try AXLearnReader.resolveStepDirectory(path)
        self.root = stepDir
        let indexPath = (stepDir as NSString).appendingPathComponent("index")
        let index = try AXLearnReader.parseIndex(indexPath)
        self.step = index.step

        var tensors: [String: SourceTensorInfo] = [:]
        var arrays: [String: ZarrArray] = [:]
        var files = ["index"]
        for entry in index.arrays where entry.path.hasPrefix("model/") {
            let rel = "gda/" + entry.path
            let dir = (stepDir as NSString).appendingPathComponent(rel)
            guard let dtype = entry.dtype else {
                throw MM1Error(file: indexPath, tensor: entry.path, "unknown or unsupported dtype '\(entry.dtypeName)'")
            }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                throw MM1Error(file: rel, tensor: entry.path, "array directory is missing (\(dir))")
            }
            let array: ZarrArray
            do {
                array = try ZarrArray(directory: dir, displayName: rel, missingChunks: missingChunks)
            } catch let e as MM1Error {
                throw e.forTensor(entry.path)
            }
            guard array.dtype == dtype, array.shape == entry.shape else {
                throw MM1Error(
                    file: rel + "/.zarray", tensor: entry.path,
                    "index says \(entry.dtypeName) \(entry.shape) but the zarr array is \(array.dtype.rawValue) "
                        + "\(array.shape)")
            }
            files.append(rel + "/.zarray")
            // Check the chunk files now, so that an incomplete checkpoint fails before any conversion work.
            guard let count = array.chunkCount, count <= 16_000_000 else {
                throw MM1Error(file: rel + "/.zarray", tensor: entry.path, "chunk grid \(array.chunkGrid) is too large")
            }
            for ci in array.allChunkIndices() {
                let key = array.chunkKey(ci)
                if FileManager.default.fileExists(atPath: array.chunkPath(ci)) {
                    files.append(rel + "/" + key)
                } else if array.fillValue == nil && missingChunks == .error {
                    throw MM1Error(
                        file: rel + "/" + key, tensor: entry.path,
                        "chunk \(ci) is missing and fill_value is null (incomplete checkpoint? TensorStore also "
                            + "omits all-zero chunks; read missing chunks as zeros only if the checkpoint is known "
                            + "complete)")
                }
            }
            arrays[entry.path] = array
            tensors[entry.path] = SourceTensorInfo(name: entry.path, dtype: dtype, shape: entry.shape, file: rel)
        }
        self.tensors = tensors
        self.arrays = arrays
        self.files = files
        self.ignoredPaths = index.allPaths.filter { tensors[$0] == nil }
    }

    // MARK: TensorSource

    public func read(_ name: String, lower: [Int], upper: [Int], into: UnsafeMutableRawBufferPointer) throws {
        guard let a = arrays[name] else { throw MM1Error(file: root, tensor: name, "no such tensor") }
        do {
            try a.read(lower: lower, upper: upper, into: into)
        } catch let e as MM1Error {
            throw e.forTensor(name)
        }
    }

    public func mappedBytes(_ name: String) throws -> UnsafeRawBufferPointer? {
        guard arrays[name] != nil else { throw MM1Error(file: root, tensor: name, "no such tensor") }
        return nil
    }

    public func release(_ name: String) {
        arrays[name]?.dropCache()
    }

    /// The zarr array behind a tensor (chunking details, for planning reads).
    public func array(_ name: String) -> ZarrArray? { arrays[name] }

    // MARK: Directory resolution

    static func resolveStepDirectory(_ path: String) throws -> String {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw MM1Error(file: path, "not a directory")
        }
        let indexPath = (path as NSString).appendingPathComponent("index")
        var indexIsDir: ObjCBool = false
        if fm.fileExists(atPath: indexPath, isDirectory: &indexIsDir) {
            if indexIsDir.boolValue {
                throw MM1Error(
                    file: indexPath,
                    "'index' is a directory: this looks like an Orbax checkpoint, which is not supported (only "
                        + "AXLearn's TensorStore checkpointer layout)")
            }
            return path
        }
        var base = path
        let sub = (path as NSString).appendingPathComponent("checkpoints")
        if fm.fileExists(atPath: sub, isDirectory: &isDir), isDir.boolValue { base = sub }
        let names = (try? fm.contentsOfDirectory(atPath: base)) ?? []
        var complete: [(Int, String)] = []
        var incomplete: [String] = []
        for n in names where n.hasPrefix("step_") {
            let digits = n.dropFirst(5)
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let s = Int(digits) else { continue }
            let dir = (base as NSString).appendingPathComponent(n)
            var d: ObjCBool = false
            let idx = (dir as NSString).appendingPathComponent("index")
            if fm.fileExists(atPath: idx, isDirectory: &d), !d.boolValue {
                complete.append((s, dir))
            } else {
                incomplete.append(n)
            }
        }
        guard let best = complete.max(by: { $0.0 < $1.0 }) else {
            if incomplete.isEmpty {
                throw MM1Error(file: path, "no 'index' file and no step_XXXXXXXX checkpoint directories")
            }
            throw MM1Error(
                file: base,
                "no complete checkpoint: \(incomplete.sorted().joined(separator: ", ")) lack the 'index' file that "
                    + "AXLearn writes last")
        }
        return best.1
    }

    // MARK: Index

    struct IndexArray {
        var path: String
        var dtypeName: String
        var dtype: DType?
        var shape: [Int]
    }

    struct Index {
        var step: Int?
        var arrays: [IndexArray]
        var allPaths: [String]
    }

    /// numpy/jax dtype names as `str(dtype)` prints them.
    static func dtype(numpyName s: String) -> DType? {
        switch s {
        case "float32": return .f32
        case "float16": return .f16
        case "bfloat16": return .bf16
        case "float64": return .f64
        case "int8": return .i8
        case "int16": return .i16
        case "int32": return .i32
        case "int64": return .i64
        case "uint8": return .u8
        case "uint16": return .u16
        case "uint32": return .u32
        case "uint64": return .u64
        case "bool": return .bool
        default: return nil
        }
    }

    /// Parses `"(4, 8)"`, `"(5,)"`, `"()"` (what AXLearn writes); a JSON list of integers is accepted too.
    static func parseShape(_ v: Any) -> [Int]? {
        if let list = v as? [Any] {
            var out: [Int] = []
            for x in list {
                guard let i = jsonInt(x), i >= 0 else { return nil }
                out.append(i)
            }
            return out
        }
        guard let s = v as? String else { return nil }
        let t = s.trimmingCharacters(in: .whitespaces)
        guard t.hasPrefix("("), t.hasSuffix(")"), t.count >= 2 else { return nil }
        let inner = t.dropFirst().dropLast()
        var out: [Int] = []
        let parts = inner.split(separator: ",", omittingEmptySubsequences: false)
        for (k, p) in parts.enumerated() {
            let q = p.trimmingCharacters(in: .whitespaces)
            if q.isEmpty {
                // only a trailing comma ("(5,)") or an empty tuple ("()") may leave an empty part
                if k == parts.count - 1 { continue }
                return nil
            }
            guard q.allSatisfy({ $0.isASCII && $0.isNumber }), let i = Int(q) else { return nil }
            out.append(i)
        }
        return out
    }

    static func parseIndex(_ path: String) throws -> Index {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MM1Error(file: path, "cannot read the checkpoint index")
        }
        let obj: Any
        do { obj = try JSONSerialization.jsonObject(with: data) } catch {
            throw MM1Error(file: path, "index is not valid JSON: \(error.localizedDescription)")
        }
        guard let list = obj as? [Any] else { throw MM1Error(file: path, "index is not a JSON list") }
        var step: Int?
        var arrays: [IndexArray] = []
        var all: [String] = []
        var seen = Set<String>()
        for (i, item) in list.enumerated() {
            guard let pair = item as? [Any], pair.count == 2, let p = pair[0] as? String else {
                throw MM1Error(file: path, "index entry \(i) is not a [path, value] pair")
            }
            guard seen.insert(p).inserted else { throw MM1Error(file: path, tensor: p, "path listed twice in the index") }
            all.append(p)
            let value = pair[1]
            if p == "step" {
                step = jsonInt(value)
                continue
            }
            guard let spec = value as? [String: Any], spec["dtype"] != nil || spec["shape"] != nil else { continue }
            guard let dn = spec["dtype"] as? String else {
                throw MM1Error(file: path, tensor: p, "index entry has no dtype string")
            }
            guard let shapeValue = spec["shape"], let shape = parseShape(shapeValue) else {
                throw MM1Error(file: path, tensor: p, "index entry has an unreadable shape \(spec["shape"] ?? "nil")")
            }
            for comp in p.split(separator: "/", omittingEmptySubsequences: false)
            where comp.isEmpty || comp == ".." || comp == "." {
                throw MM1Error(file: path, tensor: p, "path has an empty, '.' or '..' component")
            }
            arrays.append(IndexArray(path: p, dtypeName: dn, dtype: dtype(numpyName: dn), shape: shape))
        }
        return Index(step: step, arrays: arrays, allPaths: all)
    }
}
