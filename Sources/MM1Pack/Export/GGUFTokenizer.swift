import Foundation

/// The `tokenizer.ggml.*` metadata of a GGUF file, from a bundle's Hugging Face `tokenizer.json`
/// (formats/gguf-export.md §4). Only byte-level BPE is carried over (`tokenizer.ggml.model` "gpt2"); other
/// tokenizers are refused with a message that names `--no-tokenizer`.
public enum GGUFTokenizer {
    /// llama.cpp token types.
    public enum TokenType: Int32 {
        case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    static let llama3Regex = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The llama.cpp pre-tokenizer name (`tokenizer.ggml.pre`) whose splitting equals this `pre_tokenizer` and
    /// `normalizer`, for the configurations recognised exactly; nil otherwise.
    static func preTokenizerName(_ root: [String: Any]) -> String? {
        guard root["normalizer"] == nil || root["normalizer"] is NSNull else { return nil }
        guard let pre = root["pre_tokenizer"] as? [String: Any], let type = pre["type"] as? String else { return nil }
        func byteLevel(_ p: [String: Any], regex: Bool) -> Bool {
            p["type"] as? String == "ByteLevel" && (p["use_regex"] as? Bool ?? true) == regex
                && (p["add_prefix_space"] as? Bool ?? false) == false
        }
        if type == "ByteLevel" { return byteLevel(pre, regex: true) ? "gpt-2" : nil }
        guard type == "Sequence", let seq = pre["pretokenizers"] as? [[String: Any]] else { return nil }
        if seq.count == 2, seq[0]["type"] as? String == "Split",
           (seq[0]["pattern"] as? [String: Any])?["Regex"] as? String == llama3Regex,
           seq[0]["behavior"] as? String == "Isolated", seq[0]["invert"] as? Bool == false,
           byteLevel(seq[1], regex: false) {
            return "llama-bpe"
        }
        if seq.count == 2, seq[0]["type"] as? String == "Digits", seq[0]["individual_digits"] as? Bool == true,
           byteLevel(seq[1], regex: true) {
            return "smollm"
        }
        return nil
    }

