/// One canonical tensor as the converter will produce it: the source tensor(s) and the view of each. Several parts
/// are stacked along a new leading axis (MoE experts stored one tensor per expert).
public struct PlannedTensor: Sendable {
    public struct Part: Sendable {
        public var source: String
        public var view: TensorView
    }

    public var name: String
    public var parts: [Part]
    public var stacked: Bool
    /// The rule that produced it (1-based, for messages).
    public var rule: Int

    public var shape: [Int] {
        let inner = parts[0].view.shape
        return stacked ? [parts.count] + inner : inner
    }
}

/// The result of matching a whole source against a layout.
public struct MappingPlan: Sendable {
    public var tensors: [String: PlannedTensor]
    /// Source tensors deliberately skipped by an `ignore` rule, with the reason.
    public var ignored: [String: String]
    /// Source tensors no rule matched.
    public var unmatched: [String]
}

public enum Mapper {
    /// Matches every source tensor against the layout's rules (first matching rule wins) and plans the canonical
    /// tensors. Throws on conflicts (two sources for one canonical name, incomplete expert stacks, a rule that does
    /// not fit the tensor's shape); unmatched names are returned so the caller can list them all.
    public static func plan(source: [String: SourceTensorInfo], layout: LayoutMapping,
                            config: [String: Any]) throws -> MappingPlan {
        struct Match { var info: SourceTensorInfo; var rule: LayoutMapping.Rule; var captures: [String: String] }
        var matches: [Match] = []
        var unmatched: [String] = []
        for name in source.keys.sorted() {
            let info = source[name]!
            if let (rule, caps) = layout.rules.lazy.compactMap({ r in r.from.match(name).map { (r, $0) } }).first {
                matches.append(Match(info: info, rule: rule, captures: caps))
            } else {
                unmatched.append(name)
            }
        }
        // Distinct values per index variable across the whole source, for `#v` in targets.
        var distinct: [String: Set<String>] = [:]
        for m in matches {
            for (k, v) in m.captures { distinct[k, default: []].insert(v) }
        }
        let counts = distinct.mapValues { $0.count }

        var ignored: [String: String] = [:]
        var planned: [String: PlannedTensor] = [:]
        var producedBy: [String: String] = [:]
        var stacks: [String: [Int: PlannedTensor.Part]] = [:]
        var stackRule: [String: Int] = [:]

        for m in matches {
            let rule = m.rule
            if let reason = rule.ignore {
                ignored[m.info.name] = reason
                continue
            }
            guard m.info.dtype.isConvertibleFloat else {
                throw MM1Error(file: m.info.file, tensor: m.info.name,
                               "has dtype \(m.info.dtype.rawValue), but rule \(rule.index + 1) ('\(rule.from)') maps it to a weight; only f32, f16 and bf16 tensors can be weights")
            }
            var states: [(vars: [String: String], view: TensorView)] = [(m.captures, TensorView(sourceShape: m.info.shape))]
            do {
                for op in rule.ops {
                    states = try apply(op, to: states, config: config)
                }
            } catch let e as MM1Error {
                throw MM1Error(file: m.info.file, tensor: m.info.name,
                               "rule \(rule.index + 1) ('\(rule.from)') does not fit shape \(m.info.shape): \(e.message)")
            }
            for st in states {
                let target = try Template.render(rule.to!, vars: st.vars, counts: counts)
                let part = PlannedTensor.Part(source: m.info.name, view: st.view)
                if let v = rule.stack {
                    guard let s = st.vars[v], let idx = Int(s) else {
                        throw MM1Error(tensor: m.info.name, "rule \(rule.index + 1) stacks on '{\(v)}', which its pattern does not capture")
                    }
                    if let prev = stacks[target]?[idx] {
                        throw MM1Error(tensor: target, "both '\(prev.source)' and '\(m.info.name)' provide part \(idx)")
                    }
                    stacks[target, default: [:]][idx] = part
                    stackRule[target] = rule.index + 1
                } else {
                    if let prev = producedBy[target] {
                        throw MM1Error(tensor: target, "produced twice, from '\(prev)' and from '\(m.info.name)'")
                    }
                    producedBy[target] = m.info.name
                    planned[target] = PlannedTensor(name: target, parts: [part], stacked: false, rule: rule.index + 1)
                }
            }
        }
        for (target, parts) in stacks {
            if let prev = producedBy[target] {
                throw MM1Error(tensor: target, "produced twice, from '\(prev)' and from a stack of \(parts.count) tensors")
            }
            let n = parts.count
            for i in 0..<n where parts[i] == nil {
                let some = parts.values.first!.source
                throw MM1Error(tensor: target, "stack is missing part \(i) (have \(parts.keys.sorted()), e.g. '\(some)')")
            }
            let ordered = (0..<n).map { parts[$0]! }
            for p in ordered where p.view.shape != ordered[0].view.shape {
                throw MM1Error(tensor: target, "stacked parts differ in shape: '\(ordered[0].source)' \(ordered[0].view.shape) vs '\(p.source)' \(p.view.shape)")
            }
            planned[target] = PlannedTensor(name: target, parts: ordered, stacked: true, rule: stackRule[target]!)
        }
        return MappingPlan(tensors: planned, ignored: ignored, unmatched: unmatched)
    }

