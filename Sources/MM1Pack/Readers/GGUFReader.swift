import CKernels
import Foundation

/// Reads a llama.cpp GGUF file (versions 2 and 3) as a `TensorSource`.
///
/// The file is memory-mapped and validated when opened: magic, version, key/tensor counts bounded by the file
/// size, string and array lengths, value types, no duplicate keys or tensor names, `general.alignment` a power of
/// two, tensor ranks 1–4, the innermost dimension a whole number of blocks, element and byte counts without
/// overflow, every tensor's data aligned, inside the file and not overlapping another's. Every error names the
/// file, the key or tensor, and what is wrong.
///
/// Tensors are presented in NumPy order (the reverse of ggml's `ne[]`), so a linear weight is `[out, in]`.
/// F32, F16 and BF16 tensors are listed with their own dtype and read unchanged; quantized ones (Q8_0, Q4_0,
/// Q4_1, Q4_K, Q6_K) are listed as f32 and dequantized row by row when read.
public final class GGUFReader: FileBackedTensorSource, @unchecked Sendable {
    public static let magic: UInt32 = 0x4655_4747  // "GGUF" little-endian
    public static let defaultAlignment = 32
    public static let maxNameBytes = 64
    static let maxArrayDepth = 8
    /// Metadata array elements in all (a vocabulary and its merges are a few hundred thousand); bounds the memory a
    /// hostile header can make the reader allocate.
    public static let maxMetadataElements = 1 << 24

    public struct TensorEntry: Sendable {
        public var name: String
        /// ggml type number.
        public var type: UInt32
        /// NumPy order (outermost first).
        public var shape: [Int]
        /// Absolute offset of the data in the file.
        public var offset: Int
        public var byteCount: Int
        public var typeName: String { GGMLType.name(type) }
        public var isQuantized: Bool { ![0, 1, 30].contains(type) }
    }

    public let root: String
    public let files: [String]
    public let path: String
    public let version: UInt32
    public let alignment: Int
    /// Offset of the data section.
    public let dataOffset: Int
    /// Every metadata key, in file order.
    public let keys: [String]
    public let metadata: [String: GGUFValue]
    /// Tensors in file order.
    public let entries: [TensorEntry]
    public let tensors: [String: SourceTensorInfo]
    private let byName: [String: Int]
    private let file: MappedFile