    /// Builds the tokenizer metadata. `vocabSize` is the embedding's row count: the token list has exactly that
    /// many entries (ids the tokenizer does not define become `[PAD<id>]`, type unused, as llama.cpp's converter
    /// does). `preOverride` replaces the detected `tokenizer.ggml.pre`.
    public static func metadata(tokenizerJSON: [UInt8], vocabSize: Int, bosTokenID: Int?, eosTokenID: Int?,
                                chatTemplate: String?, preOverride: String?, file: String) throws -> [(String, GGUFValue)] {
        func fail(_ m: String) -> MM1Error {
            MM1Error(file: file, "section 'tokenizer.json': \(m); export with --no-tokenizer to leave the tokenizer out")
        }
        guard let root = (try? JSONSerialization.jsonObject(with: Data(tokenizerJSON))) as? [String: Any] else {
            throw fail("not a JSON object")
        }
        guard let model = root["model"] as? [String: Any], model["type"] as? String == "BPE" else {
            throw fail("model type '\(((root["model"] as? [String: Any])?["type"] as? String) ?? "?")' is not BPE; only byte-level BPE maps onto llama.cpp's 'gpt2' tokenizer")
        }
        guard (model["byte_fallback"] as? Bool ?? false) == false else {
            throw fail("BPE with byte_fallback (SentencePiece-style) is not byte-level BPE; llama.cpp's 'llama' tokenizer needs SentencePiece scores this file does not have")
        }
        let pre: String
        if let preOverride {
            pre = preOverride
        } else if let p = preTokenizerName(root) {
            pre = p
        } else {
            throw MM1Error(file: file, "section 'tokenizer.json': its pre_tokenizer/normalizer is not one whose llama.cpp name is known exactly (GPT-2 ByteLevel → gpt-2, Llama 3 Split+ByteLevel → llama-bpe, Digits+ByteLevel → smollm); pass --tokenizer-pre NAME with llama.cpp's name for it, or --no-tokenizer")
        }
        guard let vocab = model["vocab"] as? [String: Any] else { throw fail("model.vocab is missing") }
        var tokens = [String?](repeating: nil, count: vocabSize)
        var types = [Int32](repeating: TokenType.unused.rawValue, count: vocabSize)
        for (tok, v) in vocab {
            guard let id = (v as? NSNumber)?.intValue, id >= 0 else { throw fail("vocab entry '\(tok)' has no integer id") }
            guard id < vocabSize else {
                throw fail("token '\(tok)' has id \(id), but the embedding has only \(vocabSize) rows (llm.vocab_size)")
            }
            if tokens[id] != nil { throw fail("id \(id) is used by two vocab entries") }
            tokens[id] = tok
            types[id] = TokenType.normal.rawValue
        }
        for a in root["added_tokens"] as? [[String: Any]] ?? [] {
            guard let id = (a["id"] as? NSNumber)?.intValue, let content = a["content"] as? String, id >= 0 else {
                throw fail("an added_tokens entry has no id or content")
            }
            guard id < vocabSize else {
                throw fail("added token '\(content)' has id \(id), but the embedding has only \(vocabSize) rows (llm.vocab_size)")
            }
            tokens[id] = content
            types[id] = (a["special"] as? Bool ?? false) ? TokenType.control.rawValue : TokenType.userDefined.rawValue
        }
        let list = tokens.enumerated().map { $0.element ?? "[PAD\($0.offset)]" }
        var merges: [String] = []
        for m in model["merges"] as? [Any] ?? [] {
            if let s = m as? String {
                merges.append(s)
            } else if let p = m as? [String], p.count == 2 {
                guard !p[0].contains(" "), !p[1].contains(" ") else {
                    throw fail("merge \(p) contains a space, which GGUF's 'a b' merge strings cannot express")
                }
                merges.append(p[0] + " " + p[1])
            } else {
                throw fail("model.merges holds an entry that is neither \"a b\" nor [a, b]")
            }
        }
        var kv: [(String, GGUFValue)] = [
            ("tokenizer.ggml.model", .string("gpt2")),
            ("tokenizer.ggml.pre", .string(pre)),
            ("tokenizer.ggml.tokens", .stringArray(list)),
            ("tokenizer.ggml.token_type", .i32Array(types)),
            ("tokenizer.ggml.merges", .stringArray(merges)),
        ]
        func id(_ key: String, _ v: Int?) throws {
            guard let v else { return }
            guard v >= 0, v < vocabSize else { throw fail("\(key) \(v) is outside the vocabulary (\(vocabSize))") }
            kv.append((key, .u32(UInt32(v))))
        }
        try id("tokenizer.ggml.bos_token_id", bosTokenID)
        try id("tokenizer.ggml.eos_token_id", eosTokenID)
        if let unk = model["unk_token"] as? String, let u = (vocab[unk] as? NSNumber)?.intValue {
            try id("tokenizer.ggml.unknown_token_id", u)
        }
        // add_bos/add_eos: what the post-processor's single-sequence template puts around the text.
        var addBOS = false, addEOS = false
        if let pp = root["post_processor"] as? [String: Any] {
            let procs: [[String: Any]] = pp["type"] as? String == "Sequence" ? (pp["processors"] as? [[String: Any]] ?? []) : [pp]
            for p in procs where p["type"] as? String == "TemplateProcessing" {
                let single = p["single"] as? [[String: Any]] ?? []
                addBOS = single.first?["SpecialToken"] != nil
                addEOS = single.count > 1 && single.last?["SpecialToken"] != nil
            }
        }
        kv.append(("tokenizer.ggml.add_bos_token", .bool(addBOS)))
        kv.append(("tokenizer.ggml.add_eos_token", .bool(addEOS)))
        if let chatTemplate { kv.append(("tokenizer.chat_template", .string(chatTemplate))) }
        return kv
    }
}
