import XCTest
@testable import MM1Pack

/// The view algebra is checked against direct index arithmetic: each test materialises which source element every
/// output position reads and compares with the formula the transform means.
final class TensorViewTests: XCTestCase {
    /// Flat source indices in output order.
    func walk(_ v: TensorView) -> [Int] {
        let (base, loops) = v.loops(boxOrigin: Array(repeating: 0, count: v.sourceShape.count), boxShape: v.sourceShape)
        let src = (0..<v.sourceShape.reduce(1, *)).map(Float.init)
        var out = [Float](repeating: -1, count: v.elementCount)
        src.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { d in
                ElementCopy.gather(src: s.baseAddress!, from: .f32, base: base, loops: loops, dst: d.baseAddress!, to: .f32)
            }
        }
        return out.map { Int($0) }
    }

    func testTransposeOf2D() throws {
        var v = TensorView(sourceShape: [3, 5])
        try v.transpose([1, 0])
        XCTAssertEqual(v.shape, [5, 3])
        let got = walk(v)
        for i in 0..<5 { for j in 0..<3 { XCTAssertEqual(got[i * 3 + j], j * 5 + i) } }
    }

    /// Transposes with both sides of at least one tile go through the blocked path; sizes that are not multiples
    /// of the tile, a stacked layer axis around the plane, and a dtype conversion on the way.
    func testLargeTransposesAreTiledCorrectly() throws {
        var v = TensorView(sourceShape: [3, 70, 45])
        try v.transpose([0, 2, 1])
        XCTAssertEqual(v.shape, [3, 45, 70])
        let got = walk(v)
        for l in 0..<3 { for i in 0..<45 { for j in 0..<70 {
            XCTAssertEqual(got[(l * 45 + i) * 70 + j], (l * 70 + j) * 45 + i)
        } } }

        var w = TensorView(sourceShape: [2, 33, 40])
        try w.select(axis: 0, index: 1)
        try w.transpose([1, 0])
        let (base, loops) = w.loops(boxOrigin: [0, 0, 0], boxShape: [2, 33, 40])
        XCTAssertGreaterThanOrEqual(loops.count, 2)
        let src: [UInt16] = (0..<(2 * 33 * 40)).map { UInt16(0x3F80 + $0 % 997) }  // bf16 values
        var out = [Float](repeating: -1, count: 40 * 33)
        src.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { d in
                ElementCopy.gather(src: s.baseAddress!, from: .bf16, base: base, loops: loops, dst: d.baseAddress!, to: .f32)
            }
        }
        for i in 0..<40 { for j in 0..<33 {
            XCTAssertEqual(out[i * 33 + j].bitPattern, UInt32(src[(33 + j) * 40 + i]) << 16)
        } }
    }

    func testUnstackSplitAndFlatten() throws {
        // AXLearn-style fused qkv [L=2, D=4, N=2+1+1, Dh=2] → layer 1, part k → [D, 1, Dh] → [D, Dh]ᵀ.
        var v = TensorView(sourceShape: [2, 4, 4, 2])
        try v.select(axis: 0, index: 1)
        try v.slice(axis: 1, from: 2, count: 1)
        try v.reshape([4, 2])
        try v.transpose([1, 0])
        XCTAssertEqual(v.shape, [2, 4])
        let got = walk(v)
        for h in 0..<2 { for d in 0..<4 { XCTAssertEqual(got[h * 4 + d], ((1 * 4 + d) * 4 + 2) * 2 + h) } }
    }

    func testRopeInterleavedToHalf() throws {
        // One axis of 2 heads × 4: interleaved pairs (0,1),(2,3) per head → [0,2,1,3] per head.
        var v = TensorView(sourceShape: [8, 3])
        try v.ropeInterleavedToHalf(axis: 0, headDim: 4)
        let got = walk(v)
        let rows = [0, 2, 1, 3, 4, 6, 5, 7]
        for (i, r) in rows.enumerated() { for c in 0..<3 { XCTAssertEqual(got[i * 3 + c], r * 3 + c) } }
    }

    func testRopeAfterTransposeOnCompositeAxis() throws {
        // [D=2, N=2, Dh=4] → transpose to [N, Dh, D] → merge to [N*Dh, D] → RoPE on axis 0.
        var v = TensorView(sourceShape: [2, 2, 4])
        try v.transpose([1, 2, 0])
        try v.reshape([8, 2])
        try v.ropeInterleavedToHalf(axis: 0, headDim: 4)
        let got = walk(v)
        let perm = [0, 2, 1, 3]
        for n in 0..<2 { for j in 0..<4 { for d in 0..<2 {
            XCTAssertEqual(got[(n * 4 + j) * 2 + d], (d * 2 + n) * 4 + perm[j])
        } } }
    }

    func testSliceOfCompositeAxisNeedsAlignment() throws {
        var v = TensorView(sourceShape: [4, 3])
        try v.reshape([12])
        XCTAssertThrowsError(try v.slice(axis: 0, from: 0, count: 5))
        var w = TensorView(sourceShape: [4, 3])
        try w.reshape([12])
        try w.slice(axis: 0, from: 3, count: 6)
        XCTAssertEqual(walk(w), Array(3..<9))
    }

    func testSourceBoxOfSelection() throws {
        var v = TensorView(sourceShape: [5, 6, 7])
        try v.select(axis: 0, index: 3)
        // Logical axis 0 is now source axis 1.
        try v.slice(axis: 0, from: 2, count: 3)
        let (lo, hi) = v.sourceBox
        XCTAssertEqual(lo, [3, 2, 0])
        XCTAssertEqual(hi, [4, 5, 7])
        // Walking relative to the box gives the same elements as walking the whole tensor.
        let (base, loops) = v.loops(boxOrigin: lo, boxShape: zip(lo, hi).map { $1 - $0 })
        XCTAssertEqual(base, 0)
        XCTAssertEqual(loops.map(\.size).reduce(1, *), 21)
    }

    func testBadReshapeIsRefused() {
        var v = TensorView(sourceShape: [4, 3])
        XCTAssertThrowsError(try v.reshape([5, 2]))
        XCTAssertThrowsError(try v.transpose([0, 0]))
    }

    func testDTypeConversionRoundsToNearestEven() {
        // 1 + 2^-8 lies exactly between two bf16 values: ties go to the even one (1.0).
        XCTAssertEqual(ElementCopy.bf16(fromBits: Float(1 + 1.0 / 256).bitPattern), 0x3F80)
        // 1 + 3·2^-8 lies between 1+2^-7 (odd) and 1+2^-6 (even): rounds up to even.
        XCTAssertEqual(ElementCopy.bf16(fromBits: Float(1 + 3.0 / 256).bitPattern), 0x3F82)
        XCTAssertEqual(ElementCopy.bf16(fromBits: Float(-2.5).bitPattern), 0xC020)
        let src: [Float] = [1, 65504, 1e-8, -0.333333]
        var out = [UInt16](repeating: 0, count: 4)
        src.withUnsafeBytes { s in out.withUnsafeMutableBytes { d in
            ElementCopy.gather(src: s.baseAddress!, from: .f32, base: 0, loops: [(4, 1)], dst: d.baseAddress!, to: .f16)
        } }
        XCTAssertEqual(out.map { Float(Float16(bitPattern: $0)) }, src.map { Float(Float16($0)) })
    }

    func testNonFiniteDetection() {
        let a: [Float] = [0, 1, .infinity, 3]
        XCTAssertEqual(a.withUnsafeBytes { ElementCopy.firstNonFinite($0.baseAddress!, count: 4, dtype: .f32) }, 2)
        let b: [UInt16] = [0x3C00, 0x7E00]  // f16 1.0, NaN
        XCTAssertEqual(b.withUnsafeBytes { ElementCopy.firstNonFinite($0.baseAddress!, count: 2, dtype: .f16) }, 1)
        let c: [UInt16] = [0x3F80, 0x4000]
        XCTAssertNil(c.withUnsafeBytes { ElementCopy.firstNonFinite($0.baseAddress!, count: 2, dtype: .bf16) })
    }
}