    public init(path: String) throws {
        self.path = path
        let url = URL(fileURLWithPath: path)
        root = url.deletingLastPathComponent().path
        files = [url.lastPathComponent]
        file = try MappedFile(path: path)
        var c = Cursor(bytes: file.bytes, path: path)

        guard file.size >= 24 else {
            throw MM1Error(file: path, "is \(file.size) bytes, too short for a GGUF header (24 bytes)")
        }
        let m = try c.u32("the magic")
        guard m == GGUFReader.magic else {
            throw MM1Error(file: path, String(format: "is not a GGUF file (magic 0x%08x, expected 0x%08x \"GGUF\")", m, GGUFReader.magic))
        }
        let v = try c.u32("the version")
        guard v == 2 || v == 3 else {
            if v.byteSwapped == 2 || v.byteSwapped == 3 {
                throw MM1Error(file: path, "is a big-endian GGUF (version \(v.byteSwapped) byte-swapped); only little-endian files are supported")
            }
            throw MM1Error(file: path, "GGUF version \(v) is not supported (2 or 3)")
        }
        version = v
        let tensorCount = try c.u64("the tensor count")
        let kvCount = try c.u64("the metadata key count")
        // The smallest key-value pair is 13 bytes (8-byte length, empty key, 4-byte type, 1-byte value); the
        // smallest tensor info 32 bytes (8-byte length, empty name, n_dims, one dim, type, offset).
        guard kvCount <= UInt64(c.remaining / 13) else {
            throw MM1Error(file: path, "claims \(kvCount) metadata keys, more than its \(file.size) bytes can hold")
        }

        var keys: [String] = []
        var meta: [String: GGUFValue] = [:]
        for i in 0..<Int(kvCount) {
            let key = try c.string("the name of metadata key \(i)")
            let type = try c.u32("the type of metadata key '\(key)'")
            let value = try c.value(type: type, what: "metadata key '\(key)'", depth: 0)
            guard meta[key] == nil else { throw MM1Error(file: path, "metadata key '\(key)' appears twice") }
            meta[key] = value
            keys.append(key)
        }
        self.keys = keys
        metadata = meta
        guard tensorCount <= UInt64(c.remaining / 32) else {
            throw MM1Error(file: path, "claims \(tensorCount) tensors, more than the \(c.remaining) bytes after its metadata can hold")
        }

        var align = GGUFReader.defaultAlignment
        if let a = meta["general.alignment"] {
            guard case .u32(let x) = a, x > 0, x <= 1 << 30, x & (x - 1) == 0 else {
                throw MM1Error(file: path, "general.alignment is \(a), not a power of two (u32)")
            }
            align = Int(x)
        }
        alignment = align

        struct RawInfo { var name: String; var dims: [Int]; var type: UInt32; var offset: UInt64 }
        var raw: [RawInfo] = []
        var seen = Set<String>()
        for i in 0..<Int(tensorCount) {
            let name = try c.string("the name of tensor \(i)")
            guard name.utf8.count <= GGUFReader.maxNameBytes else {
                throw MM1Error(file: path, tensor: name, "name is \(name.utf8.count) bytes, more than GGUF's \(GGUFReader.maxNameBytes)")
            }
            guard seen.insert(name).inserted else { throw MM1Error(file: path, tensor: name, "appears twice in the tensor list") }
            let nd = try c.u32("the rank of tensor '\(name)'")
            guard nd >= 1 && nd <= 4 else { throw MM1Error(file: path, tensor: name, "has \(nd) dimensions (GGUF allows 1 to 4)") }
            var dims: [Int] = []
            for k in 0..<Int(nd) {
                let d = try c.u64("dimension \(k) of tensor '\(name)'")
                guard d >= 1, d <= UInt64(Int.max) else {
                    throw MM1Error(file: path, tensor: name, "dimension \(k) is \(d) (must be at least 1)")
                }
                dims.append(Int(d))
            }
            let type = try c.u32("the type of tensor '\(name)'")
            let offset = try c.u64("the offset of tensor '\(name)'")
            raw.append(RawInfo(name: name, dims: dims, type: type, offset: offset))
        }
        // The data section starts at the next multiple of the alignment.
        let infoEnd = c.position
        let (dataStart, o1) = infoEnd.addingReportingOverflow((align - infoEnd % align) % align)
        guard !o1, dataStart <= file.size else {
            throw MM1Error(file: path, "is truncated: the data section would start at byte \(dataStart) of \(file.size)")
        }
        dataOffset = dataStart

        var entries: [TensorEntry] = []
        var infos: [String: SourceTensorInfo] = [:]
        var byName: [String: Int] = [:]
        for r in raw {
            guard let type = GGMLType(rawValue: r.type) else {
                throw MM1Error(file: path, tensor: r.name, "has type \(GGMLType.name(r.type)) (\(r.type)), which mm1pack cannot read (supported: \(GGMLType.allCases.map(\.description).joined(separator: ", ")))")
            }
            let geo = (block: type.blockSize, bytes: type.blockBytes)
            guard r.dims[0] % geo.block == 0 else {
                throw MM1Error(file: path, tensor: r.name, "innermost dimension \(r.dims[0]) is not a multiple of the \(type) block size \(geo.block)")
            }
            let shape = Array(r.dims.reversed())
            guard let count = checkedElementCount(shape) else {
                throw MM1Error(file: path, tensor: r.name, "shape \(shape) has too many elements")
            }
            let (bytes, o2) = (count / geo.block).multipliedReportingOverflow(by: geo.bytes)
            guard !o2 else { throw MM1Error(file: path, tensor: r.name, "byte size overflows") }
            guard r.offset % UInt64(align) == 0 else {
                throw MM1Error(file: path, tensor: r.name, "data offset \(r.offset) is not a multiple of the alignment \(align)")
            }
            guard r.offset <= UInt64(file.size - dataStart), bytes <= file.size - dataStart - Int(r.offset) else {
                throw MM1Error(file: path, tensor: r.name, "data (\(bytes) bytes of \(GGMLType.name(r.type)) \(shape) at data offset \(r.offset)) runs past the end of the file (\(file.size - dataStart) bytes of data); the file is truncated or the offset is wrong")
            }
            let e = TensorEntry(name: r.name, type: r.type, shape: shape, offset: dataStart + Int(r.offset), byteCount: bytes)
            byName[r.name] = entries.count
            entries.append(e)
            let dtype: DType = r.type == 1 ? .f16 : (r.type == 30 ? .bf16 : .f32)
            infos[r.name] = SourceTensorInfo(name: r.name, dtype: dtype, shape: shape, file: files[0])
        }
        let sorted = entries.filter { $0.byteCount > 0 }.sorted { $0.offset < $1.offset }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.offset + a.byteCount > b.offset {
            throw MM1Error(file: path, tensor: b.name, "data overlaps tensor '\(a.name)' (offsets \(a.offset - dataStart) + \(a.byteCount) > \(b.offset - dataStart))")
        }
        self.entries = entries
        self.byName = byName
        tensors = infos
    }

