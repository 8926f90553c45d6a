import Foundation

/// The canonical tensors a configuration requires, with their shapes, in bundle order (formats/canonical.md).
/// Converting checks the mapped source against this list, so a missing tensor, an extra one or a wrong shape is
/// caught by name before anything is written.
public enum CanonicalSchema {
    public struct Entry: Equatable, Sendable {
        public var name: String
        public var shape: [Int]
    }

    public static func expected(_ config: [String: Any]) throws -> [Entry] {
        var out: [Entry] = []
        if let v = config["vision"] as? [String: Any] { out += try vision(v) }
        if let c = config["connector"] as? [String: Any] { out += try connector(c) }
        if let l = config["llm"] as? [String: Any] { out += try llm(l) }
        return out
    }

    static func int(_ d: [String: Any], _ k: String, _ section: String) throws -> Int {
        guard let v = ConfigLookup.int(d, k) else { throw MM1Error("config.\(section).\(k) is missing or not an integer") }
        guard v >= 0 else { throw MM1Error("config.\(section).\(k) is negative (\(v))") }
        return v
    }

    static func bool(_ d: [String: Any], _ k: String, _ section: String) throws -> Bool {
        guard let v = d[k] as? Bool else { throw MM1Error("config.\(section).\(k) is missing or not a boolean") }
        return v
    }

    static func vision(_ v: [String: Any]) throws -> [Entry] {
        let e = try int(v, "hidden_size", "vision"), p = try int(v, "patch_size", "vision")
        let img = try int(v, "image_size", "vision"), cf = try int(v, "intermediate_size", "vision")
        let layers = try int(v, "num_layers", "vision"), ch = try int(v, "num_channels", "vision")
        guard p > 0, img % p == 0 else { throw MM1Error("config.vision: image_size \(img) is not a multiple of patch_size \(p)") }
        let cls = try bool(v, "class_token", "vision")
        let n = (img / p) * (img / p) + (cls ? 1 : 0)
        var out = [Entry(name: "vit.patch_embed.weight", shape: [e, ch, p, p])]
        if try bool(v, "patch_bias", "vision") { out.append(Entry(name: "vit.patch_embed.bias", shape: [e])) }
        if cls { out.append(Entry(name: "vit.class_embed", shape: [e])) }
        out.append(Entry(name: "vit.pos_embed", shape: [n, e]))
        if try bool(v, "pre_norm", "vision") {
            out += [Entry(name: "vit.pre_norm.weight", shape: [e]), Entry(name: "vit.pre_norm.bias", shape: [e])]
        }
        for i in 0..<layers {
            let b = "vit.blocks.\(i)."
            out += [Entry(name: b + "norm1.weight", shape: [e]), Entry(name: b + "norm1.bias", shape: [e])]
            for m in ["q", "k", "v", "o"] {
                out += [Entry(name: b + "attn.\(m).weight", shape: [e, e]), Entry(name: b + "attn.\(m).bias", shape: [e])]
            }
            out += [Entry(name: b + "norm2.weight", shape: [e]), Entry(name: b + "norm2.bias", shape: [e])]
            out += [Entry(name: b + "mlp.fc1.weight", shape: [cf, e]), Entry(name: b + "mlp.fc1.bias", shape: [cf]),
                    Entry(name: b + "mlp.fc2.weight", shape: [e, cf]), Entry(name: b + "mlp.fc2.bias", shape: [e])]
        }
        if (v["post_norm"] as? Bool) ?? false {
            out += [Entry(name: "vit.post_norm.weight", shape: [e]), Entry(name: "vit.post_norm.bias", shape: [e])]
        }
        if let j = ConfigLookup.int(v, "head_size"), j > 0 { out.append(Entry(name: "vit.head.weight", shape: [j, e])) }
        return out
    }

