import CMM1Bundle
import CZstd
import Foundation

/// One entry of a bundle's tensor table (formats/bundle.md §2).
///
/// `data` points into the reader's read-only mapping: it stays valid as long as the `BundleReader` that produced the
/// tensor is alive. The struct is `@unchecked Sendable` because that memory is never written.
public struct BundleTensor: @unchecked Sendable, CustomStringConvertible {
    /// Position in the tensor table.
    public let index: Int
    public let name: String
    /// `.f32`, `.f16` or `.bf16`; `nil` for the quantized dtypes (`i8`, `q4`), see `dtypeName` and `quant`.
    public let dtype: DType?
    /// The dtype as stored: `f32`, `f16`, `bf16`, `i8`, `q4`.
    public let dtypeName: String
    public let shape: [Int]
    /// Product of the shape (1 for a scalar); the C parser guarantees it fits an `Int`.
    public let elementCount: Int
    /// Absolute file offset of the first byte.
    public let offset: Int
    /// Offset relative to the data section, as stored in the header.
    public let relativeOffset: Int
    public let length: Int
    /// Stored SHA-256, 64 lowercase hex digits.
    public let sha256: String
    /// The `quant` object serialized as JSON, for quantized tensors only.
    public let quantJSON: String?
    /// The quantization parameters the C parser validated (formats/bundle.md §2.2), for quantized tensors only; read
    /// the values with `QuantizedView`.
    public let quant: BundleQuantParameters?
    /// The tensor's bytes inside the mapping (row-major, little-endian).
    public let data: UnsafeRawBufferPointer

    public var isQuantized: Bool { quantJSON != nil }

    public var description: String {
        "\(name) \(dtypeName) \(shape) offset \(offset) length \(length) sha256 \(sha256)"
    }
}

public enum BundleSectionEncoding: String, Sendable {
    case raw, zstd
}

/// One entry of a bundle's section table (formats/bundle.md §3).
public struct BundleSection: @unchecked Sendable {
    public let index: Int
    public let name: String
    public let encoding: BundleSectionEncoding
    /// Absolute file offset of the stored bytes.
    public let offset: Int
    public let relativeOffset: Int
    /// Stored bytes.
    public let length: Int
    /// Bytes after decoding.
    public let rawLength: Int
    /// SHA-256 of the decoded bytes.
    public let sha256: String
    /// The stored (possibly compressed) bytes inside the mapping.
    public let storedData: UnsafeRawBufferPointer
}

/// Read-only view of a bundle, over the C parser (`CMM1Bundle`). Opening validates the whole header
/// (formats/bundle.md §5 steps 1–3); tensor digests are checked on demand (`checkTensor`, `checkAll`).
///
/// The reader is immutable after `init` and the C accessors are read-only, so it can be shared between threads.
public final class BundleReader: @unchecked Sendable {
    public let path: String
    public let formatVersion: Int
    public let dataOffset: Int
    public let dataLength: Int
    public let fileSize: Int
    public let alignment: Int
    public let tensors: [BundleTensor]
    public let sections: [BundleSection]
    /// The header text exactly as stored.
    public let headerText: String
    /// The whole header, parsed with Foundation.
    public let headerJSON: [String: Any]

    private let handle: OpaquePointer
    private let tensorIndex: [String: Int]
    private let sectionIndex: [String: Int]

    /// The canonical configuration (`config` member of the header).
    public var config: [String: Any] { headerJSON["config"] as? [String: Any] ?? [:] }
    /// Where the bundle came from (`provenance` member).
    public var provenance: [String: Any] { headerJSON["provenance"] as? [String: Any] ?? [:] }
    /// Free metadata (`metadata` member).
    public var metadata: [String: Any] { headerJSON["metadata"] as? [String: Any] ?? [:] }

    /// The `config` object as compact JSON text (serialized by json-c).
    public var configJSONText: String {
        guard let p = mm1b_config_json(handle, nil) else { return "{}" }
        return String(cString: p)
    }

