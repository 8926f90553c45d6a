import CMM1Bundle
import Foundation
import XCTest

@testable import MM1Pack

/// formats/bundle.md §2.2 end to end: `QuantFormat.pack` → `BundleWriter` → `BundleReader` (the C parser) →
/// `QuantizedView`, which must give back exactly what was packed and dequantize bit for bit as
/// `QuantizedTensor.value`.
final class QuantFormatTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("mm1-qformat-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    // MARK: - Helpers

    /// One tensor to write: payload bytes with their dtype, shape and `quant` object (nil for float tensors).
    private struct Payload {
        var name: String
        var dtype: String
        var shape: [Int]
        var bytes: [UInt8]
        var quant: [String: Any]?
    }

    private func payload(_ name: String, _ q: QuantizedTensor) throws -> Payload {
        let p = try QuantFormat.pack(q)
        return Payload(name: name, dtype: p.dtype, shape: q.shape, bytes: p.bytes, quant: p.quant)
    }

    private func floatPayload(_ name: String, _ values: [Float]) -> Payload {
        let bytes = values.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } }
        return Payload(name: name, dtype: "f32", shape: [values.count], bytes: bytes, quant: nil)
    }

    /// Writes the payloads with the project's `BundleWriter`, which does not look inside `quant`.
    private func writeBundle(_ tensors: [Payload], _ file: String = "q.mm1") throws -> String {
        let path = dir.appendingPathComponent(file).path
        let entries = tensors.map {
            BundleWriter.TensorEntry(name: $0.name, dtype: $0.dtype, shape: $0.shape, length: $0.bytes.count, quant: $0.quant)
        }
        let w = try BundleWriter(path: path, tensors: entries, sections: [], config: ["llm": ["hidden_size": 4]],
                                 provenance: ["tool": "mm1pack"], metadata: [:])
        for t in tensors {
            try w.beginTensor(t.name)
            try t.bytes.withUnsafeBytes { try w.write($0) }
        }
        try w.finish()
        return path
    }

    private func view(_ r: BundleReader, _ name: String) throws -> QuantizedView {
        try QuantizedView(XCTUnwrap(r.tensor(named: name)), file: r.path)
    }

    /// Random codes over the whole range of the format, f16-exact scales of both signs, integer zeros.
    private func random(_ spec: QuantSpec, _ shape: [Int], seed: UInt64) -> QuantizedTensor {
        var rng = SplitMix64(seed: seed)
        let cols = shape.last!, rows = shape.dropLast().reduce(1, *)
        let n = rows * cols, ng = rows * (cols / spec.groupSize)
        let codes: [UInt8] = (0 ..< n).map { _ in
            spec.bits == 8 ? UInt8(bitPattern: Int8(rng.int(255) - 127)) : UInt8(rng.int(16))
        }
        let scales: [Float] = (0 ..< ng).map { _ in Float(Float16(rng.uniform() * 0.05)) }
        let zeros: [Float]? = spec.scheme == .asym ? (0 ..< ng).map { _ in Float(rng.int(16)) } : nil
        return QuantizedTensor(spec: spec, shape: shape, codes: codes, scales: scales, zeros: zeros)
    }

    private func bits(_ a: [Float]) -> [UInt32] { a.map(\.bitPattern) }

    /// Same spec, shape and codes, and the same scale and zero bits (so −0 and +0 differ).
    private func assertIdentical(_ a: QuantizedTensor, _ b: QuantizedTensor, _ what: String,
                                 file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.spec, b.spec, what, file: file, line: line)
        XCTAssertEqual(a.shape, b.shape, what, file: file, line: line)
        XCTAssertEqual(a.codes, b.codes, what, file: file, line: line)
        XCTAssertEqual(bits(a.scales), bits(b.scales), what, file: file, line: line)
        XCTAssertEqual(a.zeros.map(bits), b.zeros.map(bits), what, file: file, line: line)
    }

    /// The view's dequantization of all rows, of each single row and of an inner range, against `value`, bit for bit.
    private func assertDequantizesExactly(_ v: QuantizedView, _ q: QuantizedTensor, _ what: String,
                                          file: StaticString = #filePath, line: UInt = #line) {
        let want = bits(q.dequantized())
        XCTAssertEqual(bits(v.dequantized()), want, what, file: file, line: line)
        let cols = v.cols
        var one = [Float](repeating: .nan, count: cols)
        for r in [0, v.rows / 2, v.rows - 1] {
            one.withUnsafeMutableBufferPointer { v.dequantize(rows: r ..< r + 1, into: $0.baseAddress!) }
            XCTAssertEqual(bits(one), Array(want[r * cols ..< (r + 1) * cols]), "\(what) row \(r)", file: file, line: line)
        }
        if v.rows >= 3 {
            let r = 1 ..< v.rows - 1
            var part = [Float](repeating: .nan, count: r.count * cols)
            part.withUnsafeMutableBufferPointer { v.dequantize(rows: r, into: $0.baseAddress!) }
            XCTAssertEqual(bits(part), Array(want[r.lowerBound * cols ..< r.upperBound * cols]), "\(what) rows \(r)",
                           file: file, line: line)
        }
    }

    private func assertRefused(_ path: String, tensor: String, _ fragments: String...,
                               file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try BundleReader(path: path)
            XCTFail("accepted, expected \(fragments)", file: file, line: line)
        } catch let e as MM1Error {
            XCTAssertEqual(e.tensor, tensor, "\(e)", file: file, line: line)
            XCTAssertEqual(e.file, path, file: file, line: line)
            for f in fragments {
                XCTAssertTrue(e.description.contains(f), "\"\(e)\" does not contain \"\(f)\"", file: file, line: line)
            }
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
    }

    private func assertPackRefused(_ q: QuantizedTensor, _ fragment: String,
                                   file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try QuantFormat.pack(q), file: file, line: line) { e in
            XCTAssertTrue("\(e)".contains(fragment), "\"\(e)\" does not contain \"\(fragment)\"", file: file, line: line)
        }
    }

    // MARK: - Layout

    func testLayoutWorkedExample() throws {
        // bundle.md §2.2's example.
        let l = try QuantFormat.layout(spec: QuantSpec(bits: 4, groupSize: 32, scheme: .asym), shape: [4, 64])
        XCTAssertEqual(l.codes, 0 ..< 128)
        XCTAssertEqual(l.scales, 128 ..< 144)
        XCTAssertEqual(l.zeros, 192 ..< 208)
        XCTAssertEqual(l.length, 208)

        let i8 = try QuantFormat.layout(spec: QuantSpec(bits: 8, groupSize: 10, scheme: .sym), shape: [3, 10])
        XCTAssertEqual(i8.codes, 0 ..< 30)
        XCTAssertEqual(i8.scales, 64 ..< 70)
        XCTAssertNil(i8.zeros)
        XCTAssertEqual(i8.length, 70)

        let moe = try QuantFormat.layout(spec: QuantSpec(bits: 4, groupSize: 64, scheme: .sym), shape: [2, 3, 64])
        XCTAssertEqual(moe.codes, 0 ..< 192)
        XCTAssertEqual(moe.scales, 192 ..< 204)
        XCTAssertEqual(moe.length, 204)

        let q = try QuantFormat.quantObject(spec: QuantSpec(bits: 4, groupSize: 32, scheme: .asym), shape: [4, 64])
        XCTAssertEqual(String(decoding: try CanonicalJSON.bytes(q), as: UTF8.self),
                       #"{"codes":{"length":128,"offset":0},"group_size":32,"scale_dtype":"f16","scales":{"length":16,"offset":128},"scheme":"asym","zeros":{"length":16,"offset":192}}"#)
    }

    func testLayoutRefusals() {
        func refused(_ spec: QuantSpec, _ shape: [Int], _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try QuantFormat.layout(spec: spec, shape: shape), line: line) { e in
                XCTAssertTrue("\(e)".contains(fragment), "\"\(e)\" does not contain \"\(fragment)\"", line: line)
            }
        }
        refused(QuantSpec(bits: 4, groupSize: 32, scheme: .sym), [64], "rank ≥ 2")
        refused(QuantSpec(bits: 4, groupSize: 32, scheme: .sym), [4, 0], "dimension < 1")
        refused(QuantSpec(bits: 4, groupSize: 3, scheme: .sym), [4, 6], "even number")
        refused(QuantSpec(bits: 4, groupSize: 0, scheme: .sym), [4, 6], "even number")
        refused(QuantSpec(bits: 4, groupSize: 4, scheme: .sym), [4, 6], "does not divide")
        refused(QuantSpec(bits: 8, groupSize: 2, scheme: .asym), [4, 6], "int8 is symmetric only")
        refused(QuantSpec(bits: 3, groupSize: 2, scheme: .sym), [4, 6], "bits must be 4 or 8")
        refused(QuantSpec(bits: 8, groupSize: 2, scheme: .sym), [Int.max / 2, 4], "overflows")
    }

    // MARK: - Byte layout against hand-written bytes

    func testNibbleOrderAgainstHandWrittenBytes() throws {
        // q4 sym, [2, 4], one group per row. Row 0: u = 1 2 3 4; row 1: u = 15 0 7 8.
        let q = QuantizedTensor(spec: QuantSpec(bits: 4, groupSize: 4, scheme: .sym), shape: [2, 4],
                                codes: [1, 2, 3, 4, 15, 0, 7, 8], scales: [1, 0.5], zeros: nil)
        // Element 2j in the low nibble of byte j, 2j + 1 in the high nibble; f16 1.0 = 0x3C00, 0.5 = 0x3800.
        let hand: [UInt8] = [0x21, 0x43, 0x0F, 0x87] + [UInt8](repeating: 0, count: 60) + [0x00, 0x3C, 0x00, 0x38]
        let packed = try QuantFormat.pack(q)
        XCTAssertEqual(packed.bytes, hand)
        XCTAssertEqual(packed.dtype, "q4")

        // The same bytes with a hand-written quant object, read back through the C parser.
        let quant: [String: Any] = ["scheme": "sym", "group_size": 4, "scale_dtype": "f16",
                                    "codes": ["offset": 0, "length": 4], "scales": ["offset": 64, "length": 4]]
        let path = try writeBundle([Payload(name: "w", dtype: "q4", shape: [2, 4], bytes: hand, quant: quant)])
        let r = try BundleReader(path: path)
        let v = try view(r, "w")
        XCTAssertEqual(v.dequantized(), [-7, -6, -5, -4, 3.5, -4, -0.5, 0])
        assertIdentical(v.unpack(), q, "hand-written q4")

        // int8: two's complement, one byte per element; asym q4 zeros after the scales.
        let i8: [UInt8] = [0x81, 0x7F, 0xFF, 0x00, 0x02, 0xFE] + [UInt8](repeating: 0, count: 58) + [0x00, 0xC0]
        let q4a: [UInt8] = [0xF0, 0x5A] + [UInt8](repeating: 0, count: 62) + [0x00, 0x40] + [UInt8](repeating: 0, count: 62)
            + [0x00, 0x45]  // scale 2.0, zero 5.0
        let path2 = try writeBundle([
            Payload(name: "i", dtype: "i8", shape: [1, 6], bytes: i8,
                    quant: ["scheme": "sym", "group_size": 6, "scale_dtype": "f16",
                            "codes": ["offset": 0, "length": 6], "scales": ["offset": 64, "length": 2]]),
            Payload(name: "a", dtype: "q4", shape: [1, 4], bytes: q4a,
                    quant: ["scheme": "asym", "group_size": 4, "scale_dtype": "f16", "codes": ["offset": 0, "length": 2],
                            "scales": ["offset": 64, "length": 2], "zeros": ["offset": 128, "length": 2]]),
        ], "hand2.mm1")
        let r2 = try BundleReader(path: path2)
        // f16 0xC000 = −2.0.
        XCTAssertEqual(try view(r2, "i").dequantized(), [254, -254, 2, -0.0, -4, 4])
        XCTAssertEqual(try view(r2, "i").unpack().codes, [0x81, 0x7F, 0xFF, 0x00, 0x02, 0xFE])
        // u = 0 15 10 5 (low nibble first).
        XCTAssertEqual(try view(r2, "a").dequantized(), [-10, 20, 10, 0])
        let a = try view(r2, "a").unpack()
        XCTAssertEqual(a.codes, [0, 15, 10, 5])
        XCTAssertEqual(a.scales, [2])
        XCTAssertEqual(a.zeros, [5])
        XCTAssertEqual(try QuantFormat.pack(a).bytes, q4a)
    }

    // MARK: - Round trips

    func testRoundTripThroughBundle() throws {
        let cases: [(String, QuantSpec, [Int])] = [
            ("i8.perchannel", QuantSpec(bits: 8, groupSize: 96, scheme: .sym), [7, 96]),
            ("i8.g32", QuantSpec(bits: 8, groupSize: 32, scheme: .sym), [5, 128]),
            ("i8.g10", QuantSpec(bits: 8, groupSize: 10, scheme: .sym), [3, 30]),  // not a multiple of 8: scalar path
            ("q4.sym.g32", QuantSpec(bits: 4, groupSize: 32, scheme: .sym), [6, 128]),
            ("q4.sym.g64", QuantSpec(bits: 4, groupSize: 64, scheme: .sym), [5, 192]),
            ("q4.sym.g128", QuantSpec(bits: 4, groupSize: 128, scheme: .sym), [3, 256]),
            ("q4.asym.g32", QuantSpec(bits: 4, groupSize: 32, scheme: .asym), [6, 128]),
            ("q4.asym.g64", QuantSpec(bits: 4, groupSize: 64, scheme: .asym), [5, 192]),
            ("q4.asym.g128", QuantSpec(bits: 4, groupSize: 128, scheme: .asym), [3, 256]),
            ("q4.asym.perchannel", QuantSpec(bits: 4, groupSize: 40, scheme: .asym), [4, 40]),
            ("q4.sym.g2", QuantSpec(bits: 4, groupSize: 2, scheme: .sym), [3, 10]),  // scalar path
            ("q4.asym.g6", QuantSpec(bits: 4, groupSize: 6, scheme: .asym), [2, 12]),
            ("moe.q4.asym", QuantSpec(bits: 4, groupSize: 32, scheme: .asym), [4, 6, 128]),
            ("moe.q4.sym", QuantSpec(bits: 4, groupSize: 64, scheme: .sym), [3, 5, 64]),
            ("moe.i8", QuantSpec(bits: 8, groupSize: 64, scheme: .sym), [3, 4, 64]),
            ("rank4.q4", QuantSpec(bits: 4, groupSize: 16, scheme: .asym), [2, 2, 3, 32]),
            ("one.row", QuantSpec(bits: 4, groupSize: 16, scheme: .sym), [1, 16]),
        ]
        var tensors: [QuantizedTensor] = []
        var payloads: [Payload] = [floatPayload("llm.first", [1, 2, 3])]
        for (i, c) in cases.enumerated() {
            let q = random(c.1, c.2, seed: UInt64(100 + i))
            tensors.append(q)
            payloads.append(try payload(c.0, q))
            if i % 5 == 0 { payloads.append(floatPayload("llm.f\(i)", [Float(i), -1])) }
        }
        let path = try writeBundle(payloads)
        let r = try BundleReader(path: path)
        XCTAssertEqual(r.checkAll(), [])
        for (i, c) in cases.enumerated() {
            let t = try XCTUnwrap(r.tensor(named: c.0))
            let l = try QuantFormat.layout(spec: c.1, shape: c.2)
            let p = try XCTUnwrap(t.quant, c.0)
            XCTAssertEqual(p.spec, c.1, c.0)
            XCTAssertEqual(p.codes, l.codes, c.0)
            XCTAssertEqual(p.scales, l.scales, c.0)
            XCTAssertEqual(p.zeros, l.zeros, c.0)
            XCTAssertEqual(t.length, l.length, c.0)
            XCTAssertEqual(p.rows, c.2.dropLast().reduce(1, *), c.0)
            XCTAssertEqual(p.cols, c.2.last, c.0)
            XCTAssertNil(t.dtype, c.0)
            let v = try QuantizedView(t, file: path)
            XCTAssertEqual(v.shape, c.2)
            XCTAssertEqual(v.spec, c.1)
            assertIdentical(v.unpack(), tensors[i], c.0)
            assertDequantizesExactly(v, tensors[i], c.0)
            // Padding between sub-blocks is zero.
            let bytes = [UInt8](t.data)
            XCTAssertTrue(bytes[l.codes.upperBound ..< l.scales.lowerBound].allSatisfy { $0 == 0 }, c.0)
            if let z = l.zeros { XCTAssertTrue(bytes[l.scales.upperBound ..< z.lowerBound].allSatisfy { $0 == 0 }, c.0) }
        }
        XCTAssertNil(try XCTUnwrap(r.tensor(named: "llm.first")).quant)
    }

    func testHeaderIsCanonical() throws {
        let q = random(QuantSpec(bits: 4, groupSize: 32, scheme: .asym), [4, 64], seed: 7)
        let p = try QuantFormat.pack(q)
        XCTAssertEqual(p.bytes.count, 208)
        let path = try writeBundle([Payload(name: "llm.w", dtype: p.dtype, shape: q.shape, bytes: p.bytes, quant: p.quant)])
        let r = try BundleReader(path: path)
        let expected = #"{"codes":{"length":128,"offset":0},"group_size":32,"scale_dtype":"f16","scales":{"length":16,"offset":128},"scheme":"asym","zeros":{"length":16,"offset":192}}"#
        XCTAssertTrue(r.headerText.contains(#""quant":"# + expected), r.headerText)
        XCTAssertEqual(r.tensor(named: "llm.w")?.quantJSON, expected)
        // Writing the same tensor twice gives the same bytes.
        let again = try writeBundle([Payload(name: "llm.w", dtype: p.dtype, shape: q.shape, bytes: try QuantFormat.pack(q).bytes,
                                             quant: try QuantFormat.pack(q).quant)], "again.mm1")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), try Data(contentsOf: URL(fileURLWithPath: again)))
    }

    func testEdgeValues() throws {
        let f16max: Float = 65504
        let tiny = Float(Float16(bitPattern: 1))  // 2^-24, the smallest subnormal
        // int8: extreme codes with the largest, zero, negative-zero, negative and subnormal scales.
        let i8codes: [UInt8] = [0x81, 0x7F, 0x00, 0xFF, 0x01, 0x81, 0x7F, 0x00]
        let i8 = QuantizedTensor(spec: QuantSpec(bits: 8, groupSize: 8, scheme: .sym), shape: [5, 8],
                                 codes: Array(repeating: i8codes, count: 5).flatMap { $0 },
                                 scales: [f16max, 0, -0.0, -f16max, tiny], zeros: nil)
        // int4 sym: codes 0 and 15 at the extremes (levels −8 and 7).
        let q4codes: [UInt8] = Array(repeating: [0, 15, 8, 7, 1, 14, 0, 15], count: 2).flatMap { $0 }
        let q4s = QuantizedTensor(spec: QuantSpec(bits: 4, groupSize: 16, scheme: .sym), shape: [5, 16],
                                  codes: Array(repeating: q4codes, count: 5).flatMap { $0 },
                                  scales: [f16max, 0, -0.0, -f16max, tiny], zeros: nil)
        // int4 asym: zero points 0 and 15 against codes 0 and 15.
        let q4a = QuantizedTensor(spec: QuantSpec(bits: 4, groupSize: 16, scheme: .asym), shape: [5, 16],
                                  codes: Array(repeating: q4codes, count: 5).flatMap { $0 },
                                  scales: [f16max, 0, -0.0, -f16max, tiny], zeros: [0, 15, 0, 15, 7])
        let path = try writeBundle([try payload("i8", i8), try payload("q4s", q4s), try payload("q4a", q4a)])
        let r = try BundleReader(path: path)
        for (name, q) in [("i8", i8), ("q4s", q4s), ("q4a", q4a)] {
            let v = try view(r, name)
            assertIdentical(v.unpack(), q, name)
            assertDequantizesExactly(v, q, name)
        }
        let i8v = try view(r, "i8").dequantized()
        XCTAssertEqual(Array(i8v[0 ..< 4]), [-f16max * 127, f16max * 127, 0, -f16max])
        XCTAssertEqual(i8v[8].bitPattern, (Float(0) * -127).bitPattern, "0 × −127 is −0")
        XCTAssertEqual(i8v[16 + 1].bitPattern, (-0.0 * Float(127)).bitPattern)
        XCTAssertEqual(i8v[32 + 4], tiny)
        let q4v = try view(r, "q4s").dequantized()
        XCTAssertEqual(Array(q4v[0 ..< 4]), [-8 * f16max, 7 * f16max, 0, -f16max])
        let q4av = try view(r, "q4a").dequantized()
        XCTAssertEqual(Array(q4av[0 ..< 2]), [0, 15 * f16max])
        XCTAssertEqual(Array(q4av[48 ..< 50]), [15 * f16max, 0])
    }

    func testLargeTensorsAcrossCores() throws {
        // Large enough that dequantize splits rows across the cores.
        let q4 = random(QuantSpec(bits: 4, groupSize: 128, scheme: .asym), [384, 1024], seed: 11)
        let i8 = random(QuantSpec(bits: 8, groupSize: 64, scheme: .sym), [256, 1024], seed: 12)
        let path = try writeBundle([try payload("q4", q4), try payload("i8", i8)])
        let r = try BundleReader(path: path)
        assertDequantizesExactly(try view(r, "q4"), q4, "q4")
        assertDequantizesExactly(try view(r, "i8"), i8, "i8")
        assertIdentical(try view(r, "q4").unpack(), q4, "q4")
    }

    /// The C library's `mm1b_tensor_read_f32` (portable scalar code, what other runtimes link) and the Swift
    /// `QuantizedView` (vectorised kernels) must give the same bits, and `inspect --dump` must write exactly those.
    func testCLibraryAndDumpAgreeWithQuantizedView() throws {
        let tiny = Float(Float16(bitPattern: 1))
        let edge = QuantizedTensor(spec: QuantSpec(bits: 4, groupSize: 2, scheme: .asym), shape: [2, 4],
                                   codes: [0, 15, 8, 7, 15, 0, 3, 12], scales: [-65504, tiny, -0.0, 0.5],
                                   zeros: [15, 0, 8, 3])
        let tensors: [(String, QuantizedTensor)] = [
            ("q4a", random(QuantSpec(bits: 4, groupSize: 32, scheme: .asym), [3, 40, 64], seed: 21)),
            ("q4s", random(QuantSpec(bits: 4, groupSize: 16, scheme: .sym), [70, 48], seed: 22)),
            ("i8", random(QuantSpec(bits: 8, groupSize: 24, scheme: .sym), [2, 33, 72], seed: 23)),
            ("edge", edge),
        ]
        let floats: [Float] = [1, -0.0, tiny, 3.5e38, -7]
        let path = try writeBundle(try tensors.map { try payload($0.0, $0.1) } + [floatPayload("f", floats)])
        let r = try BundleReader(path: path)
        let dumpDir = dir.appendingPathComponent("dump").path
        XCTAssertEqual(try TensorDump.write(r, to: dumpDir), 5)

        var handle: OpaquePointer?
        var err = [CChar](repeating: 0, count: 2048)
        XCTAssertEqual(mm1b_open(path, &handle, &err, err.count), MM1B_OK, String(cString: err))
        defer { mm1b_close(handle) }
        for (name, q) in tensors {
            let swift = try view(r, name).dequantized()
            let t = try XCTUnwrap(mm1b_find_tensor(handle, name))
            var c = [Float](repeating: .nan, count: swift.count)
            XCTAssertEqual(mm1b_tensor_read_f32(t, 0, UInt64(c.count), &c), MM1B_OK)
            XCTAssertEqual(c.map(\.bitPattern), swift.map(\.bitPattern), "\(name): C library vs QuantizedView")
            // A row range and an unaligned element range.
            let cols = q.shape.last!
            var row = [Float](repeating: .nan, count: cols)
            XCTAssertEqual(mm1b_tensor_read_rows_f32(t, 1, 1, &row), MM1B_OK)
            XCTAssertEqual(row.map(\.bitPattern), swift[cols ..< 2 * cols].map(\.bitPattern), name)
            var part = [Float](repeating: .nan, count: min(cols + 3, swift.count - 3))
            XCTAssertEqual(mm1b_tensor_read_f32(t, 3, UInt64(part.count), &part), MM1B_OK)
            XCTAssertEqual(part.map(\.bitPattern), swift[3 ..< 3 + part.count].map(\.bitPattern), name)
            XCTAssertEqual(mm1b_tensor_read_f32(t, UInt64(swift.count), 1, &part), MM1B_EINVAL, "past the end")

            let dumped = try NPY.read(dumpDir + "/" + name + ".npy")
            XCTAssertEqual(dumped.shape, q.shape, name)
            XCTAssertEqual(dumped.data.map(\.bitPattern), swift.map(\.bitPattern), "\(name): dump")
        }
        let dumpedF = try NPY.read(dumpDir + "/f.npy")
        XCTAssertEqual(dumpedF.shape, [5])
        XCTAssertEqual(dumpedF.data.map(\.bitPattern), floats.map(\.bitPattern))
    }

    func testDequantizeThroughput() throws {
        // Not a pass/fail test: prints the dequantization speed on this machine (a forward-pass hot path).
        let q = random(QuantSpec(bits: 4, groupSize: 128, scheme: .asym), [2048, 4096], seed: 13)
        let i8 = random(QuantSpec(bits: 8, groupSize: 128, scheme: .sym), [1024, 4096], seed: 14)
        let path = try writeBundle([try payload("q", q), try payload("i8", i8)])
        let r = try BundleReader(path: path)
        for name in ["q", "i8"] {
            let v = try view(r, name)
            var out = [Float](repeating: 0, count: v.rows * v.cols)
            var best = Double.infinity
            for _ in 0 ..< 5 {
                let t0 = DispatchTime.now().uptimeNanoseconds
                out.withUnsafeMutableBufferPointer { v.dequantize(rows: 0 ..< v.rows, into: $0.baseAddress!) }
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
            print("dequantize \(name) \(v.spec) [\(v.rows), \(v.cols)]: \(String(format: "%.2f", best * 1e3)) ms, "
                  + "\(String(format: "%.2f", Double(v.rows * v.cols) / best / 1e9)) G elements/s")
        }
    }

    // MARK: - Writer refusals

    func testPackRefusesWhatWritersMustNotStore() {
        let sym = QuantSpec(bits: 4, groupSize: 4, scheme: .sym)
        let asym = QuantSpec(bits: 4, groupSize: 4, scheme: .asym)
        let i8 = QuantSpec(bits: 8, groupSize: 4, scheme: .sym)
        func q(_ spec: QuantSpec, codes: [UInt8] = [0, 1, 2, 3], scales: [Float] = [1], zeros: [Float]? = nil) -> QuantizedTensor {
            QuantizedTensor(spec: spec, shape: [1, 4], codes: codes, scales: scales, zeros: zeros)
        }
        assertPackRefused(q(sym, scales: [.nan]), "is not finite")
        assertPackRefused(q(sym, scales: [.infinity]), "is not finite")
        assertPackRefused(q(sym, scales: [-.infinity]), "is not finite")
        assertPackRefused(q(sym, scales: [0.1]), "not exactly representable in f16")
        assertPackRefused(q(sym, scales: [1e-9]), "not exactly representable in f16")
        assertPackRefused(q(sym, scales: [65520]), "not exactly representable in f16")
        assertPackRefused(q(sym, scales: [1 + 1.0 / 4096]), "not exactly representable in f16")
        assertPackRefused(q(sym, codes: [0, 16, 2, 3]), "int4 code 16 at (row 0, column 1) is outside 0…15")
        assertPackRefused(q(i8, codes: [0, 1, 0x80, 3]), "int8 code −128 at (row 0, column 2)")
        assertPackRefused(q(asym, zeros: [2.5]), "zero point 2.5 at (row 0, group 0) is not an integer in 0…15")
        assertPackRefused(q(asym, zeros: [16]), "not an integer in 0…15")
        assertPackRefused(q(asym, zeros: [-1]), "not an integer in 0…15")
        assertPackRefused(q(asym, zeros: [.nan]), "not an integer in 0…15")
        assertPackRefused(q(sym, zeros: [1]), "zero points given for the sym scheme")
        assertPackRefused(q(asym), "the asym scheme needs zero points")
        assertPackRefused(q(asym, scales: [1, 1], zeros: [1, 1]), "2 scales for shape [1, 4]")
        assertPackRefused(q(asym, zeros: [1, 1]), "2 zero points for 1 scales")
        assertPackRefused(q(sym, codes: [1, 2, 3]), "3 codes for shape [1, 4]")
        assertPackRefused(QuantizedTensor(spec: sym, shape: [4], codes: [0, 1, 2, 3], scales: [1], zeros: nil), "rank ≥ 2")
        // Accepted at the edges: −0 and subnormal scales, code 15, −127, zero points 0 and 15.
        XCTAssertNoThrow(try QuantFormat.pack(q(sym, codes: [15, 0, 15, 0], scales: [-0.0])))
        XCTAssertNoThrow(try QuantFormat.pack(q(i8, codes: [0x81, 0x7F, 0, 1], scales: [Float(Float16(bitPattern: 1))])))
        XCTAssertNoThrow(try QuantFormat.pack(q(asym, zeros: [15])))
        // A −0 zero point is stored as +0: equal tensors, equal bytes.
        XCTAssertEqual(try QuantFormat.pack(q(asym, zeros: [-0.0])).bytes, try QuantFormat.pack(q(asym, zeros: [0])).bytes)
    }

    // MARK: - Reader refusals (the C parser, through BundleReader)

    func testMalformedQuantObjectsAreRefusedNamingTheTensor() throws {
        let q = random(QuantSpec(bits: 4, groupSize: 32, scheme: .asym), [4, 64], seed: 3)
        let good = try QuantFormat.pack(q)
        let i8q = random(QuantSpec(bits: 8, groupSize: 10, scheme: .sym), [3, 10], seed: 4)
        let i8 = try QuantFormat.pack(i8q)
        var n = 0
        func refused(_ edit: (inout [String: Any]) -> Void, dtype: String = "q4", shape: [Int] = [4, 64],
                     bytes: [UInt8]? = nil, from: [String: Any]? = nil, _ fragments: String..., line: UInt = #line) throws {
            var quant = from ?? good.quant
            edit(&quant)
            n += 1
            let path = try writeBundle([floatPayload("llm.ok", [1]),
                                        Payload(name: "llm.layers.0.q.weight", dtype: dtype, shape: shape,
                                                bytes: bytes ?? good.bytes, quant: quant)], "bad\(n).mm1")
            do {
                _ = try BundleReader(path: path)
                XCTFail("accepted, expected \(fragments)", line: line)
            } catch let e as MM1Error {
                XCTAssertEqual(e.tensor, "llm.layers.0.q.weight", "\(e)", line: line)
                for f in fragments { XCTAssertTrue(e.description.contains(f), "\"\(e)\" does not contain \"\(f)\"", line: line) }
            }
        }
        try refused({ $0["scale_dtype"] = nil }, "quant: missing member 'scale_dtype'")
        try refused({ $0["blocks"] = [Any]() }, "quant: unknown member 'blocks'")
        try refused({ $0["scheme"] = "q4_0" }, "quant: unknown scheme 'q4_0'")
        try refused({ $0["scheme"] = 1 }, "member 'scheme' must be a string")
        try refused({ $0["scale_dtype"] = "bf16" }, "unknown scale_dtype 'bf16'")
        try refused({ $0["zeros"] = nil }, "missing member 'zeros' (required by scheme 'asym')")
        try refused({ $0["scheme"] = "sym" }, "member 'zeros' is only allowed with scheme 'asym'")
        try refused({ $0["scheme"] = "asym"; $0["zeros"] = ["offset": 64, "length": 6] }, dtype: "i8", shape: [3, 10],
                    bytes: i8.bytes, from: i8.quant, "scheme 'asym' is not allowed with dtype i8")
        try refused({ _ in }, dtype: "i8", shape: [30], bytes: i8.bytes, from: i8.quant, "needs rank >= 2")
        try refused({ $0["group_size"] = 24 }, "group_size 24 does not divide the last dimension 64")
        try refused({ $0["group_size"] = 5 }, dtype: "i8", shape: [3, 10], bytes: i8.bytes, from: i8.quant,
                    "group_size 5 is not an even number >= 2")
        try refused({ $0["group_size"] = "32" }, "member 'group_size' must be an integer, not a string")
        try refused({ $0["group_size"] = 32.5 }, "member 'group_size' must be an integer")
        try refused({ $0["codes"] = ["offset": 64, "length": 128] }, "quant.codes: offset 64 and length 128 are not the canonical offset 0 and length 128")
        try refused({ $0["scales"] = ["offset": 30, "length": 6] }, dtype: "i8", shape: [3, 10],
                    bytes: Array(i8.bytes[0 ..< 30] + i8.bytes[64...]), from: i8.quant,
                    "quant.scales: offset 30 and length 6 are not the canonical offset 64 and length 6")
        try refused({ $0["zeros"] = ["offset": 192, "length": 16, "stride": 2] }, "quant.zeros: unknown member 'stride'")
        try refused({ $0["codes"] = ["offset": 0] }, "quant.codes: missing member 'length'")
        try refused({ $0["codes"] = ["offset": -1, "length": 128] }, "quant.codes: offset is negative")
        try refused({ _ in }, bytes: good.bytes + [UInt8](repeating: 0, count: 64),
                    "length 272 is not 208, the end of its last quant sub-block ('zeros')")
        try refused({ _ in }, dtype: "q4", shape: [4, 32], "quant.codes: offset 0 and length 128 are not the canonical offset 0 and length 64")
    }

    func testViewRefusesFloatTensors() throws {
        let path = try writeBundle([floatPayload("llm.norm", [1, 2])])
        let r = try BundleReader(path: path)
        XCTAssertThrowsError(try QuantizedView(XCTUnwrap(r.tensor(named: "llm.norm")), file: path)) { e in
            let m = e as? MM1Error
            XCTAssertEqual(m?.tensor, "llm.norm")
            XCTAssertEqual(m?.file, path)
            XCTAssertTrue("\(e)".contains("not a quantized dtype"), "\(e)")
        }
    }
}
