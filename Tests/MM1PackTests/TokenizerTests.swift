import Foundation
import XCTest
@testable import MM1Pack

final class TokenizerTests: XCTestCase {
    private func load(_ rel: String) throws -> BPETokenizer {
        let path = TestPaths.repo + "/" + rel
        let data = try XCTUnwrap(FileManager.default.contents(atPath: path), "cannot read \(path)")
        return try BPETokenizer(json: [UInt8](data), file: path)
    }

    /// probes_text.jsonl encodes to exactly the ids of probes.jsonl (formats/probes.md).
    func testLlavaLlamaProbeTextsGiveProbeIDs() throws {
        let tok = try load("fixtures/llava-llama/tokenizer.json")
        let dir = TestPaths.fixture("llava-llama") + "/reference/"
        let texts = try ProbeFile.load(dir + "probes_text.jsonl")
        let ids = try ProbeFile.load(dir + "probes.jsonl")
        XCTAssertEqual(texts.map(\.id), ids.map(\.id))
        for (t, i) in zip(texts, ids) {
            let text = try XCTUnwrap(t.text)
            XCTAssertEqual(try tok.encode(text), try XCTUnwrap(i.inputIDs), "probe \(t.id)")
            XCTAssertEqual(tok.decode(try tok.encode(text)), text, "probe \(t.id)")
        }
        XCTAssertEqual(tok.tokenID("<image>"), 3)
    }

    /// Expected ids and decodings written by scripts/make_tokenizer_cases.py with the tokenizers library.
    func testMatchesTokenizersLibrary() throws {
        for name in ["llava-llama", "gpt2", "llama3", "smol", "misc"] {
            let path = TestPaths.fixture("tokenizer") + "/\(name).cases.json"
            let data = try XCTUnwrap(FileManager.default.contents(atPath: path))
            let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            let tok = try load(try XCTUnwrap(obj["tokenizer"] as? String))
            let cases = try XCTUnwrap(obj["cases"] as? [[String: Any]])
            XCTAssertGreaterThan(cases.count, 50)
            var failures = 0
            for c in cases {
                let text = try XCTUnwrap(c["text"] as? String)
                let want = try XCTUnwrap(c["ids"] as? [Int])
                let got = try tok.encode(text)
                if got != want {
                    failures += 1
                    XCTFail("\(name): \(text.debugDescription)\n got  \(got)\n want \(want)")
                }
                XCTAssertEqual(tok.decode(want), try XCTUnwrap(c["decoded"] as? String), "\(name): decode \(want)")
            }
            XCTAssertEqual(failures, 0, name)
        }
    }

    /// Extra cases files in the same format (for example larger random sets made on the fly), named by the
    /// environment variable MM1PACK_TOKENIZER_CASES as a colon-separated list; skipped when it is unset.
    func testExtraCasesFromEnvironment() throws {
        guard let list = ProcessInfo.processInfo.environment["MM1PACK_TOKENIZER_CASES"], !list.isEmpty else {
            throw XCTSkip("MM1PACK_TOKENIZER_CASES is not set")
        }
        for path in list.split(separator: ":").map(String.init) {
            let data = try XCTUnwrap(FileManager.default.contents(atPath: path), path)
            let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            let tok = try load(try XCTUnwrap(obj["tokenizer"] as? String))
            var failures = 0
            let cases = try XCTUnwrap(obj["cases"] as? [[String: Any]])
            for c in cases {
                let text = try XCTUnwrap(c["text"] as? String)
                let want = try XCTUnwrap(c["ids"] as? [Int])
                let got = try tok.encode(text)
                if got != want {
                    failures += 1
                    if failures <= 10 { XCTFail("\(path): \(text.debugDescription)\n got  \(got)\n want \(want)") }
                }
                if let d = c["decoded"] as? String, tok.decode(want) != d { XCTFail("\(path): decode \(want)") }
            }
            XCTAssertEqual(failures, 0, "\(path): \(failures) of \(cases.count) differ")
        }
    }

    func testRoundTrip() throws {
        let strings = [
            "", " ", "Hello, world!", "  two  spaces\n\nnew lines\r\n\ttab", "I'm sure they'll've done it",
            "1234567890 3.14", "Ça va? Über straße naïve", "e\u{301} decomposed", "Ελληνικά Русский 中文 日本語 한국어",
            "👍🏽 👨‍👩‍👧 🇫🇷 emoji😀mix", "\u{0}\u{1}\u{7f}\u{85}\u{a0}\u{2028}\u{3000}", "<|endoftext|> <|eot_id|>",
            "code:\n    return x**2  # c\n", String(repeating: "long word ", count: 200), "ﬁx ① Ａ",
        ]
        for name in ["gpt2", "llama3"] {
            let tok = try load("fixtures/tokenizer/\(name).tokenizer.json")
            for s in strings {
                let ids = try tok.encode(s)
                XCTAssertEqual(tok.decode(ids), s, "\(name): \(s.debugDescription) -> \(ids)")
                XCTAssertEqual(Array(tok.decode(ids).unicodeScalars), Array(s.unicodeScalars), "\(name) scalars")
            }
        }
        let fixture = try load("fixtures/llava-llama/tokenizer.json")
        for s in ["<s>what is in this picture? describe the dog", "the cat is sitting on a mat", "</s><image>two cats"] {
            XCTAssertEqual(fixture.decode(try fixture.encode(s)), s)
        }
    }