    public func entry(_ name: String) -> TensorEntry? { byName[name].map { entries[$0] } }

    // MARK: TensorSource

    public func read(_ name: String, lower: [Int], upper: [Int], into: UnsafeMutableRawBufferPointer) throws {
        guard let e = entry(name), let info = tensors[name] else { throw MM1Error(file: path, tensor: name, "no such tensor") }
        let extent: [Int]
        do {
            extent = try checkedBox(shape: e.shape, lower: lower, upper: upper, elementSize: info.dtype.byteSize,
                                    bufferCount: into.count)
        } catch let err as MM1Error {
            throw err.inFile(path).forTensor(name)
        }
        if into.count == 0 { return }
        let src = file.slice(offset: e.offset, length: e.byteCount)
        if !e.isQuantized {
            copyBlock(src: src.baseAddress!, srcShape: e.shape, srcLower: lower,
                      dst: into.baseAddress!, dstShape: extent, dstLower: [Int](repeating: 0, count: extent.count),
                      extent: extent, elementSize: info.dtype.byteSize)
            return
        }
        // Quantized: rows (along the innermost axis) are whole numbers of blocks; dequantize each row the box
        // touches and keep the columns it asks for.
        let type = GGMLType(rawValue: e.type)!
        let geo = (block: type.blockSize, bytes: type.blockBytes)
        let rank = e.shape.count
        let cols = e.shape[rank - 1]
        let rowBytes = cols / geo.block * geo.bytes
        let c0 = lower[rank - 1], nc = extent[rank - 1]
        let fullRow = c0 == 0 && nc == cols
        var rowBuf = [Float](repeating: 0, count: fullRow ? 0 : cols)
        let dst = into.baseAddress!.assumingMemoryBound(to: Float.self)
        // Odometer over the outer axes of the box.
        let outer = rank - 1
        var idx = Array(lower[0..<outer])
        var outIndex = 0
        while true {
            var row = 0
            for a in 0..<outer { row = row * e.shape[a] + idx[a] }
            let p = src.baseAddress! + row * rowBytes
            if fullRow {
                guard mm1_gguf_dequant(Int32(e.type), p, cols, dst + outIndex) == 0 else {
                    throw MM1Error(file: path, tensor: name, "cannot dequantize type \(e.typeName)")
                }
            } else {
                try rowBuf.withUnsafeMutableBufferPointer { rb in
                    guard mm1_gguf_dequant(Int32(e.type), p, cols, rb.baseAddress!) == 0 else {
                        throw MM1Error(file: path, tensor: name, "cannot dequantize type \(e.typeName)")
                    }
                    (dst + outIndex).update(from: rb.baseAddress! + c0, count: nc)
                }
            }
            outIndex += nc
            var a = outer - 1
            while a >= 0 {
                idx[a] += 1
                if idx[a] < upper[a] { break }
                idx[a] = lower[a]
                a -= 1
            }
            if a < 0 { break }
        }
    }

    public func mappedBytes(_ name: String) throws -> UnsafeRawBufferPointer? {
        guard let e = entry(name) else { throw MM1Error(file: path, tensor: name, "no such tensor") }
        return e.isQuantized ? nil : file.slice(offset: e.offset, length: e.byteCount)
    }

    public func release(_ name: String) {
        guard let e = entry(name) else { return }
        file.dropPages(offset: e.offset, length: e.byteCount)
    }

    public func fileRange(_ name: String) -> FileRange? {
        guard let e = entry(name), !e.isQuantized else { return nil }
        return FileRange(path: path, offset: e.offset, length: e.byteCount)
    }

    /// The whole tensor dequantized to f32, in NumPy order (for tests and tools).
    public func dequantized(_ name: String) throws -> [Float] {
        guard let e = entry(name) else { throw MM1Error(file: path, tensor: name, "no such tensor") }
        let n = e.shape.reduce(1, *)
        var out = [Float](repeating: 0, count: n)
        let src = file.slice(offset: e.offset, length: e.byteCount)
        let ok = out.withUnsafeMutableBufferPointer { mm1_gguf_dequant(Int32(e.type), src.baseAddress!, n, $0.baseAddress!) }
        guard ok == 0 else { throw MM1Error(file: path, tensor: name, "cannot dequantize type \(e.typeName)") }
        return out
    }
}

