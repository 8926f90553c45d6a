import Foundation

/// What a GGUF file contributes beyond its tensors (formats/layouts/gguf.md): the canonical config from the
/// `llama.*` metadata, and a Hugging Face `tokenizer.json` built from `tokenizer.ggml.*`.
public enum GGUFImport {
    /// `tokenizer.ggml.pre` values whose pre-tokenizer can be written as a `tokenizer.json` pre_tokenizer that
    /// `BPETokenizer` runs. Each is the split llama.cpp applies for that name.
    static var preTokenizers: [String: [String: Any]] { [
        // GPT-2's regex alone.
        "gpt-2": byteLevel(useRegex: true),
        // Each digit on its own, then GPT-2's regex (SmolLM, SmolLM2).
        "smollm": ["type": "Sequence", "pretokenizers": [
            ["type": "Digits", "individual_digits": true] as [String: Any], byteLevel(useRegex: true)]],
        // Llama 3's regex (digits in runs of up to three), then byte-level mapping without GPT-2's regex.
        "llama-bpe": ["type": "Sequence", "pretokenizers": [
            ["type": "Split", "pattern": ["Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
             "behavior": "Isolated", "invert": false] as [String: Any],
            byteLevel(useRegex: false)]],
    ] }

    static func byteLevel(useRegex: Bool) -> [String: Any] {
        ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": useRegex]
    }

    /// The canonical config of a Llama-architecture GGUF (formats/canonical.md; a text-only bundle).
    public static func config(_ r: GGUFReader) throws -> [String: Any] {
        let path = r.path
        func fail(_ m: String) -> MM1Error { MM1Error(file: path, m) }
        guard let arch = r.metadata["general.architecture"]?.stringValue else {
            throw fail("has no general.architecture string")
        }
        guard arch == "llama" else {
            throw fail("general.architecture '\(arch)' is not supported (only 'llama': Llama, Mistral and Mixtral-style decoders)")
        }
        func int(_ key: String) throws -> Int {
            guard let v = r.metadata["llama." + key] else { throw fail("llama.\(key) is missing") }
            guard let i = v.intValue, i >= 0 else { throw fail("llama.\(key) is \(v), not a non-negative integer") }
            return i
        }
        func optInt(_ key: String) throws -> Int? { r.metadata["llama." + key] == nil ? nil : try int(key) }
        func double(_ key: String) throws -> Double? {
            guard let v = r.metadata["llama." + key] else { return nil }
            guard let d = v.doubleValue, d.isFinite else { throw fail("llama.\(key) is \(v), not a number") }
            return d
        }
        let d = try int("embedding_length")
        let layers = try int("block_count")
        let ff = try int("feed_forward_length")
        let nq = try int("attention.head_count")
        let nkv = try optInt("attention.head_count_kv") ?? nq
        guard nq > 0, nkv > 0, nq % nkv == 0 else {
            throw fail("llama.attention.head_count \(nq) is not a positive multiple of llama.attention.head_count_kv \(nkv)")
        }
        let headDim = try optInt("attention.key_length") ?? (d / nq)
        if let vl = try optInt("attention.value_length"), vl != headDim {
            throw fail("llama.attention.value_length \(vl) differs from the key length \(headDim); the canonical decoder needs them equal")
        }
        if let rot = try optInt("rope.dimension_count"), rot != headDim {
            throw fail("llama.rope.dimension_count \(rot) is not the head dimension \(headDim): partial rotary embeddings are not supported")
        }
        guard let eps = try double("attention.layer_norm_rms_epsilon") else {
            throw fail("llama.attention.layer_norm_rms_epsilon is missing")
        }
        var scaling: Any = NSNull()
        if let t = r.metadata["llama.rope.scaling.type"] {
            let kind = t.stringValue ?? "\(t)"
            switch kind {
            case "none": break
            case "linear":
                guard let f = try double("rope.scaling.factor"), f > 0 else { throw fail("llama.rope.scaling.type is linear but llama.rope.scaling.factor is missing or not positive") }
                if f != 1 { scaling = ["rope_type": "linear", "factor": f] as [String: Any] }
            default:
                throw fail("llama.rope.scaling.type '\(kind)' is not supported (none, linear)")
            }
        }
        if r.tensors["rope_freqs.weight"] != nil {
            throw MM1Error(file: path, tensor: "rope_freqs.weight", "per-frequency RoPE factors (Llama 3.1-style scaling stored as a tensor) are not supported")
        }
        // The vocabulary size: the token list's length, else llama.vocab_size (files without a tokenizer, such as
        // mm1pack's own export of a bundle without one, where tokenizer.ggml.model is "none").
        let tokens = r.metadata["tokenizer.ggml.tokens"]?.arrayValue
        let vocab: Int
        switch (tokens?.count, try optInt("vocab_size")) {
        case let (n?, vs?) where n != vs:
            throw fail("llama.vocab_size \(vs) differs from the \(n) entries of tokenizer.ggml.tokens")
        case let (n?, _): vocab = n
        case let (nil, vs?): vocab = vs
        case (nil, nil): throw fail("has neither tokenizer.ggml.tokens nor llama.vocab_size, so the vocabulary size is unknown")
        }
        func tokenID(_ key: String) -> Any {
            guard let v = r.metadata["tokenizer.ggml." + key]?.intValue, v < vocab else { return NSNull() }
            return v
        }
        var llm: [String: Any] = [
            "kind": "decoder",
            "vocab_size": vocab,
            "hidden_size": d,
            "num_layers": layers,
            "num_heads": nq,
            "num_kv_heads": nkv,
            "head_dim": headDim,
            "intermediate_size": ff,
            "rms_norm_eps": eps,
            "rope_theta": try double("rope.freq_base") ?? 10000.0,
            "rope_scaling": scaling,
            "max_position_embeddings": try optInt("context_length") ?? 4096,
            "tie_embeddings": r.tensors["output.weight"] == nil,
            "attention_bias": r.tensors["blk.0.attn_q.bias"] != nil,
            "attention_out_bias": r.tensors["blk.0.attn_output.bias"] != nil,
            "activation": "silu",
            "moe": NSNull(),
            "bos_token_id": tokenID("bos_token_id"),
            "eos_token_id": tokenID("eos_token_id"),
        ]
        if let experts = try optInt("expert_count"), experts > 0 {
            llm["moe"] = [
                "num_experts": experts,
                "top_k": try optInt("expert_used_count") ?? 2,
                "intermediate_size": ff,
                "renormalize": true,
                "layers": Array(0..<layers),
            ] as [String: Any]
        }
        return ["vision": NSNull(), "connector": NSNull(), "llm": llm, "image_token_id": NSNull(), "image_processor": NSNull()]
    }

    /// A `tokenizer.json` (and a small `tokenizer_config.json`) from the GGUF vocabulary, or the reason it cannot
    /// be expressed.
    public static func tokenizerFiles(_ r: GGUFReader) -> (files: [(String, [UInt8])], refused: String?) {
        do {
            return (try buildTokenizer(r), nil)
        } catch let e as MM1Error {
            return ([], e.message)
        } catch {
            return ([], "\(error)")
        }
    }

    static func buildTokenizer(_ r: GGUFReader) throws -> [(String, [UInt8])] {
        let meta = r.metadata
        guard let model = meta["tokenizer.ggml.model"]?.stringValue else {
            throw MM1Error("tokenizer.ggml.model is missing")
        }
        guard model == "gpt2" else {
            throw MM1Error("tokenizer.ggml.model '\(model)' is not supported (only 'gpt2', byte-level BPE; 'llama' is a SentencePiece model, which tokenizer.json import does not cover)")
        }
        let pre = meta["tokenizer.ggml.pre"]?.stringValue ?? "default"
        guard let preTok = preTokenizers[pre] else {
            throw MM1Error("tokenizer.ggml.pre '\(pre)' has no known tokenizer.json equivalent (known: \(preTokenizers.keys.sorted().joined(separator: ", ")))")
        }
        guard let tokVals = meta["tokenizer.ggml.tokens"]?.arrayValue else { throw MM1Error("tokenizer.ggml.tokens is missing") }
        var tokens: [String] = []
        tokens.reserveCapacity(tokVals.count)
        for (i, v) in tokVals.enumerated() {
            guard let s = v.stringValue else { throw MM1Error("tokenizer.ggml.tokens[\(i)] is not a string") }
            tokens.append(s)
        }
        var types = [Int](repeating: 1, count: tokens.count)
        if let tt = meta["tokenizer.ggml.token_type"]?.arrayValue {
            guard tt.count == tokens.count else {
                throw MM1Error("tokenizer.ggml.token_type has \(tt.count) entries for \(tokens.count) tokens")
            }
            for (i, v) in tt.enumerated() {
                guard let t = v.intValue else { throw MM1Error("tokenizer.ggml.token_type[\(i)] is not an integer") }
                types[i] = t
            }
        }
        guard let mergeVals = meta["tokenizer.ggml.merges"]?.arrayValue else { throw MM1Error("tokenizer.ggml.merges is missing (a gpt2 tokenizer needs its merges)") }
        var merges: [String] = []
        merges.reserveCapacity(mergeVals.count)
        for (i, v) in mergeVals.enumerated() {
            guard let s = v.stringValue else { throw MM1Error("tokenizer.ggml.merges[\(i)] is not a string") }
            merges.append(s)
        }
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(tokens.count)
        var added: [[String: Any]] = []
        for (id, tok) in tokens.enumerated() {
            let type = types[id]
            // 3 = control, 4 = user-defined: matched in the raw text before BPE, as tokenizer.json added tokens.
            if type == 3 || type == 4 {
                added.append(["id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": type == 3])
            }
            if let other = vocab[tok] {
                // Only added tokens may repeat a string; BPE needs one id per piece.
                guard type == 3 || type == 4 else {
                    throw MM1Error("tokenizer.ggml.tokens gives '\(tok)' two ids (\(other) and \(id))")
                }
                continue
            }
            vocab[tok] = id
        }
        let json: [String: Any] = [
            "version": "1.0",
            "truncation": NSNull(),
            "padding": NSNull(),
            "added_tokens": added,
            "normalizer": NSNull(),
            "pre_tokenizer": preTok,
            "post_processor": NSNull(),
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true] as [String: Any],
            "model": [
                "type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": NSNull(),
                "end_of_word_suffix": NSNull(), "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            ] as [String: Any],
        ]
        let data = try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys, .withoutEscapingSlashes])
        // Refuse here what the tokenizer would refuse at run time (e.g. a merge naming an unknown token).
        _ = try BPETokenizer(json: [UInt8](data), file: "tokenizer.json (built from \(r.path))")