final class MapperTests: XCTestCase {
    func writeLayout(_ json: String) throws -> LayoutMapping {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mm1pack-layout-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let p = dir.appendingPathComponent("t.json").path
        try json.write(toFile: p, atomically: true, encoding: .utf8)
        return try LayoutMapping.load(path: p)
    }

    func info(_ name: String, _ shape: [Int], _ dtype: DType = .f32) -> (String, SourceTensorInfo) {
        (name, SourceTensorInfo(name: name, dtype: dtype, shape: shape, file: "x.safetensors"))
    }

    func testPatternsAlternativesAndExpressions() throws {
        let layout = try writeLayout("""
        {"layout": "t", "alternatives": {"P": {"net.0.": "s1", "net.2.": "s2"}, "W": ["weight", "bias"]},
         "rules": [
           {"from": "{P}b{j}.conv.{W}", "to": "conn.{P}.b{j-1}.{W}"},
           {"from": "stack/layer{k}/w", "to": "llm.layers.{r*#k+k}.w", "ops": [{"op": "unstack", "axis": 0, "as": "r"}]},
           {"from": "buf.{...}", "ignore": "a buffer"}
         ]}
        """)
        let src = Dictionary(uniqueKeysWithValues: [
            info("net.0.b1.conv.weight", [2]), info("net.2.b2.conv.bias", [2]),
            info("stack/layer0/w", [3, 2]), info("stack/layer1/w", [3, 2]),
            info("buf.anything.here", [1], .i64), info("stray", [1]),
        ])
        let plan = try Mapper.plan(source: src, layout: layout, config: [:])
        let want: [String] = ["conn.s1.b0.weight", "conn.s2.b1.bias"] + (0..<6).map { "llm.layers.\($0).w" }
        XCTAssertEqual(Set(plan.tensors.keys), Set(want))
        XCTAssertEqual(plan.tensors["llm.layers.3.w"]!.parts[0].source, "stack/layer1/w")
        XCTAssertEqual(plan.tensors["llm.layers.4.w"]!.parts[0].source, "stack/layer0/w")
        XCTAssertEqual(plan.ignored["buf.anything.here"], "a buffer")
        XCTAssertEqual(plan.unmatched, ["stray"])
        // Leading zeros are not indices.
        XCTAssertNil(layout.rules[0].from.match("net.0.b01.conv.weight"))
    }