    private static func apply(_ op: LayoutMapping.Op, to states: [(vars: [String: String], view: TensorView)],
                              config: [String: Any]) throws -> [(vars: [String: String], view: TensorView)] {
        var out: [(vars: [String: String], view: TensorView)] = []
        for var st in states {
            let applies = op.when.allSatisfy { k, vals in st.vars[k].map(vals.contains) ?? false }
            if !applies { out.append(st); continue }
            switch op.kind {
            case .unstack(let axis, let v):
                guard axis >= 0, axis < st.view.rank else { throw MM1Error("unstack axis \(axis) out of range") }
                for i in 0..<st.view.shape[axis] {
                    var s = st
                    try s.view.select(axis: axis, index: i)
                    s.vars[v] = String(i)
                    out.append(s)
                }
                continue
            case .split(let axis, let sizes, let names, let v):
                guard axis >= 0, axis < st.view.rank else { throw MM1Error("split axis \(axis) out of range") }
                let n = st.view.shape[axis]
                let resolved: [Int]
                if let sizes {
                    resolved = try sizes.map { try $0.resolve(config) }
                } else {
                    guard n % names.count == 0 else { throw MM1Error("axis \(axis) of size \(n) does not split into \(names.count) equal parts") }
                    resolved = Array(repeating: n / names.count, count: names.count)
                }
                guard resolved.reduce(0, +) == n else {
                    throw MM1Error("split of axis \(axis) into \(resolved) (from the config) does not add up to its size \(n)")
                }
                var from = 0
                for (name, size) in zip(names, resolved) {
                    var s = st
                    try s.view.slice(axis: axis, from: from, count: size)
                    s.vars[v] = name
                    out.append(s)
                    from += size
                }
                continue
            case .transpose(let perm):
                try st.view.transpose(perm)
            case .reshape(let shape):
                try st.view.reshape(try shape.map { try $0.resolve(config) })
            case .squeeze(let axis):
                try st.view.squeeze(axis: axis)
            case .slice(let axis, let from, let count):
                let f = try from.resolve(config)
                guard axis >= 0, axis < st.view.rank else { throw MM1Error("slice axis \(axis) out of range") }
                let c = try count?.resolve(config) ?? (st.view.shape[axis] - f)
                try st.view.slice(axis: axis, from: f, count: c)
            case .rope(let axis, let hd):
                try st.view.ropeInterleavedToHalf(axis: axis, headDim: try hd.resolve(config))
            }
            out.append(st)
        }
        return out
    }
}
