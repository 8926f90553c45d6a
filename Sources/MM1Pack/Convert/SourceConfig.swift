import Foundation

/// Reads the configuration files a checkpoint ships with and produces the canonical config
/// (formats/canonical.md). Each source family spells hyper-parameters differently (and transformers v4 and v5
/// differ between themselves); this is the one place that knows all the spellings.
public enum SourceConfig {
    public static func readJSON(_ path: String) throws -> [String: Any] {
        guard let data = FileManager.default.contents(atPath: path) else { throw MM1Error(file: path, "cannot read") }
        guard let obj = try? JSONSerialization.jsonObject(with: data), let dict = obj as? [String: Any] else {
            throw MM1Error(file: path, "is not a JSON object")
        }
        return dict
    }

    struct Fields {
        let dict: [String: Any]
        let file: String
        let section: String

        func int(_ key: String) throws -> Int {
            guard let v = ConfigLookup.int(dict, key) else {
                throw MM1Error(file: file, "\(section)\(key) is missing or not an integer")
            }
            return v
        }
        func int(_ key: String, default d: Int) -> Int { ConfigLookup.int(dict, key) ?? d }
        func double(_ key: String, default d: Double) -> Double {
            if let x = dict[key] as? Double { return x }
            if let x = dict[key] as? Int { return Double(x) }
            return d
        }
        func string(_ key: String, default d: String) -> String { (dict[key] as? String) ?? d }
        func bool(_ key: String, default d: Bool) -> Bool { (dict[key] as? Bool) ?? d }
        func sub(_ key: String) -> Fields? {
            guard let s = dict[key] as? [String: Any] else { return nil }
            return Fields(dict: s, file: file, section: section + key + ".")
        }
    }

    // MARK: Hugging Face pieces

    /// transformers `CLIPVisionConfig` → canonical `vision`.
    static func clipVision(_ f: Fields, featureLayer: Int, dropClass: Bool) throws -> [String: Any] {
        let e = try f.int("hidden_size")
        let heads = try f.int("num_attention_heads")
        guard heads > 0, e % heads == 0 else {
            throw MM1Error(file: f.file, "\(f.section)hidden_size \(e) is not divisible by num_attention_heads \(heads)")
        }
        return [
            "kind": "clip_vit",
            "hidden_size": e,
            "num_layers": try f.int("num_hidden_layers"),
            "num_heads": heads,
            "intermediate_size": try f.int("intermediate_size"),
            "patch_size": try f.int("patch_size"),
            "image_size": try f.int("image_size"),
            "num_channels": f.int("num_channels", default: 3),
            "class_token": true,
            "patch_bias": false,
            "pre_norm": true,
            "post_norm": true,
            "layer_norm_eps": f.double("layer_norm_eps", default: 1e-5),
            "activation": f.string("hidden_act", default: "quick_gelu"),
            "feature_layer": featureLayer,
            "post_norm_features": false,
            "drop_class_token": dropClass,
        ]
    }

