import Foundation

/// A small reader and writer for NumPy `.npy` files (format versions 1, 2 and 3; C order; little-endian or
/// byte-order-free element types). Reading widens every supported element type to `Float` (or to `Int` with
/// `readInts`); writing always produces `<f4` in version 1 (version 2 when the header would not fit).
public enum NPY {
    static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // \x93NUMPY

    /// Element types the reader accepts, as the `descr` string spells them.
    enum Elem: String {
        case f4 = "<f4", f8 = "<f8", f2 = "<f2"
        case i1 = "|i1", u1 = "|u1", b1 = "|b1"
        case i2 = "<i2", u2 = "<u2", i4 = "<i4", u4 = "<u4", i8 = "<i8", u8 = "<u8"

        var size: Int {
            switch self {
            case .f8, .i8, .u8: return 8
            case .f4, .i4, .u4: return 4
            case .f2, .i2, .u2: return 2
            case .i1, .u1, .b1: return 1
            }
        }

        init?(descr: String) {
            var d = descr
            // Single-byte types may be written with any byte-order mark.
            if d.count == 3, let f = d.first, "<>=|".contains(f), d.hasSuffix("1") { d = "|" + d.dropFirst() }
            if d.hasPrefix("="), d.count == 3 { d = "<" + d.dropFirst() }  // native = little-endian on our targets
            self.init(rawValue: d)
        }
    }

    struct Header {
        var elem: Elem
        var shape: [Int]
        var dataOffset: Int
        var count: Int
    }

