import Crypto
import Foundation

/// Which digest the provenance records for each source file (formats/bundle.md §4).
public enum SourceDigestKind: String, CaseIterable, Sendable {
    /// `.safetensors` files get `sha256_segments`, which reuses the bundle's tensor digests for every tensor copied
    /// unchanged, so only headers and converted tensors are read a second time; other files get `sha256`.
    case segments
    /// `sha256` of every whole file, the digest model hubs list; one more hashing pass over the whole source.
    case full
    /// Paths and sizes only.
    case none
}

/// The provenance's `source_files`: each file's digest, computed on a background thread while conversion runs.
///
/// With `.segments`, a safetensors file is cut into its header, its tensors' data ranges and any bytes between
/// them; a tensor that some bundle tensor holds byte for byte already has its SHA-256 in the bundle's table, so
/// only the other segments are hashed here, and `finish` fills in the rest from the writer's digests.
final class FileDigests: @unchecked Sendable {
    static let segmentsKey = "sha256_segments"
    static let fullKey = "sha256"

    struct Segment {
        var offset: Int
        var length: Int
        /// The source tensor whose stored bytes these are; nil for the header and for bytes between tensors.
        var tensor: String?
    }

    struct FilePlan {
        var path: String
        var size: Int
        /// nil: the file is hashed whole.
        var segments: [Segment]?
    }

    let root: String
    let kind: SourceDigestKind
    /// Source tensors whose bytes the bundle holds unchanged; their segment digests come from the bundle.
    let unchanged: Set<String>
    let plans: [FilePlan]
    /// Per file, per segment (one for a whole file): the SHA-256 computed here; nil where the bundle supplies it.
    /// Written by the hashing thread only, read after `done`.
    private var computed: [[String?]] = []
    /// Source bytes read and hashed here, on top of what the bundle's tensor digests cover; valid after `finish`.
    private(set) var bytesHashed = 0
    private var failure: MM1Error?
    private let done = DispatchSemaphore(value: 0)
    private let cancelLock = NSLock()
    private var cancelled = false

    init(source: TensorSource, kind: SourceDigestKind, unchanged: Set<String>) throws {
        root = source.root
        self.kind = kind
        self.unchanged = kind == .segments ? unchanged : []
        plans = try source.files.sorted().map { f in
            let path = source.root + "/" + f
            guard kind == .segments, f.hasSuffix(".safetensors") else { return FilePlan(path: f, size: FileDigests.size(path)) }
            let m = try MappedFile(path: path)
            return FilePlan(path: f, size: m.size, segments: try FileDigests.segments(m, tensors: source.tensors, file: f))
        }
    }

    /// The safetensors file's segments in offset order: the header (length prefix and JSON), then each non-empty
    /// tensor's data range, with any bytes not covered by a tensor (none in a file the reader accepts) as segments
    /// of their own.
    static func segments(_ m: MappedFile, tensors: [String: SourceTensorInfo], file: String) throws -> [Segment] {
        let parsed = try SafetensorsReader.parse(m)
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(m.bytes[i]) << (8 * UInt64(i)) }
        var out = [Segment(offset: 0, length: 8 + Int(n), tensor: nil)]
        var pos = 8 + Int(n)
        for t in parsed.tensors.filter({ $0.byteCount > 0 }).sorted(by: { $0.offset < $1.offset }) {
            guard t.offset >= pos else { throw MM1Error(file: m.path, tensor: t.name, "overlaps the previous tensor's bytes") }
            if t.offset > pos { out.append(Segment(offset: pos, length: t.offset - pos, tensor: nil)) }
            // Only a tensor the source lists from this very file can be matched with a bundle tensor.
            let own = tensors[t.name]?.file == file ? t.name : nil
            out.append(Segment(offset: t.offset, length: t.byteCount, tensor: own))
            pos = t.offset + t.byteCount
        }
        if m.size > pos { out.append(Segment(offset: pos, length: m.size - pos, tensor: nil)) }
        return out
    }

    /// The key holding a file's digest, or nil when none is recorded.
    private func key(_ p: FilePlan) -> String? {
        kind == .none ? nil : (p.segments == nil ? FileDigests.fullKey : FileDigests.segmentsKey)
    }

    /// The entries with zero digests of the final width, so the header's length is known before the digests are.
    func placeholder() -> [[String: Any]] {
        plans.map { p in
            var e: [String: Any] = ["path": p.path, "size": p.size]
            if let k = key(p) { e[k] = String(repeating: "0", count: 64) }
            return e
        }
    }

    static func size(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : -1
    }

    func start() {
        guard kind != .none else {
            done.signal()
            return
        }
        let t = Thread { [self] in
            do {
                try compute()
            } catch {
                failure = (error as? MM1Error) ?? MM1Error("\(error)")
            }
            done.signal()
        }
        t.stackSize = 1 << 20
        t.start()
    }

    /// Stops the hashing early (the conversion failed); `finish` must not be called afterwards.
    func cancel() {
        cancelLock.withLock { cancelled = true }
    }

    private var isCancelled: Bool { cancelLock.withLock { cancelled } }

    private func compute() throws {
        var out: [[String?]] = []
        var hashed = 0
        for p in plans {
            let path = root + "/" + p.path
            let m = try MappedFile(path: path)
            guard m.size == p.size else { throw MM1Error(file: path, "changed while it was being converted") }
            guard let segments = p.segments else {
                out.append([try hash(m, 0, m.size)])
                hashed += m.size
                continue
            }
            out.append(try segments.map { s -> String? in
                if let t = s.tensor, unchanged.contains(t) { return nil }
                hashed += s.length
                return try hash(m, s.offset, s.length)
            })
        }
        computed = out
        bytesHashed = hashed
    }

    /// Hashes through the memory map (no copy into a buffer), dropping each piece's pages once hashed so the
    /// process stays small however large the file. Pieces are small because a piece stays resident until it is
    /// dropped: 64 MB pieces raised the peak RSS of a `full` conversion by 60–70 MB, 8 MB ones cost no time.
    private func hash(_ m: MappedFile, _ offset: Int, _ length: Int) throws -> String {
        let step = 8 << 20
        var h = SHA256()
        var pos = offset
        while pos < offset + length {
            if isCancelled { throw MM1Error(file: m.path, "hashing cancelled") }
            let n = min(step, offset + length - pos)
            h.update(bufferPointer: m.slice(offset: pos, length: n))
            m.dropPages(offset: pos, length: n)
            pos += n
        }
        return hex(h.finalize())
    }

    /// Waits for the hashing, then completes each entry; `unchangedDigests` maps every tensor of `unchanged` to
    /// its bundle tensor's SHA-256.
    func finish(unchangedDigests: [String: String]) throws -> [[String: Any]] {
        done.wait()
        if let failure { throw failure }
        return try plans.enumerated().map { i, p in
            var e: [String: Any] = ["path": p.path, "size": p.size]
            guard let k = key(p) else { return e }
            let path = root + "/" + p.path
            guard FileDigests.size(path) == p.size else { throw MM1Error(file: path, "changed while it was being converted") }
            guard let segments = p.segments else {
                e[k] = computed[i][0]!
                return e
            }
            var list = ""
            for (s, d) in zip(segments, computed[i]) {
                guard let d = d ?? s.tensor.flatMap({ unchangedDigests[$0] }) else {
                    throw MM1Error(file: path, tensor: s.tensor, "internal error: no digest for bytes \(s.offset)..<\(s.offset + s.length)")
                }
                list += "\(s.offset) \(s.length) \(d)\n"
            }
            e[k] = hex(SHA256.hash(data: Array(list.utf8)))
            return e
        }
    }
}