    /// transformers Llama / Mistral / Mixtral text config → canonical `llm`.
    static func decoder(_ f: Fields, tieDefault: Bool) throws -> [String: Any] {
        let type = f.string("model_type", default: "llama")
        guard ["llama", "mistral", "mixtral"].contains(type) else {
            throw MM1Error(file: f.file, "\(f.section)model_type '\(type)' is not a supported language model (llama, mistral, mixtral)")
        }
        if f.bool("mlp_bias", default: false) {
            throw MM1Error(file: f.file, "\(f.section)mlp_bias = true is not supported (the canonical MLP has no biases)")
        }
        let d = try f.int("hidden_size")
        let nq = try f.int("num_attention_heads")
        let nkv = f.int("num_key_value_heads", default: nq)
        guard nq > 0, nkv > 0, nq % nkv == 0 else {
            throw MM1Error(file: f.file, "\(f.section)num_attention_heads \(nq) is not a multiple of num_key_value_heads \(nkv)")
        }
        let headDim = ConfigLookup.int(f.dict, "head_dim") ?? (d / nq)
        let layers = try f.int("num_hidden_layers")
        let ff = try f.int("intermediate_size")
        // v4 writes rope_theta and rope_scaling; v5 writes rope_parameters {rope_type, rope_theta, ...}.
        var theta = f.double("rope_theta", default: type == "mixtral" ? 1e6 : 1e4)
        var scaling: Any = NSNull()
        if let rp = f.dict["rope_parameters"] as? [String: Any] {
            if let t = rp["rope_theta"] as? Double { theta = t } else if let t = rp["rope_theta"] as? Int { theta = Double(t) }
            var rest = rp
            rest["rope_theta"] = nil
            if let kind = rest["rope_type"] as? String, kind != "default" { scaling = rest }
        }
        if let rs = f.dict["rope_scaling"] as? [String: Any] { scaling = rs }
        var llm: [String: Any] = [
            "kind": "decoder",
            "vocab_size": try f.int("vocab_size"),
            "hidden_size": d,
            "num_layers": layers,
            "num_heads": nq,
            "num_kv_heads": nkv,
            "head_dim": headDim,
            "intermediate_size": ff,
            "rms_norm_eps": f.double("rms_norm_eps", default: 1e-6),
            "rope_theta": theta,
            "rope_scaling": scaling,
            "max_position_embeddings": f.int("max_position_embeddings", default: 4096),
            "tie_embeddings": f.bool("tie_word_embeddings", default: tieDefault),
            // transformers Llama's attention_bias puts biases on q, k, v and o alike.
            "attention_bias": f.bool("attention_bias", default: false),
            "attention_out_bias": f.bool("attention_bias", default: false),
            "activation": f.string("hidden_act", default: "silu"),
            "moe": NSNull(),
            "bos_token_id": f.dict["bos_token_id"] as? Int as Any? ?? NSNull(),
            "eos_token_id": f.dict["eos_token_id"] as? Int as Any? ?? NSNull(),
        ]
        if type == "mixtral" {
            llm["moe"] = [
                "num_experts": try f.int("num_local_experts"),
                "top_k": f.int("num_experts_per_tok", default: 2),
                "intermediate_size": ff,
                "renormalize": true,
                "layers": Array(0..<layers),
            ] as [String: Any]
        }
        return llm
    }

    static func imageProcessor(dir: String, vision: [String: Any]?) -> Any {
        let path = dir + "/preprocessor_config.json"
        guard let vision, let p = try? readJSON(path) else { return NSNull() }
        let size = (p["crop_size"] as? [String: Any])?["height"] as? Int ?? (vision["image_size"] as? Int ?? 0)
        return [
            "image_size": size,
            "image_mean": p["image_mean"] ?? [0.48145466, 0.4578275, 0.40821073],
            "image_std": p["image_std"] ?? [0.26862954, 0.26130258, 0.27577711],
            "resize": ((p["do_center_crop"] as? Bool) ?? true) ? "shortest_edge_crop" : "squash",
            "rescale_factor": p["rescale_factor"] ?? 1.0 / 255.0,
        ] as [String: Any]
    }

    // MARK: per layout

    public static func llava(dir: String) throws -> [String: Any] {
        let path = dir + "/config.json"
        let top = Fields(dict: try readJSON(path), file: path, section: "")
        let type = top.string("model_type", default: "")
        if type != "llava" {
            // A text-only causal LM: the whole file is the text config.
            return ["vision": NSNull(), "connector": NSNull(), "llm": try decoder(top, tieDefault: false),
                    "image_token_id": NSNull(), "image_processor": NSNull()]
        }
        guard let vc = top.sub("vision_config"), let tc = top.sub("text_config") else {
            throw MM1Error(file: path, "a llava config needs vision_config and text_config")
        }
        let vType = vc.string("model_type", default: "clip_vision_model")
        guard vType == "clip_vision_model" else {
            throw MM1Error(file: path, "vision_config.model_type '\(vType)' is not supported (clip_vision_model)")
        }
        if top.dict["vision_feature_layer"] is [Any] {
            throw MM1Error(file: path, "vision_feature_layer lists several layers; only a single layer is supported")
        }
        let strategy = top.string("vision_feature_select_strategy", default: "default")
        guard strategy == "default" || strategy == "full" else {
            throw MM1Error(file: path, "vision_feature_select_strategy '\(strategy)' is not supported (default, full)")
        }
        let vision = try clipVision(vc, featureLayer: top.int("vision_feature_layer", default: -2),
                                    dropClass: strategy == "default")
        let llm = try decoder(tc, tieDefault: top.bool("tie_word_embeddings", default: false))
        guard top.bool("multimodal_projector_bias", default: true) else {
            throw MM1Error(file: path, "multimodal_projector_bias = false is not supported")
        }
        let connector: [String: Any] = [
            "kind": "mlp",
            "input_size": vision["hidden_size"]!,
            "output_size": llm["hidden_size"]!,
            "activation": top.string("projector_hidden_act", default: "gelu"),
        ]
        let imageToken = ConfigLookup.int(top.dict, "image_token_index") ?? ConfigLookup.int(top.dict, "image_token_id")
        return ["vision": vision, "connector": connector, "llm": llm,
                "image_token_id": imageToken as Any? ?? NSNull(),
                "image_processor": imageProcessor(dir: dir, vision: vision)]
    }