/// Bounds-checked little-endian reads over the mapped header.
private struct Cursor {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var position = 0
    /// Array elements read so far.
    var elements = 0

    var remaining: Int { bytes.count - position }

    mutating func take(_ n: Int, _ what: String) throws -> UnsafeRawBufferPointer {
        guard n >= 0, n <= remaining else {
            throw MM1Error(file: path, "is truncated: \(what) needs \(n) bytes at offset \(position), only \(remaining) remain")
        }
        let s = UnsafeRawBufferPointer(rebasing: bytes[position..<(position + n)])
        position += n
        return s
    }

    mutating func u8(_ what: String) throws -> UInt8 { try take(1, what)[0] }
    mutating func u16(_ what: String) throws -> UInt16 { UInt16(littleEndian: try take(2, what).loadUnaligned(as: UInt16.self)) }
    mutating func u32(_ what: String) throws -> UInt32 { UInt32(littleEndian: try take(4, what).loadUnaligned(as: UInt32.self)) }
    mutating func u64(_ what: String) throws -> UInt64 { UInt64(littleEndian: try take(8, what).loadUnaligned(as: UInt64.self)) }

    mutating func string(_ what: String) throws -> String {
        let n = try u64("the length of \(what)")
        guard n <= UInt64(remaining) else {
            throw MM1Error(file: path, "\(what): string length \(n) at offset \(position - 8) runs past the end of the file (\(remaining) bytes remain)")
        }
        let raw = try take(Int(n), what)
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw MM1Error(file: path, "\(what) at offset \(position - Int(n)) is not valid UTF-8")
        }
        return s
    }

    /// Minimum encoded size of one value of a type (for bounding array counts).
    static func minSize(_ type: UInt32) -> Int {
        switch type {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 8, 10, 11, 12: return 8
        case 9: return 12
        default: return 1
        }
    }

    mutating func value(type: UInt32, what: String, depth: Int) throws -> GGUFValue {
        switch type {
        case 0: return .u8(try u8(what))
        case 1: return .i8(Int8(bitPattern: try u8(what)))
        case 2: return .u16(try u16(what))
        case 3: return .i16(Int16(bitPattern: try u16(what)))
        case 4: return .u32(try u32(what))
        case 5: return .i32(Int32(bitPattern: try u32(what)))
        case 6: return .f32(Float(bitPattern: try u32(what)))
        case 7:
            let b = try u8(what)
            guard b <= 1 else { throw MM1Error(file: path, "\(what): bool value \(b) is neither 0 nor 1") }
            return .bool(b == 1)
        case 8: return .string(try string(what))
        case 9:
            guard depth < GGUFReader.maxArrayDepth else {
                throw MM1Error(file: path, "\(what): arrays nested deeper than \(GGUFReader.maxArrayDepth)")
            }
            let et = try u32("the element type of \(what)")
            let n = try u64("the length of \(what)")
            guard et <= 12 else { throw MM1Error(file: path, "\(what): unknown array element type \(et)") }
            guard n <= UInt64(remaining / Cursor.minSize(et)) else {
                throw MM1Error(file: path, "\(what): array of \(n) elements runs past the end of the file (\(remaining) bytes remain)")
            }
            elements += Int(n)
            guard elements <= GGUFReader.maxMetadataElements else {
                throw MM1Error(file: path, "\(what): the metadata arrays hold more than \(GGUFReader.maxMetadataElements) elements in all, more than mm1pack reads")
            }
            var out: [GGUFValue] = []
            out.reserveCapacity(Int(n))
            for i in 0..<Int(n) { out.append(try value(type: et, what: "\(what)[\(i)]", depth: depth + 1)) }
            switch et {
            case 8: return .stringArray(out.map { $0.stringValue! })
            case 5: return .i32Array(out.map { if case .i32(let x) = $0 { return x } else { return 0 } })
            case 6: return .f32Array(out.map { if case .f32(let x) = $0 { return x } else { return 0 } })
            default: return .array(out)
            }
        case 10: return .u64(try u64(what))
        case 11: return .i64(Int64(bitPattern: try u64(what)))
        case 12: return .f64(Double(bitPattern: try u64(what)))
        default:
            throw MM1Error(file: path, "\(what): unknown value type \(type) at offset \(position - 4)")
        }
    }
}
