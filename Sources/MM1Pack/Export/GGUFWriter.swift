import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One tensor of a GGUF file: name, dimensions in ggml order (`ne[0]` is the innermost, fastest-varying axis, the
/// reverse of the row-major shape), type, and a producer that emits exactly the tensor's bytes in order.
public struct GGUFTensorPlan {
    public var name: String
    public var ne: [Int]
    public var type: GGMLType
    /// Writes the tensor's bytes, in pieces, through the given sink. Must emit exactly `byteCount` bytes.
    public var produce: (_ sink: (UnsafeRawBufferPointer) throws -> Void) throws -> Void

    public init(name: String, ne: [Int], type: GGMLType,
                produce: @escaping (_ sink: (UnsafeRawBufferPointer) throws -> Void) throws -> Void) {
        self.name = name
        self.ne = ne
        self.type = type
        self.produce = produce
    }

    /// Rows of `ne[0]` elements.
    public var rows: Int { ne.dropFirst().reduce(1, *) }
    public var byteCount: Int { rows * type.rowBytes(ne[0]) }
}

/// Writes a GGUF version 3 file (little-endian) in one streaming pass: header, metadata, tensor infos, padding to
/// `general.alignment`, then each tensor's bytes at its aligned offset. The file is written under a temporary name
/// in the output's directory and renamed into place only when every byte is written; on any error the temporary
/// file is removed, so no partial output is ever left at the final path.
public enum GGUFWriter {
    public static let magic: [UInt8] = [0x47, 0x47, 0x55, 0x46]  // "GGUF"
    public static let version: UInt32 = 3
    public static let alignment = 32
    /// ggml's `GGML_MAX_NAME`: a tensor name must be shorter than this many bytes.
    public static let maxNameBytes = 64
    public static let maxDims = 4

    /// Serializes the header, metadata and tensor infos (everything before the data section's padding).
    /// `metadata` must not contain `general.alignment` (it is added first).
    public static func headerBytes(metadata: [(String, GGUFValue)], tensors: [GGUFTensorPlan]) throws -> (bytes: [UInt8], offsets: [Int]) {
        var b = ByteSink()
        b.bytes(magic)
        b.u32(version)
        b.u64(UInt64(tensors.count))
        let kvs: [(String, GGUFValue)] = [("general.alignment", .u32(UInt32(alignment)))] + metadata
        var seen = Set<String>()
        for (k, _) in kvs where !seen.insert(k).inserted {
            throw MM1Error("GGUF metadata key '\(k)' is written twice")
        }
        b.u64(UInt64(kvs.count))
        for (k, v) in kvs {
            b.string(k)
            b.u32(v.typeCode)
            b.value(v)
        }
        var names = Set<String>()
        var offsets: [Int] = []
        var pos = 0
        for t in tensors {
            guard t.name.utf8.count < maxNameBytes else {
                throw MM1Error(tensor: t.name, "GGUF tensor names must be shorter than \(maxNameBytes) bytes")
            }
            guard names.insert(t.name).inserted else { throw MM1Error(tensor: t.name, "GGUF tensor name used twice") }
            guard (1...maxDims).contains(t.ne.count), t.ne.allSatisfy({ $0 >= 1 }) else {
                throw MM1Error(tensor: t.name, "GGUF needs 1 to \(maxDims) dimensions of at least 1, not \(t.ne)")
            }
            guard t.ne[0] % t.type.blockSize == 0 else {
                throw MM1Error(tensor: t.name, "\(t.type) needs rows of a multiple of \(t.type.blockSize) elements, not \(t.ne[0])")
            }
            b.string(t.name)
            b.u32(UInt32(t.ne.count))
            for d in t.ne { b.u64(UInt64(d)) }
            b.u32(t.type.rawValue)
            b.u64(UInt64(pos))
            offsets.append(pos)
            pos = align(pos + t.byteCount)
        }
        return (b.data, offsets)
    }

    static func align(_ x: Int) -> Int { (x + alignment - 1) / alignment * alignment }

    /// Writes the whole file to `path`. `progress` is told the cumulative number of data bytes after each tensor.
    /// Returns the file size.
    @discardableResult
    public static func write(path: String, metadata: [(String, GGUFValue)], tensors: [GGUFTensorPlan],
                             progress: ((_ tensorIndex: Int, _ bytes: Int) -> Void)? = nil) throws -> Int {
        let (header, offsets) = try headerBytes(metadata: metadata, tensors: tensors)
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        let temp = dir + "/." + url.lastPathComponent + ".tmp-\(getpid())"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else {
            throw MM1Error(file: path, "cannot create the temporary output \(temp): \(String(cString: strerror(errno)))")
        }
        TemporaryFiles.add(temp)
        var out = BufferedFile(fd: fd, path: path)
        var finished = false
        defer {
            if !finished {
                close(fd)
                unlink(temp)
            }
            TemporaryFiles.remove(temp)
        }
        try out.write(header)
        let dataStart = align(header.count)
        try out.zeros(dataStart - header.count)
        var pos = 0
        for (i, t) in tensors.enumerated() {
            precondition(pos == offsets[i])
            var n = 0
            do {
                try t.produce { chunk in
                    n += chunk.count
                    try out.write(chunk)
                }
            } catch let e as MM1Error {
                throw e.forTensor(t.name).inFile(path)
            }
            guard n == t.byteCount else {
                throw MM1Error(file: path, tensor: t.name, "internal error: produced \(n) bytes, expected \(t.byteCount) for \(t.type) \(t.ne)")
            }
            pos += n
            let padded = align(pos)
            try out.zeros(padded - pos)
            pos = padded
            progress?(i, pos)
        }
        try out.flush()
        guard fsync(fd) == 0 else { throw MM1Error(file: path, "fsync failed: \(String(cString: strerror(errno)))") }
        guard close(fd) == 0 else {
            unlink(temp)
            finished = true
            throw MM1Error(file: path, "close failed: \(String(cString: strerror(errno)))")
        }
        finished = true
        guard rename(temp, path) == 0 else {
            let msg = String(cString: strerror(errno))
            unlink(temp)
            throw MM1Error(file: path, "cannot rename the finished file into place: \(msg)")
        }
        return dataStart + pos
    }
}

/// Little-endian serialization of the GGUF header.
struct ByteSink {
    var data: [UInt8] = []

    mutating func bytes(_ b: [UInt8]) { data.append(contentsOf: b) }
    mutating func u8(_ v: UInt8) { data.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    mutating func string(_ s: String) {
        u64(UInt64(s.utf8.count))
        data.append(contentsOf: s.utf8)
    }

    mutating func value(_ v: GGUFValue) {
        switch v {
        case .u8(let x): u8(x)
        case .i8(let x): u8(UInt8(bitPattern: x))
        case .u16(let x): u16(x)
        case .i16(let x): u16(UInt16(bitPattern: x))
        case .u32(let x): u32(x)
        case .i32(let x): u32(UInt32(bitPattern: x))
        case .f32(let x): u32(x.bitPattern)
        case .bool(let x): u8(x ? 1 : 0)
        case .string(let s): string(s)
        case .u64(let x): u64(x)
        case .i64(let x): u64(UInt64(bitPattern: x))
        case .f64(let x): u64(x.bitPattern)
        case .stringArray(let a):
            u32(8)
            u64(UInt64(a.count))
            for s in a { string(s) }
        case .i32Array(let a):
            u32(5)
            u64(UInt64(a.count))
            for x in a { u32(UInt32(bitPattern: x)) }
        case .f32Array(let a):
            u32(6)
            u64(UInt64(a.count))
            for x in a { u32(x.bitPattern) }
        case .array(let a):
            // Elements share one type (the first's; an empty array is written as u8).
            u32(a.first?.typeCode ?? 0)
            u64(UInt64(a.count))
            for x in a { value(x) }  // a nested array's payload carries its own element type and count
        }
    }
}

/// A write buffer over a file descriptor (1 MiB), retrying short writes.
struct BufferedFile {
    let fd: Int32
    let path: String
    var buffer = [UInt8]()
    static let capacity = 1 << 20

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
        buffer.reserveCapacity(BufferedFile.capacity)
    }

    mutating func write(_ b: [UInt8]) throws { try b.withUnsafeBytes { try write($0) } }

    mutating func write(_ b: UnsafeRawBufferPointer) throws {
        if buffer.count + b.count > BufferedFile.capacity { try flush() }
        if b.count >= BufferedFile.capacity {
            try raw(b)
        } else {
            buffer.append(contentsOf: b)
        }
    }

    mutating func zeros(_ n: Int) throws {
        if n > 0 { try write([UInt8](repeating: 0, count: n)) }
    }

    mutating func flush() throws {
        try buffer.withUnsafeBytes { try raw($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func raw(_ b: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < b.count {
            let n = sysWrite(fd, b.baseAddress! + done, b.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw MM1Error(file: path, "write failed: \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }
}

@inline(__always) private func sysWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, p, n)
    #else
    return Darwin.write(fd, p, n)
    #endif
}