    public static func honeybee(dir: String) throws -> [String: Any] {
        let path = dir + "/config.json"
        let top = Fields(dict: try readJSON(path), file: path, section: "")
        guard let vc = top.sub("vision_config"), let tc = top.sub("text_config") else {
            throw MM1Error(file: path, "a honeybee config needs vision_config and text_config")
        }
        // Legacy checkpoints call it visual_projector_config.
        guard let pc = top.sub("projector_config") ?? top.sub("visual_projector_config") else {
            throw MM1Error(file: path, "a honeybee config needs projector_config")
        }
        let vType = vc.string("model_type", default: "clip_vision_model")
        guard vType == "clip_vision_model" else {
            throw MM1Error(file: path, "vision_config.model_type '\(vType)' is not supported (clip_vision_model)")
        }
        let ptype = pc.string("projector_type", default: "c-abs")
        guard ptype == "c-abs" || ptype == "cabstractor" else {
            throw MM1Error(file: path, "projector_type '\(ptype)' is not supported (c-abs)")
        }
        // Honeybee takes hidden_states[feature_layer_index] (no post-norm) and drops the class token.
        let vision = try clipVision(vc, featureLayer: pc.int("feature_layer_index", default: -1), dropClass: true)
        let llm = try decoder(tc, tieDefault: false)
        let grid = (vision["image_size"] as! Int) / (vision["patch_size"] as! Int)
        let queries = pc.int("num_query_tokens", default: top.int("num_query_tokens", default: 144))
        let side = Int(Double(queries).squareRoot())
        guard side * side == queries else { throw MM1Error(file: path, "num_query_tokens \(queries) is not a square") }
        let connector: [String: Any] = [
            "kind": "c_abstractor",
            "input_size": pc.int("encoder_hidden_size", default: vision["hidden_size"] as! Int),
            "hidden_size": try pc.int("hidden_size"),
            "output_size": pc.int("output_hidden_size", default: llm["hidden_size"] as! Int),
            "depth": pc.int("depth", default: 3),
            "mlp_depth": pc.int("mlp_depth", default: 2),
            "num_queries": queries,
            "num_input_tokens": grid * grid,
            "pos_emb": pc.bool("pos_emb", default: true),
            "prenorm": pc.bool("prenorm", default: false),
            "layer_norm_eps": 1e-5,
            "se_ratio": 0.25,
        ]
        guard pc.int("num_eos_tokens", default: 0) == 0 else {
            throw MM1Error(file: path, "num_eos_tokens > 0 is not supported")
        }
        return ["vision": vision, "connector": connector, "llm": llm,
                "image_token_id": top.dict["image_token_id"] as? Int as Any? ?? NSNull(),
                "image_processor": imageProcessor(dir: dir, vision: vision)]
    }

    public static func openclip(dir: String) throws -> [String: Any] {
        let path = dir + "/open_clip_config.json"
        let top = Fields(dict: try readJSON(path), file: path, section: "")
        guard let mc = top.sub("model_cfg"), let vc = mc.sub("vision_cfg") else {
            throw MM1Error(file: path, "needs model_cfg.vision_cfg")
        }
        let width = try vc.int("width")
        let headWidth = vc.int("head_width", default: 64)
        guard headWidth > 0, width % headWidth == 0 else {
            throw MM1Error(file: path, "vision_cfg.width \(width) is not a multiple of head_width \(headWidth)")
        }
        let ratio = vc.double("mlp_ratio", default: 4.0)
        let vision: [String: Any] = [
            "kind": "clip_vit",
            "hidden_size": width,
            "num_layers": try vc.int("layers"),
            "num_heads": width / headWidth,
            "intermediate_size": Int((Double(width) * ratio).rounded()),
            "patch_size": try vc.int("patch_size"),
            "image_size": try vc.int("image_size"),
            "num_channels": 3,
            "class_token": true,
            "patch_bias": false,
            "pre_norm": true,
            "post_norm": true,
            "head_size": try mc.int("embed_dim"),
            "layer_norm_eps": 1e-5,
            "activation": mc.bool("quick_gelu", default: false) ? "quick_gelu" : "gelu",
            "feature_layer": -1,
            // open_clip's token output has ln_post applied to every token.
            "post_norm_features": true,
            "drop_class_token": false,
        ]
        var processor: Any = NSNull()
        if let pp = top.sub("preprocess_cfg") {
            processor = [
                "image_size": vision["image_size"]!,
                "image_mean": pp.dict["mean"] ?? [0.48145466, 0.4578275, 0.40821073],
                "image_std": pp.dict["std"] ?? [0.26862954, 0.26130258, 0.27577711],
                "resize": pp.string("resize_mode", default: "shortest") == "squash" ? "squash" : "shortest_edge_crop",
                "rescale_factor": 1.0 / 255.0,
            ] as [String: Any]
        }
        return ["vision": vision, "connector": NSNull(), "llm": NSNull(), "image_token_id": NSNull(),
                "image_processor": processor]
    }