    /// Opens and validates a bundle. Throws `MM1Error` naming the file, the tensor (if any) and the problem.
    /// Whether `path` is a regular file that starts with the bundle magic (cheap; does not validate).
    public static func looksLikeBundle(_ path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        let head = (try? h.read(upToCount: 8)) ?? Data()
        return [UInt8](head) == BundleWriter.magic
    }

    public init(path: String) throws {
        self.path = path
        var err = mm1b_error()
        var h: OpaquePointer?
        let rc = mm1b_open_ex(path, &h, &err)
        guard rc == MM1B_OK, let h else {
            let message = withUnsafeBytes(of: &err.message) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            let tensor = withUnsafeBytes(of: &err.tensor) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            throw MM1Error(file: path, tensor: tensor.isEmpty ? nil : tensor, message.isEmpty ? "cannot open bundle" : message)
        }
        handle = h
        formatVersion = Int(mm1b_format_version(h))
        dataOffset = Int(mm1b_data_offset(h))
        dataLength = Int(mm1b_data_length(h))
        fileSize = Int(mm1b_file_size(h))
        alignment = Int(mm1b_alignment(h))

        var tensors: [BundleTensor] = []
        var tensorIndex: [String: Int] = [:]
        let tcount = mm1b_tensor_count(h)
        tensors.reserveCapacity(tcount)
        for i in 0..<tcount {
            let t = mm1b_tensor_at(h, i)!.pointee
            let name = String(cString: t.name)
            let dtypeName = String(cString: t.dtype_name)
            let rank = Int(t.rank)
            let shape: [Int] = withUnsafeBytes(of: t.shape) { raw in
                (0..<rank).map { Int(raw.load(fromByteOffset: $0 * 8, as: UInt64.self)) }
            }
            let sha = withUnsafeBytes(of: t.sha256) { BundleReader.hex($0) }
            let quant = t.quant_json.map { String(cString: $0) }
            let dtype: DType? = quant == nil ? DType(rawValue: dtypeName) : nil
            tensors.append(BundleTensor(
                index: i, name: name, dtype: dtype, dtypeName: dtypeName, shape: shape, elementCount: Int(t.numel), offset: Int(t.offset),
                relativeOffset: Int(t.rel_offset), length: Int(t.length), sha256: sha, quantJSON: quant,
                quant: quant == nil ? nil : BundleQuantParameters(t),
                data: UnsafeRawBufferPointer(start: t.data, count: Int(t.length))))
            tensorIndex[name] = i
        }
        var sections: [BundleSection] = []
        var sectionIndex: [String: Int] = [:]
        let scount = mm1b_section_count(h)
        for i in 0..<scount {
            let s = mm1b_section_at(h, i)!.pointee
            let name = String(cString: s.name)
            sections.append(BundleSection(
                index: i, name: name, encoding: s.encoding == MM1B_ENCODING_ZSTD ? .zstd : .raw,
                offset: Int(s.offset), relativeOffset: Int(s.rel_offset), length: Int(s.length),
                rawLength: Int(s.raw_length), sha256: withUnsafeBytes(of: s.sha256) { BundleReader.hex($0) },
                storedData: UnsafeRawBufferPointer(start: s.data, count: Int(s.length))))
            sectionIndex[name] = i
        }
        self.tensors = tensors
        self.sections = sections
        self.tensorIndex = tensorIndex
        self.sectionIndex = sectionIndex

        var hlen = 0
        let hp = mm1b_header_json(h, &hlen)!
        let headerData = Data(bytes: hp, count: hlen)
        headerText = String(decoding: headerData, as: UTF8.self)
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: headerData, options: [])
        } catch {
            mm1b_close(h)
            throw MM1Error(file: path, "header: JSON not accepted by Foundation: \(error.localizedDescription)")
        }
        guard let object = parsed as? [String: Any] else {
            mm1b_close(h)
            throw MM1Error(file: path, "header: not a JSON object")
        }
        headerJSON = object
    }

    deinit {
        mm1b_close(handle)
    }

    public func tensor(named name: String) -> BundleTensor? {
        tensorIndex[name].map { tensors[$0] }
    }

    public func section(named name: String) -> BundleSection? {
        sectionIndex[name].map { sections[$0] }
    }

    /// Recomputes the SHA-256 of the tensor's bytes and compares it with the stored digest.
    public func checkTensor(_ tensor: BundleTensor) -> Bool {
        guard let t = mm1b_tensor_at(handle, tensor.index), String(cString: t.pointee.name) == tensor.name else {
            return false
        }
        return mm1b_check_tensor(handle, t) == MM1B_OK
    }

    /// Hands a tensor's pages back to the kernel (they stay in the page cache; the next read faults them in again).
    public func dropPages(_ tensor: BundleTensor) {
        guard let p = tensor.data.baseAddress else { return }
        Widen.releasePages(p, bytes: tensor.length)
    }

    /// Checks the digest of the stored bytes of a raw section, or of the decoded bytes of a zstd section.
    public func checkSection(_ section: BundleSection) -> Bool {
        switch section.encoding {
        case .raw:
            guard let s = mm1b_section_at(handle, section.index) else { return false }
            return mm1b_check_section(handle, s) == MM1B_OK
        case .zstd:
            return (try? sectionData(named: section.name)) != nil
        }
    }

    /// Checks every tensor digest (in parallel) and every section digest. Returns the names that fail: tensor names
    /// as is, section names as `section:<name>` (tensor names cannot contain ':'). Empty means all good. Each
    /// tensor's pages leave the resident set once it is checked, so checking a bundle larger than RAM stays cheap.
    public func checkAll() -> [String] {
        let n = tensors.count
        var ok = [Bool](repeating: false, count: n)
        ok.withUnsafeMutableBufferPointer { results in
            // Each iteration writes its own element; the bundle is only read.
            nonisolated(unsafe) let base = results.baseAddress
            DispatchQueue.concurrentPerform(iterations: n) { i in
                let t = mm1b_tensor_at(self.handle, i)
                base![i] = mm1b_check_tensor(self.handle, t) == MM1B_OK
                self.dropPages(self.tensors[i])
            }
        }
        var failed = tensors.indices.filter { !ok[$0] }.map { tensors[$0].name }
        for s in sections where !checkSection(s) {
            failed.append("section:\(s.name)")
        }
        return failed
    }

    /// The decoded bytes of a section, digest-checked. zstd sections are decoded with libzstd, refusing anything
    /// that is not exactly one frame or that decodes to more (or fewer) than `raw_length` bytes; `maxSize` bounds
    /// the memory a section may claim.
    public func sectionData(named name: String, maxSize: Int = 1 << 30) throws -> [UInt8] {
        guard let section = section(named: name), let s = mm1b_section_at(handle, section.index) else {
            throw MM1Error(file: path, "no section '\(name)' in the bundle")
        }
        func fail(_ message: String) -> MM1Error { MM1Error(file: path, "section '\(name)': \(message)") }
        guard section.rawLength <= maxSize else {
            throw fail("raw_length \(section.rawLength) is more than the \(maxSize) bytes allowed")
        }
        var out: [UInt8]
        switch section.encoding {
        case .raw:
            out = [UInt8](section.storedData)
        case .zstd:
            do {
                out = try Zstd.decompress(section.storedData, expectedSize: section.rawLength)
            } catch let e as MM1Error {
                throw fail(e.message)
            }
        }
        let rc = out.withUnsafeBytes { mm1b_check_decoded(s, $0.baseAddress, $0.count) }
        guard rc == MM1B_OK else {
            throw fail(rc == MM1B_EDIGEST ? "sha256 mismatch" : "decoded size differs from raw_length")
        }
        return out
    }

    private static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var s = [UInt8]()
        s.reserveCapacity(bytes.count * 2)
        for b in bytes {
            s.append(digits[Int(b >> 4)])
            s.append(digits[Int(b & 15)])
        }
        return String(decoding: s, as: UTF8.self)
    }
}