        var tc: [String: Any] = [
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": meta["tokenizer.ggml.add_bos_token"]?.boolValue ?? false,
            "add_eos_token": meta["tokenizer.ggml.add_eos_token"]?.boolValue ?? false,
        ]
        for (key, field) in [("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"), ("unknown_token_id", "unk_token"), ("padding_token_id", "pad_token")] {
            if let id = meta["tokenizer.ggml." + key]?.intValue, id < tokens.count { tc[field] = tokens[id] }
        }
        if let t = meta["tokenizer.chat_template"]?.stringValue { tc["chat_template"] = t }
        let tcData = try JSONSerialization.data(withJSONObject: tc, options: [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted])
        return [("tokenizer.json", [UInt8](data)), ("tokenizer_config.json", [UInt8](tcData))]
    }

    /// What the bundle's metadata records about the GGUF source.
    static func metadata(_ r: GGUFReader) -> [String: Any] {
        var counts: [String: Int] = [:]
        for e in r.entries { counts[e.typeName, default: 0] += 1 }
        var kv: [String: Any] = [:]
        for k in r.keys { kv[k] = r.metadata[k]!.json(maxArray: 16) }
        return ["version": Int(r.version), "tensor_types": counts, "metadata": kv,
                "dequantized": r.entries.contains(where: \.isQuantized)]
    }
}