    func testExpertStackingAndGaps() throws {
        let layout = try writeLayout("""
        {"layout": "t", "rules": [{"from": "l.{i}.e.{e}.w", "to": "llm.layers.{i}.moe.gate.weight", "stack": "e"}]}
        """)
        var src = Dictionary(uniqueKeysWithValues: (0..<3).map { info("l.0.e.\($0).w", [4, 2]) })
        let plan = try Mapper.plan(source: src, layout: layout, config: [:])
        let t = plan.tensors["llm.layers.0.moe.gate.weight"]!
        XCTAssertEqual(t.shape, [3, 4, 2])
        XCTAssertEqual(t.parts.map(\.source), ["l.0.e.0.w", "l.0.e.1.w", "l.0.e.2.w"])
        src["l.0.e.1.w"] = nil
        XCTAssertThrowsError(try Mapper.plan(source: src, layout: layout, config: [:])) { e in
            XCTAssertTrue("\(e)".contains("missing part 1"), "\(e)")
        }
    }

    func testSplitSizesFromConfigAndIntegerTensorsRefused() throws {
        let layout = try writeLayout("""
        {"layout": "t", "rules": [{"from": "qkv", "to": "x.{p}",
          "ops": [{"op": "split", "axis": 0, "sizes": ["llm.num_heads*2", "llm.num_kv_heads*2", "llm.num_kv_heads*2"],
                   "names": ["q", "k", "v"], "as": "p"}]}]}
        """)
        let cfg: [String: Any] = ["llm": ["num_heads": 4, "num_kv_heads": 1]]
        let plan = try Mapper.plan(source: Dictionary(uniqueKeysWithValues: [info("qkv", [12, 3])]), layout: layout, config: cfg)
        XCTAssertEqual(plan.tensors["x.q"]!.shape, [8, 3])
        XCTAssertEqual(plan.tensors["x.v"]!.shape, [2, 3])
        XCTAssertThrowsError(try Mapper.plan(source: Dictionary(uniqueKeysWithValues: [info("qkv", [13, 3])]), layout: layout, config: cfg))
        XCTAssertThrowsError(try Mapper.plan(source: Dictionary(uniqueKeysWithValues: [info("qkv", [12, 3], .i64)]), layout: layout, config: cfg)) { e in
            XCTAssertTrue("\(e)".contains("i64"), "\(e)")
        }
    }

    func testBuiltinLayoutsLoad() throws {
        for name in ["llava", "honeybee", "openclip"] {
            let l = try LayoutMapping.builtin(name)
            XCTAssertFalse(l.rules.isEmpty, name)
        }
    }

    func testMistypedMembersAreRefused() throws {
        XCTAssertThrowsError(try writeLayout("""
        {"layout": "t", "rules": [{"from": "a", "to": "b", "stak": "e"}]}
        """)) { XCTAssertTrue("\($0)".contains("stak"), "\($0)") }
        XCTAssertThrowsError(try writeLayout("""
        {"layout": "t", "rules": [{"from": "a", "to": "b.{p}", "ops": [
          {"op": "split", "axis": 0, "names": ["q", "k"], "as": "p"},
          {"op": "rope_interleaved_to_half", "axis": 0, "head_dim": 2, "when": {"p": "q"}}]}]}
        """)) { XCTAssertTrue("\($0)".contains("when"), "\($0)") }
        XCTAssertThrowsError(try writeLayout("""
        {"layout": "t", "rules": [{"from": "a", "to": "b", "ops": [{"op": "transpose", "perm": [1, 0], "axis": 1}]}]}
        """)) { XCTAssertTrue("\($0)".contains("axis"), "\($0)") }
    }
}