    func testLongInputIsLinearEnough() throws {
        let tok = try load("fixtures/tokenizer/llama3.tokenizer.json")
        let long = String(repeating: "word ", count: 20_000) + String(repeating: " ", count: 50_000) + String(repeating: "x", count: 50_000)
        let start = Date()
        let ids = try tok.encode(long)
        XCTAssertEqual(tok.decode(ids), long)
        XCTAssertLessThan(Date().timeIntervalSince(start), 30)
    }

    // MARK: Refusals and hostile files

    private func fixtureObject() throws -> [String: Any] {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: TestPaths.fixture("llava-llama") + "/tokenizer.json"))
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    private func expectRefusal(_ obj: Any, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        let bytes: [UInt8]
        if let raw = obj as? [UInt8] { bytes = raw } else {
            bytes = [UInt8]((try? JSONSerialization.data(withJSONObject: obj)) ?? Data())
        }
        do {
            _ = try BPETokenizer(json: bytes, file: "t.json")
            XCTFail("accepted; expected a refusal mentioning '\(fragment)'", file: file, line: line)
        } catch let e as MM1Error {
            XCTAssertEqual(e.file, "t.json", file: file, line: line)
            XCTAssertTrue(e.message.contains(fragment), "message '\(e.message)' lacks '\(fragment)'", file: file, line: line)
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
    }

    private func modified(_ f: (inout [String: Any]) -> Void) throws -> [String: Any] {
        var o = try fixtureObject()
        f(&o)
        return o
    }

    private func modifiedModel(_ f: (inout [String: Any]) -> Void) throws -> [String: Any] {
        try modified { o in
            var m = o["model"] as! [String: Any]
            f(&m)
            o["model"] = m
        }
    }

    func testRefusesUnsupportedComponents() throws {
        expectRefusal(Array("not json".utf8), "not valid JSON")
        expectRefusal([1, 2, 3], "not a JSON object")
        expectRefusal(["version": "1.0"], "no \"model\"")
        expectRefusal(try modifiedModel { $0["type"] = "WordPiece" }, "'WordPiece' is not supported")
        expectRefusal(try modifiedModel { $0["type"] = "Unigram" }, "'Unigram'")
        expectRefusal(try modifiedModel { $0["dropout"] = 0.1 }, "dropout")
        expectRefusal(try modified { $0["normalizer"] = ["type": "Lowercase"] }, "normalizer 'Lowercase'")
        expectRefusal(try modified { $0["normalizer"] = ["type": "Sequence", "normalizers": [["type": "NFC"], ["type": "Strip"]]] }, "'Strip'")
        expectRefusal(try modified { $0["pre_tokenizer"] = ["type": "Metaspace", "replacement": "▁"] }, "pre-tokenizer 'Metaspace'")
        expectRefusal(try modified { $0["pre_tokenizer"] = ["type": "Whitespace"] }, "'Whitespace'")
        expectRefusal(try modified { $0["decoder"] = ["type": "WordPiece"] }, "decoder type 'WordPiece'")
        expectRefusal(try modified {
            $0["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": "(?<=a)b"], "behavior": "Isolated", "invert": false]
        }, "regex is not supported")
        expectRefusal(try modified {
            $0["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": "(a"], "behavior": "Isolated", "invert": false]
        }, "unterminated group")
        expectRefusal(try modified {
            $0["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": "\\p{Xyz}"], "behavior": "Isolated", "invert": false]
        }, "'Xyz' is not supported")
        expectRefusal(try modified {
            $0["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": "a"], "behavior": "Sideways", "invert": false]
        }, "behavior 'Sideways'")
    }

    func testRefusesHostileModels() throws {
        expectRefusal(try modifiedModel { $0["vocab"] = ["a": -1] }, "not a token id")
        expectRefusal(try modifiedModel { $0["vocab"] = ["a": 1e30] }, "not a token id")
        expectRefusal(try modifiedModel { $0["vocab"] = ["a": 5_000_000_000] }, "not a token id")
        expectRefusal(try modifiedModel { $0["vocab"] = ["a": "x"] }, "not a token id")
        expectRefusal(try modifiedModel { $0["vocab"] = ["a": 1, "b": 1] }, "gives id 1 to both")
        expectRefusal(try modifiedModel { $0["vocab"] = [1, 2] }, "model.vocab must be an object")
        expectRefusal(try modifiedModel { $0["merges"] = "a b" }, "model.merges must be a list")
        expectRefusal(try modifiedModel { $0["merges"] = ["t h", "a b c"] }, "merges[1]")
        expectRefusal(try modifiedModel { $0["merges"] = ["th"] }, "two tokens")
        expectRefusal(try modifiedModel { $0["merges"] = [["t"]] }, "neither")
        expectRefusal(try modifiedModel { $0["merges"] = [["t", 5]] }, "neither")
        expectRefusal(try modifiedModel { $0["merges"] = ["x y"] }, "'x' is not in the vocabulary")
        expectRefusal(try modifiedModel { $0["merges"] = ["a b"] }, "merged token 'ab'")
        expectRefusal(try modified { $0["added_tokens"] = [["content": "x"]] }, "added_tokens[0]")
        expectRefusal(try modified { $0["added_tokens"] = [["content": "x", "id": 7], ["content": "y", "id": 7]] }, "gives id 7")
        var deep: Any = ["type": "ByteLevel"]
        for _ in 0..<40 { deep = ["type": "Sequence", "pretokenizers": [deep]] }
        expectRefusal(try modified { $0["pre_tokenizer"] = deep }, "pre_tokenizer")
        expectRefusal(Array((String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)).utf8), "not valid JSON")
    }

    /// Merges whose results feed back on themselves, huge ids and an unk_token missing from the vocabulary
    /// load (as in tokenizers) and encode without crashing or looping.
    func testHostileButLoadableModels() throws {
        var cyclic = try modifiedModel { m in
            m["vocab"] = ["<unk>": 4_294_967_295, "a": 0, "aa": 1, "aaa": 2, "aaaa": 3]
            m["merges"] = ["a a", "aa a", "a aa", "aa aa", "a aaa", "aaa a", "a a"]
            m["unk_token"] = "<missing>"
        }
        cyclic["added_tokens"] = []
        let tok = try BPETokenizer(json: [UInt8](try JSONSerialization.data(withJSONObject: cyclic)), file: "t.json")
        XCTAssertEqual(try tok.encode(String(repeating: "a", count: 9)), [3, 3, 0])
        XCTAssertThrowsError(try tok.encode("b")) { e in
            XCTAssertTrue((e as? MM1Error)?.message.contains("unk_token") ?? false, "\(e)")
        }
        XCTAssertEqual(tok.decode([4_294_967_295, -5, Int.max, 3]), "<unk>aaaa")
    }

    func testCatastrophicRegexFailsInsteadOfHanging() throws {
        let o = try modified {
            $0["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": "(a|a)*(a|a)*(a|a)*b"], "behavior": "Isolated", "invert": false]
        }
        let tok = try BPETokenizer(json: [UInt8](try JSONSerialization.data(withJSONObject: o)), file: "t.json")
        XCTAssertThrowsError(try tok.encode(String(repeating: "a", count: 200))) { e in
            XCTAssertTrue((e as? MM1Error)?.message.contains("too many steps") ?? false, "\(e)")
        }
    }

    /// A quantified group recurses once per repetition; on a long text it must fail cleanly even on a small
    /// stack (Swift concurrency threads have 512 KB; this uses 256 KB).
    func testDeepRegexRecursionFailsCleanlyOnSmallStack() throws {
        let o = try modified {
            $0["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": "(?:ab)*"], "behavior": "Isolated", "invert": false]
        }
        let tok = try BPETokenizer(json: [UInt8](try JSONSerialization.data(withJSONObject: o)), file: "t.json")
        XCTAssertEqual(try tok.encode("ab ab"), [5, 6, 0, 5, 6])  // no ByteLevel: ' ' is not 'Ġ', so unknown
        // On the main thread's large stack, moderately deep nesting is fine (the guard follows the real stack).
        XCTAssertEqual(try tok.encode(String(repeating: "ab", count: 150)).count, 300)
        let done = expectation(description: "thread")
        let box = ResultBox()
        let t = Thread {
            box.threw = (try? tok.encode(String(repeating: "ab", count: 100_000))) == nil
            done.fulfill()
        }
        t.stackSize = 256 * 1024
        t.start()
        wait(for: [done], timeout: 60)
        XCTAssertTrue(box.threw)
    }

    /// Truncated and bit-flipped variants of a real tokenizer.json either load or throw; they never crash.
    func testMutatedFilesDoNotCrash() throws {
        let path = TestPaths.fixture("tokenizer") + "/llama3.tokenizer.json"
        let good = [UInt8](try XCTUnwrap(FileManager.default.contents(atPath: path)))
        var rng = SplitMix64(seed: 12345)
        for n in 0..<300 {
            var bytes = good
            if n % 3 == 0 {
                bytes = Array(bytes[0..<Int(rng.next() % UInt64(bytes.count))])
            } else {
                for _ in 0..<(1 + Int(rng.next() % 4)) {
                    let i = Int(rng.next() % UInt64(bytes.count))
                    bytes[i] = UInt8(truncatingIfNeeded: rng.next())
                }
            }
            if let tok = try? BPETokenizer(json: bytes, file: "m.json") {
                _ = try? tok.encode("Hello <|eot_id|> world 123 'll ünïcödé 👍\n\n")
                _ = tok.decode([0, 1, 2, 300, 799, 100_000])
            }
        }
    }
}

private final class ResultBox: @unchecked Sendable { var threw = false }