    /// Fills the fields that follow from others, so every bundle's config is complete (formats/canonical.md):
    /// the connector's input token count from the ViT grid, the ViT's final norm (CLIP encoders all have one).
    public static func normalize(_ config: [String: Any]) throws -> [String: Any] {
        var cfg = config
        for k in ["vision", "connector", "llm", "image_token_id", "image_processor"] where cfg[k] == nil { cfg[k] = NSNull() }
        if let split = cfg["image_split"] as? [String: Any] {
            _ = try ImageSplitConfig(split, file: "config")
            guard cfg["vision"] is [String: Any] else { throw MM1Error("config.image_split needs a vision encoder") }
        }
        let vision = cfg["vision"] as? [String: Any], connector = cfg["connector"] as? [String: Any]
        let llm = cfg["llm"] as? [String: Any]
        if connector != nil && vision == nil { throw MM1Error("config: a connector needs a vision encoder") }
        if vision != nil && connector == nil && llm != nil {
            throw MM1Error("config: a vision encoder and a language model need a connector between them")
        }
        if vision == nil && llm == nil { throw MM1Error("config: neither a vision encoder nor a language model") }
        if let k = vision?["kind"] as? String, k != "clip_vit" { throw MM1Error("config.vision.kind '\(k)' is not clip_vit") }
        if let l = llm {
            if let k = l["kind"] as? String, k != "decoder" { throw MM1Error("config.llm.kind '\(k)' is not decoder") }
            if var moe = l["moe"] as? [String: Any] {
                guard let layers = moe["layers"] as? [Int], !layers.isEmpty else {
                    throw MM1Error("config.llm.moe needs \"layers\", the indices of the MoE layers")
                }
                guard Set(layers).count == layers.count else { throw MM1Error("config.llm.moe.layers lists a layer twice") }
                moe["layers"] = layers.sorted()
                var l2 = l
                l2["moe"] = moe
                cfg["llm"] = l2
            }
        }
        if var l = cfg["llm"] as? [String: Any] {
            if l["attention_out_bias"] == nil { l["attention_out_bias"] = false }
            cfg["llm"] = l
        }
        if let c = connector, let kind = c["kind"] as? String, kind == "c_abstractor" || kind == "avgpool_linear" {
            guard let q = ConfigLookup.int(c, "num_queries"), q > 0, Int(Double(q).squareRoot()) * Int(Double(q).squareRoot()) == q else {
                throw MM1Error("config.connector.num_queries must be a positive square")
            }
        }
        if var v = cfg["vision"] as? [String: Any] {
            if v["post_norm"] == nil { v["post_norm"] = true }
            cfg["vision"] = v
            if var c = cfg["connector"] as? [String: Any], c["num_input_tokens"] == nil,
               let img = ConfigLookup.int(v, "image_size"), let p = ConfigLookup.int(v, "patch_size"), p > 0 {
                c["num_input_tokens"] = (img / p) * (img / p)
                cfg["connector"] = c
            }
        }
        return cfg
    }

    /// AXLearn's index has shapes but no hyper-parameters, so an AXLearn checkpoint comes with
    /// `mm1pack_config.json` (the canonical config itself) in the step directory or one of its three parents.
    public static func axlearnConfigPath(stepDir: String) -> String? {
        var dir = URL(fileURLWithPath: stepDir)
        for _ in 0..<4 {
            let p = dir.appendingPathComponent("mm1pack_config.json").path
            if FileManager.default.fileExists(atPath: p) { return p }
            dir.deleteLastPathComponent()
        }
        return nil
    }

    public static func axlearn(stepDir: String) throws -> [String: Any] {
        guard let path = axlearnConfigPath(stepDir: stepDir) else {
            throw MM1Error(file: stepDir, "an AXLearn checkpoint needs mm1pack_config.json (the canonical config, see formats/layouts/axlearn.md) in its step directory or a parent: the index holds shapes, not hyper-parameters")
        }
        var cfg = try readJSON(path)
        if let c = cfg["config"] as? [String: Any] { cfg = c }
        return cfg
    }
}