    static func parseHeader(_ bytes: UnsafeRawBufferPointer, path: String) throws -> Header {
        guard bytes.count >= 10, Array(bytes[0..<6]) == magic else {
            throw MM1Error(file: path, "is not a .npy file (bad magic)")
        }
        let major = bytes[6]
        let headerLen: Int
        let start: Int
        switch major {
        case 1:
            headerLen = Int(bytes[8]) | Int(bytes[9]) << 8
            start = 10
        case 2, 3:
            guard bytes.count >= 12 else { throw MM1Error(file: path, ".npy header is truncated") }
            headerLen = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
            start = 12
        default:
            throw MM1Error(file: path, ".npy format version \(major) is not supported")
        }
        guard start + headerLen <= bytes.count else { throw MM1Error(file: path, ".npy header is truncated") }
        guard let text = String(bytes: bytes[start..<(start + headerLen)], encoding: major == 3 ? .utf8 : .isoLatin1) else {
            throw MM1Error(file: path, ".npy header is not text")
        }
        func field(_ key: String) throws -> Substring {
            guard let r = text.range(of: "'\(key)'") ?? text.range(of: "\"\(key)\"") else {
                throw MM1Error(file: path, ".npy header has no '\(key)'")
            }
            var rest = text[r.upperBound...].drop { $0 == " " }
            guard rest.first == ":" else { throw MM1Error(file: path, ".npy header: malformed '\(key)'") }
            rest = rest.dropFirst().drop { $0 == " " }
            return rest
        }
        // descr
        var d = try field("descr")
        guard let q = d.first, q == "'" || q == "\"" else {
            throw MM1Error(file: path, ".npy: structured dtypes are not supported")
        }
        d = d.dropFirst()
        guard let end = d.firstIndex(of: q) else { throw MM1Error(file: path, ".npy header: malformed descr") }
        let descr = String(d[..<end])
        guard let elem = Elem(descr: descr) else {
            throw MM1Error(file: path, ".npy element type '\(descr)' is not supported (need little-endian float or integer)")
        }
        // fortran_order
        let fo = try field("fortran_order")
        if fo.hasPrefix("True") { throw MM1Error(file: path, ".npy: Fortran order is not supported") }
        // shape
        var s = try field("shape")
        guard s.first == "(" else { throw MM1Error(file: path, ".npy header: malformed shape") }
        s = s.dropFirst()
        guard let close = s.firstIndex(of: ")") else { throw MM1Error(file: path, ".npy header: malformed shape") }
        var shape: [Int] = []
        for part in s[..<close].split(separator: ",") {
            let p = part.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "L", with: "")
            if p.isEmpty { continue }
            guard let v = Int(p), v >= 0 else { throw MM1Error(file: path, ".npy header: bad dimension '\(p)'") }
            shape.append(v)
        }
        var count = 1
        for v in shape {
            let (m, o) = count.multipliedReportingOverflow(by: v)
            guard !o else { throw MM1Error(file: path, ".npy shape \(shape) is too large") }
            count = m
        }
        let offset = start + headerLen
        let (need, o) = count.multipliedReportingOverflow(by: elem.size)
        guard !o, offset + need <= bytes.count else {
            throw MM1Error(file: path, ".npy data is truncated: shape \(shape) needs \(need) bytes, file has \(bytes.count - offset)")
        }
        return Header(elem: elem, shape: shape, dataOffset: offset, count: count)
    }

    static func load(_ path: String) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path) else { throw MM1Error(file: path, "cannot be read") }
        return data
    }

    static func element(_ raw: UnsafeRawPointer, _ e: Elem) -> Double {
        switch e {
        case .f4: return Double(Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(as: UInt32.self))))
        case .f8: return Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self)))
        case .f2: return Double(halfToFloat(UInt16(littleEndian: raw.loadUnaligned(as: UInt16.self))))
        case .i1: return Double(raw.load(as: Int8.self))
        case .u1, .b1: return Double(raw.load(as: UInt8.self))
        case .i2: return Double(Int16(littleEndian: raw.loadUnaligned(as: Int16.self)))
        case .u2: return Double(UInt16(littleEndian: raw.loadUnaligned(as: UInt16.self)))
        case .i4: return Double(Int32(littleEndian: raw.loadUnaligned(as: Int32.self)))
        case .u4: return Double(UInt32(littleEndian: raw.loadUnaligned(as: UInt32.self)))
        case .i8: return Double(Int64(littleEndian: raw.loadUnaligned(as: Int64.self)))
        case .u8: return Double(UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self)))
        }
    }

    static func halfToFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exp = Int((h >> 10) & 0x1F)
        let man = UInt32(h & 0x3FF)
        if exp == 0 {
            let v = Float(man) * Float(sign: .plus, exponent: -24, significand: 1)
            return sign != 0 ? -v : v
        }
        if exp == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (man << 13)) }
        return Float(bitPattern: sign | UInt32(exp - 15 + 127) << 23 | (man << 13))
    }

    /// Reads a `.npy` file as Float (floats are rounded to f32; integers converted).
    public static func read(_ path: String) throws -> (shape: [Int], data: [Float]) {
        let file = try load(path)
        return try file.withUnsafeBytes { raw in
            let h = try parseHeader(raw, path: path)
            var out = [Float](repeating: 0, count: h.count)
            let base = raw.baseAddress! + h.dataOffset
            if h.elem == .f4 {
                out.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(start: base, count: h.count * 4)) }
            } else {
                for i in 0..<h.count { out[i] = Float(element(base + i * h.elem.size, h.elem)) }
            }
            return (h.shape, out)
        }
    }

    /// Reads a `.npy` file of integers (or integral floats) as Int.
    public static func readInts(_ path: String) throws -> (shape: [Int], data: [Int]) {
        let file = try load(path)
        return try file.withUnsafeBytes { raw in
            let h = try parseHeader(raw, path: path)
            let base = raw.baseAddress! + h.dataOffset
            var out = [Int](repeating: 0, count: h.count)
            for i in 0..<h.count {
                if h.elem == .i8 {
                    out[i] = Int(Int64(littleEndian: (base + i * 8).loadUnaligned(as: Int64.self)))
                    continue
                }
                let v = element(base + i * h.elem.size, h.elem)
                guard v == v.rounded(), abs(v) < 9.2e18 else {
                    throw MM1Error(file: path, "element \(i) (\(v)) is not an integer")
                }
                out[i] = Int(v)
            }
            return (h.shape, out)
        }
    }

    /// Writes `<f4` C-order data. `data.count` must equal the product of `shape`.
    public static func write(_ path: String, shape: [Int], data: [Float]) throws {
        let bytes = try encode(shape: shape, data, name: path)
        do { try Data(bytes).write(to: URL(fileURLWithPath: path)) } catch {
            throw MM1Error(file: path, "cannot be written: \(error.localizedDescription)")
        }
    }

    /// Element types `encode` writes.
    public protocol Storable { static var descr: String { get } }

    /// A whole `.npy` file in memory (version 1, or 2 when the header would not fit), C order, little-endian.
    public static func encode<T: Storable & BitwiseCopyable>(shape: [Int], _ data: [T], name: String = "<memory>") throws -> [UInt8] {
        guard shape.reduce(1, *) == data.count else {
            throw MM1Error(file: name, "npy write: shape \(shape) does not hold \(data.count) values")
        }
        let dims = shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? "," : "")
        var dict = "{'descr': '\(T.descr)', 'fortran_order': False, 'shape': (\(dims)), }"
        // Pad so that the data starts on a 64-byte boundary; the header ends with a newline.
        var prefix = 10
        if prefix + dict.utf8.count + 1 > 65535 + 10 { prefix = 12 }
        let total = (prefix + dict.utf8.count + 1 + 63) / 64 * 64
        dict += String(repeating: " ", count: total - prefix - dict.utf8.count - 1) + "\n"
        var bytes = magic
        let hl = dict.utf8.count
        if prefix == 10 {
            bytes += [1, 0, UInt8(hl & 0xFF), UInt8(hl >> 8)]
        } else {
            bytes += [2, 0, UInt8(hl & 0xFF), UInt8((hl >> 8) & 0xFF), UInt8((hl >> 16) & 0xFF), UInt8(hl >> 24)]
        }
        bytes += Array(dict.utf8)
        #if _endian(big)
        #error("NPY.encode writes the host's byte order, which must be little-endian")
        #endif
        data.withUnsafeBytes { bytes += $0 }
        return bytes
    }

    /// A `.npy` file held in memory, with its values widened like `read` / `readInts` do.
    public struct Decoded {
        public var shape: [Int]
        public var floats: [Float]
        public var isInteger: Bool
        /// The values as integers; nil when a value is not integral.
        public var ints: [Int]? {
            var out = [Int]()
            out.reserveCapacity(floats.count)
            for v in floats {
                guard v == v.rounded(), abs(v) < 16_777_216 else { return nil }
                out.append(Int(v))
            }
            return out
        }
    }

    /// Parses a `.npy` file held in memory (`name` is used in messages). Integers are carried as Float, so they
    /// must be below 2^24 in magnitude to be exact (ids, positions, image pixels).
    public static func decode(_ bytes: [UInt8], name: String) throws -> Decoded {
        try bytes.withUnsafeBytes { raw in
            let h = try parseHeader(raw, path: name)
            let base = raw.baseAddress! + h.dataOffset
            var out = [Float](repeating: 0, count: h.count)
            let integer = ![.f4, .f8, .f2].contains(h.elem)
            for i in 0..<h.count {
                let v = element(base + i * h.elem.size, h.elem)
                if integer && abs(v) >= 16_777_216 {
                    throw MM1Error(file: name, "element \(i) (\(v)) is too large to be read exactly")
                }
                out[i] = Float(v)
            }
            return Decoded(shape: h.shape, floats: out, isInteger: integer)
        }
    }
}

extension Float: NPY.Storable { public static var descr: String { "<f4" } }
extension Int32: NPY.Storable { public static var descr: String { "<i4" } }
extension UInt8: NPY.Storable { public static var descr: String { "|u1" } }
