import Foundation
import XCTest

@testable import MM1Pack

final class SynthTests: XCTestCase {
    var scratch: String = ""

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "mm1pack-synth-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: scratch)
    }

    func options() -> ConvertOptions {
        var o = ConvertOptions()
        o.showProgress = false
        return o
    }

    /// Every regular file under `dir`, relative path → bytes.
    func contents(_ dir: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: dir)!
        while let rel = e.nextObject() as? String {
            var isDir: ObjCBool = false
            FileManager.default.fileExists(atPath: dir + "/" + rel, isDirectory: &isDir)
            if !isDir.boolValue { out[rel] = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + rel)) }
        }
        return out
    }

    func checkConvertsAndRepeats(_ preset: SynthPreset, _ layout: SynthLayout, dtype: DType = .bf16,
                                 file: StaticString = #filePath, line: UInt = #line) throws {
        let a = scratch + "/\(preset.rawValue)-\(layout.rawValue)-\(dtype.rawValue)-a"
        let b = scratch + "/\(preset.rawValue)-\(layout.rawValue)-\(dtype.rawValue)-b"
        let ra = try Synth.write(preset: preset, layout: layout, to: a, dtype: dtype, seed: 7, progress: false)
        let rb = try Synth.write(preset: preset, layout: layout, to: b, dtype: dtype, seed: 7, progress: false)
        XCTAssertEqual(ra.files, rb.files, file: file, line: line)
        XCTAssertEqual(try contents(a), try contents(b), "writing twice must give identical bytes", file: file, line: line)
        XCTAssertEqual(Converter.detectLayoutOrNil(a), layout.rawValue, file: file, line: line)

        let report = try Converter.convert(source: a, output: scratch + "/\(layout.rawValue).mm1b", options: options())
        XCTAssertEqual(report.layout, layout.rawValue, file: file, line: line)
        XCTAssertTrue(report.unused.isEmpty, file: file, line: line)
        let config = try Converter.open(a).config
        XCTAssertEqual(report.tensors, try CanonicalSchema.expected(config).count, file: file, line: line)
        XCTAssertGreaterThan(ra.tensors, 0, file: file, line: line)

        // Another seed gives other values.
        let c = scratch + "/\(preset.rawValue)-\(layout.rawValue)-\(dtype.rawValue)-c"
        _ = try Synth.write(preset: preset, layout: layout, to: c, dtype: dtype, seed: 8, progress: false)
        XCTAssertNotEqual(try contents(a), try contents(c), file: file, line: line)
    }

    func testTinyLlava() throws { try checkConvertsAndRepeats(.tiny, .llava) }
    func testTinyHoneybee() throws { try checkConvertsAndRepeats(.tiny, .honeybee) }
    func testTinyAXLearn() throws { try checkConvertsAndRepeats(.tiny, .axlearn) }
    func testTinyMoEAXLearn() throws { try checkConvertsAndRepeats(.tiny_moe, .axlearn) }
    func testTinyHoneybeeF32() throws { try checkConvertsAndRepeats(.tiny, .honeybee, dtype: .f32) }
    func testTinyLlavaF16() throws { try checkConvertsAndRepeats(.tiny, .llava, dtype: .f16) }

    func testTinyConfigsReadBack() throws {
        let h = scratch + "/hb"
        _ = try Synth.write(preset: .tiny, layout: .honeybee, to: h, progress: false)
        let hc = try SourceConfig.honeybee(dir: h)
        let conn = hc["connector"] as! [String: Any]
        XCTAssertEqual(conn["kind"] as? String, "c_abstractor")
        XCTAssertEqual(conn["hidden_size"] as? Int, 32)
        XCTAssertEqual(conn["num_queries"] as? Int, 9)
        XCTAssertEqual(conn["depth"] as? Int, 2)
        let llm = hc["llm"] as! [String: Any]
        XCTAssertEqual(llm["hidden_size"] as? Int, 48)
        XCTAssertEqual(llm["num_layers"] as? Int, 4)
        XCTAssertEqual(llm["num_kv_heads"] as? Int, 2)
        XCTAssertEqual(llm["head_dim"] as? Int, 12)
        XCTAssertEqual(llm["vocab_size"] as? Int, 96)
        XCTAssertEqual(llm["intermediate_size"] as? Int, 96)

        let l = scratch + "/llava"
        _ = try Synth.write(preset: .tiny, layout: .llava, to: l, progress: false)
        let lc = try SourceConfig.llava(dir: l)
        XCTAssertEqual((lc["connector"] as! [String: Any])["kind"] as? String, "mlp")
        XCTAssertEqual((lc["vision"] as! [String: Any])["image_size"] as? Int, 28)
        XCTAssertEqual((lc["vision"] as! [String: Any])["patch_size"] as? Int, 4)

        let x = scratch + "/ax"
        _ = try Synth.write(preset: .tiny_moe, layout: .axlearn, to: x, progress: false)
        let xc = try SourceConfig.axlearn(stepDir: x + "/checkpoints/step_00000001")
        let moe = (xc["llm"] as! [String: Any])["moe"] as! [String: Any]
        XCTAssertEqual(moe["layers"] as? [Int], [1, 3])
        XCTAssertEqual(moe["num_experts"] as? Int, 4)
    }

    func testLayerOverride() throws {
        let x = scratch + "/ax2"
        let r = try Synth.write(preset: .tiny_moe, layout: .axlearn, to: x, numLayersOverride: 2, progress: false)
        XCTAssertTrue(r.files.contains("mm1pack_config.json"))
        let report = try Converter.convert(source: x, output: scratch + "/ax2.mm1b", options: options())
        XCTAssertGreaterThan(report.tensors, 0)
        XCTAssertThrowsError(try Synth.write(preset: .tiny_moe, layout: .axlearn, to: scratch + "/odd",
                                             numLayersOverride: 3, progress: false))
    }

    func testInterleavedMoEOnlyInAXLearn() throws {
        for layout in [SynthLayout.llava, .honeybee] {
            XCTAssertThrowsError(try Synth.write(preset: .tiny_moe, layout: layout, to: scratch + "/moe-\(layout)", progress: false)) {
                XCTAssertTrue("\($0)".contains("cannot express"), "\($0)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/moe-\(layout)"))
        }
    }

    func testRefusesNonEmptyDirectory() throws {
        let d = scratch + "/full"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: d + "/x", contents: Data([1]))
        XCTAssertThrowsError(try Synth.write(preset: .tiny, layout: .llava, to: d, progress: false))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: d), ["x"])
    }

    func testShardedSafetensors() throws {
        let d = scratch + "/sharded"
        let r = try Synth.write(preset: .tiny, layout: .honeybee, to: d, dtype: .bf16, seed: 0, numLayersOverride: nil,
                                progress: false, maxShardBytes: 20_000)
        let shards = r.files.filter { $0.hasSuffix(".safetensors") }
        XCTAssertGreaterThan(shards.count, 2)
        XCTAssertEqual(shards.first, String(format: "model-00001-of-%05d.safetensors", shards.count))
        XCTAssertTrue(r.files.contains(SafetensorsWriter.indexFileName))
        let index = try SourceConfig.readJSON(d + "/" + SafetensorsWriter.indexFileName)
        let map = index["weight_map"] as! [String: String]
        XCTAssertEqual(map.count, r.tensors)
        XCTAssertEqual((index["metadata"] as! [String: Any])["total_size"] as? Int, r.tensorBytes)
        for f in shards {
            // Each shard's data (file minus header) is at most the limit, unless it holds one larger tensor.
            let reader = try SafetensorsReader(path: d + "/" + f)
            XCTAssertFalse(reader.tensors.isEmpty)
        }
        let report = try Converter.convert(source: d, output: scratch + "/sharded.mm1b", options: options())
        XCTAssertEqual(report.layout, "honeybee")
    }

    func testSafetensorsWriterPiecesAndHeader() throws {
        let d = scratch + "/st"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        let w = try SafetensorsWriter(directory: d, tensors: [
            .init(name: "a", dtype: .f32, shape: [3, 5]),
            .init(name: "empty", dtype: .f16, shape: [0, 4]),
            .init(name: "b", dtype: .bf16, shape: [7]),
        ])
        XCTAssertEqual(w.files, ["model.safetensors"])
        let bytes = (0..<(60 + 14)).map { UInt8($0) }
        XCTAssertThrowsError(try w.beginTensor("b"))
        try w.beginTensor("a")
        // Pieces that straddle tensor boundaries.
        try bytes[0..<7].withUnsafeBytes { try w.write($0) }
        try bytes[7..<65].withUnsafeBytes { try w.write($0) }
        XCTAssertEqual(w.currentTensor, "b")
        XCTAssertThrowsError(try w.finish())
        try bytes[65...].withUnsafeBytes { try w.write($0) }
        XCTAssertThrowsError(try [UInt8(0)].withUnsafeBytes { try w.write($0) })
        try w.finish()
        let file = try Data(contentsOf: URL(fileURLWithPath: d + "/model.safetensors"))
        let n = Int(file.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        XCTAssertEqual(n % 8, 0)
        XCTAssertEqual(file.count, 8 + n + bytes.count)
        XCTAssertEqual([UInt8](file.suffix(bytes.count)), bytes)
        let header = try JSONSerialization.jsonObject(with: file.subdata(in: 8..<(8 + n))) as! [String: Any]
        XCTAssertEqual(header["__metadata__"] as? [String: String], ["format": "pt"])
        XCTAssertEqual((header["b"] as! [String: Any])["data_offsets"] as? [Int], [60, 74])
        XCTAssertEqual((header["empty"] as! [String: Any])["data_offsets"] as? [Int], [60, 60])
        let reader = try SafetensorsReader(path: d + "/model.safetensors")
        XCTAssertEqual(reader.tensors["a"]?.shape, [3, 5])
        XCTAssertFalse(FileManager.default.fileExists(atPath: d + "/model.safetensors.partial"))
    }

    func testZarrWriterRoundTrip() throws {
        // Chunks [1, 2, 5] over [3, 5, 5]: the middle axis splits 2+2+1 (edge chunk padded).
        let dir = scratch + "/z"
        let shape = [3, 5, 5]
        let chunks = ZarrArrayWriter.streamingChunks(shape: shape, elementSize: 4, maxChunkBytes: 40, unitLeadingAxis: true)
        XCTAssertEqual(chunks, [1, 2, 5])
        let w = try ZarrArrayWriter(directory: dir, dtype: .f32, shape: shape, chunks: chunks)
        let values = (0..<75).map { Float($0) * 0.5 }
        try values.withUnsafeBytes { raw in
            try w.write(UnsafeRawBufferPointer(rebasing: raw[0..<13]))
            try w.write(UnsafeRawBufferPointer(rebasing: raw[13...]))
        }
        try w.finish()
        XCTAssertEqual(w.chunkFiles.count, 9)
        XCTAssertTrue(w.chunkFiles.contains("2.2.0"))
        let meta = try String(contentsOfFile: dir + "/.zarray", encoding: .utf8)
        XCTAssertEqual(meta, "{\"chunks\":[1,2,5],\"compressor\":{\"id\":\"zstd\",\"level\":1},\"dimension_separator\":\".\",\"dtype\":\"<f4\",\"fill_value\":null,\"filters\":null,\"order\":\"C\",\"shape\":[3,5,5],\"zarr_format\":2}")
        let a = try ZarrArray(directory: dir)
        var back = [Float](repeating: -1, count: 75)
        try back.withUnsafeMutableBytes { try a.read(lower: [0, 0, 0], upper: shape, into: $0) }
        XCTAssertEqual(back, values)

        XCTAssertEqual(ZarrArrayWriter.streamingChunks(shape: [10, 4], elementSize: 2, maxChunkBytes: 1 << 20), [10, 4])
        XCTAssertEqual(ZarrArrayWriter.streamingChunks(shape: [100, 4], elementSize: 2, maxChunkBytes: 64), [8, 4])
        XCTAssertEqual(ZarrArrayWriter.streamingChunks(shape: [2, 3, 4, 8], elementSize: 1, maxChunkBytes: 16), [1, 1, 2, 8])
        XCTAssertEqual(ZarrArrayWriter.streamingChunks(shape: [], elementSize: 4, maxChunkBytes: 16), [])
        XCTAssertThrowsError(try ZarrArrayWriter(directory: scratch + "/bad", dtype: .f32, shape: [4, 4], chunks: [2, 2]))
    }

    func testAXLearnIndexText() {
        let s = AXLearnIndex.render(step: 3, entries: [.init(path: "prng_key", dtype: .u32, shape: [2]),
                                                       .init(path: "model/x", dtype: .bf16, shape: [2, 3]),
                                                       .init(path: "learner/c", dtype: .i32, shape: [])])
        XCTAssertEqual(s, "[[\"step\", 3], [\"prng_key\", {\"dtype\": \"uint32\", \"shape\": \"(2,)\"}], [\"model/x\", {\"dtype\": \"bfloat16\", \"shape\": \"(2, 3)\"}], [\"learner/c\", {\"dtype\": \"int32\", \"shape\": \"()\"}]]")
    }

    func testPipelineMatchesSequentialGeneration() throws {
        let tensors = [Synth.Planned(name: "a", dtype: .bf16, shape: [5_000_000], values: .weight),  // 10 MB
                       Synth.Planned(name: "e", dtype: .f32, shape: [0], values: .weight),
                       Synth.Planned(name: "b", dtype: .f32, shape: [6_000_000], values: .scale),  // 24 MB: 2 pieces
                       Synth.Planned(name: "c", dtype: .f16, shape: [3], values: .weight)]
        var sequential: [[UInt8]] = []
        let g = PieceGenerator(seed: 5)
        for t in tensors {
            var bytes: [UInt8] = []
            try g.stream(t) { bytes += $0 }
            sequential.append(bytes)
        }
        var piped = [[UInt8]](repeating: [], count: tensors.count)
        var events: [String] = []
        try PiecePipeline(tensors: tensors, seed: 5).run(begin: { events.append("b\($0)") },
                                                         piece: { i, p in piped[i] += p },
                                                         end: { events.append("e\($0)") })
        XCTAssertEqual(events, ["b0", "e0", "b1", "e1", "b2", "e2", "b3", "e3"])
        XCTAssertEqual(piped, sequential)
        XCTAssertEqual(piped[2].count, 24_000_000)

        // A consumer error stops the producer and is rethrown.
        XCTAssertThrowsError(try PiecePipeline(tensors: tensors, seed: 5).run(begin: { _ in }, piece: { i, _ in
            if i == 2 { throw MM1Error("stop") }
        }, end: { _ in }))
    }

    func testValuesLookNormal() throws {
        let g = PieceGenerator(seed: 1)
        let t = Synth.Planned(name: "w", dtype: .f32, shape: [100_000], values: .weight)
        var sum = 0.0, sq = 0.0, n = 0
        try g.stream(t) { piece in
            for f in piece.bindMemory(to: Float.self) {
                sum += Double(f)
                sq += Double(f) * Double(f)
                n += 1
            }
        }
        XCTAssertEqual(n, 100_000)
        XCTAssertEqual(sum / Double(n), 0, accuracy: 0.001)
        XCTAssertEqual((sq / Double(n)).squareRoot(), 0.02, accuracy: 0.0005)
        let s = Synth.Planned(name: "s", dtype: .bf16, shape: [1000], values: .scale)
        try g.stream(s) { piece in
            for h in piece.bindMemory(to: UInt16.self) {
                let f = Float(bitPattern: UInt32(h) << 16)
                XCTAssertTrue(f > 0.9 && f < 1.1)
            }
        }
    }
}

extension Converter {
    static func detectLayoutOrNil(_ path: String) -> String? { try? detectLayout(path) }
}