    static func connector(_ c: [String: Any]) throws -> [Entry] {
        guard let kind = c["kind"] as? String else { throw MM1Error("config.connector.kind is missing") }
        let e = try int(c, "input_size", "connector"), d = try int(c, "output_size", "connector")
        switch kind {
        case "mlp":
            return [Entry(name: "conn.fc1.weight", shape: [d, e]), Entry(name: "conn.fc1.bias", shape: [d]),
                    Entry(name: "conn.fc2.weight", shape: [d, d]), Entry(name: "conn.fc2.bias", shape: [d])]
        case "avgpool_linear":
            return [Entry(name: "conn.proj.weight", shape: [d, e]), Entry(name: "conn.proj.bias", shape: [d])]
        case "c_abstractor":
            let h = try int(c, "hidden_size", "connector"), depth = try int(c, "depth", "connector")
            let mlpDepth = try int(c, "mlp_depth", "connector")
            let patches = try int(c, "num_input_tokens", "connector")
            guard let ratio = ConfigLookup.value(c, "se_ratio") as? Double ?? (ConfigLookup.int(c, "se_ratio").map(Double.init)) else {
                throw MM1Error("config.connector.se_ratio is missing")
            }
            var out: [Entry] = []
            if try bool(c, "prenorm", "connector") {
                out += [Entry(name: "conn.prenorm.weight", shape: [e]), Entry(name: "conn.prenorm.bias", shape: [e])]
            }
            if try bool(c, "pos_emb", "connector") { out.append(Entry(name: "conn.pos_embed", shape: [patches, e])) }
            for (s, stageIn) in [("s1", e), ("s2", h)] where depth > 0 {
                for j in 0..<depth {
                    let cin = j == 0 ? stageIn : h
                    let r = Int((Double(cin) * ratio).rounded(.toNearestOrEven))
                    let b = "conn.\(s).b\(j)."
                    out += [Entry(name: b + "conv1.weight", shape: [h, cin, 1, 1]),
                            Entry(name: b + "norm1.weight", shape: [h]), Entry(name: b + "norm1.bias", shape: [h]),
                            Entry(name: b + "conv2.weight", shape: [h, 1, 3, 3]),
                            Entry(name: b + "norm2.weight", shape: [h]), Entry(name: b + "norm2.bias", shape: [h]),
                            Entry(name: b + "se.fc1.weight", shape: [r, h, 1, 1]), Entry(name: b + "se.fc1.bias", shape: [r]),
                            Entry(name: b + "se.fc2.weight", shape: [h, r, 1, 1]), Entry(name: b + "se.fc2.bias", shape: [h]),
                            Entry(name: b + "conv3.weight", shape: [h, h, 1, 1]),
                            Entry(name: b + "norm3.weight", shape: [h]), Entry(name: b + "norm3.bias", shape: [h])]
                    if cin != h {
                        out += [Entry(name: b + "down.weight", shape: [h, cin, 1, 1]),
                                Entry(name: b + "down_norm.weight", shape: [h]), Entry(name: b + "down_norm.bias", shape: [h])]
                    }
                }
            }
            var width = depth > 0 ? h : e
            for k in 0..<mlpDepth {
                out += [Entry(name: "conn.readout.\(k).weight", shape: [d, width]), Entry(name: "conn.readout.\(k).bias", shape: [d])]
                width = d
            }
            return out
        default:
            throw MM1Error("config.connector.kind '\(kind)' is not one of c_abstractor, mlp, avgpool_linear")
        }
    }

    static func llm(_ l: [String: Any]) throws -> [Entry] {
        let v = try int(l, "vocab_size", "llm"), d = try int(l, "hidden_size", "llm")
        let layers = try int(l, "num_layers", "llm"), nq = try int(l, "num_heads", "llm")
        let nkv = try int(l, "num_kv_heads", "llm"), dh = try int(l, "head_dim", "llm")
        let f = try int(l, "intermediate_size", "llm")
        let bias = (l["attention_bias"] as? Bool) ?? false
        var moeLayers = Set<Int>()
        var x = 0, fe = 0
        if let moe = l["moe"] as? [String: Any] {
            x = try int(moe, "num_experts", "llm.moe")
            fe = try int(moe, "intermediate_size", "llm.moe")
            moeLayers = Set((moe["layers"] as? [Int]) ?? [])
            if let bad = moeLayers.first(where: { $0 < 0 || $0 >= layers }) {
                throw MM1Error("config.llm.moe.layers lists layer \(bad), but the model has \(layers) layers")
            }
        }
        var out = [Entry(name: "llm.embed.weight", shape: [v, d])]
        for i in 0..<layers {
            let b = "llm.layers.\(i)."
            out += [Entry(name: b + "attn_norm.weight", shape: [d]),
                    Entry(name: b + "attn.q.weight", shape: [nq * dh, d]),
                    Entry(name: b + "attn.k.weight", shape: [nkv * dh, d]),
                    Entry(name: b + "attn.v.weight", shape: [nkv * dh, d])]
            if bias {
                out += [Entry(name: b + "attn.q.bias", shape: [nq * dh]), Entry(name: b + "attn.k.bias", shape: [nkv * dh]),
                        Entry(name: b + "attn.v.bias", shape: [nkv * dh])]
            }
            out.append(Entry(name: b + "attn.o.weight", shape: [d, nq * dh]))
            if (l["attention_out_bias"] as? Bool) ?? false { out.append(Entry(name: b + "attn.o.bias", shape: [d])) }
            out.append(Entry(name: b + "mlp_norm.weight", shape: [d]))
            if moeLayers.contains(i) {
                out += [Entry(name: b + "moe.router.weight", shape: [x, d]),
                        Entry(name: b + "moe.gate.weight", shape: [x, fe, d]), Entry(name: b + "moe.up.weight", shape: [x, fe, d]),
                        Entry(name: b + "moe.down.weight", shape: [x, d, fe])]
            } else {
                out += [Entry(name: b + "mlp.gate.weight", shape: [f, d]), Entry(name: b + "mlp.up.weight", shape: [f, d]),
                        Entry(name: b + "mlp.down.weight", shape: [d, f])]
            }
        }
        out.append(Entry(name: "llm.norm.weight", shape: [d]))
        if !((l["tie_embeddings"] as? Bool) ?? false) { out.append(Entry(name: "llm.head.weight", shape: [v, d])) }
        return out
    }
}
