import COpenBLAS
import Foundation

/// One block of the calibration pass: collect its inputs, search AWQ scales, round each weight, measure errors,
/// and run the block again as quantized (formats/quantization.md §3.2).
extension Quantizer {
    func runBlock(_ block: Block) throws {
        progressItem += 1
        progress?.update(item: progressItem, bytes: progressBytes, detail: block.label, force: true)
        defer { progressBytes += block.sites.reduce(0) { $0 + ((try? weights.shape($1))?.reduce(4, *) ?? 0) } }
        let quantized = block.sites.filter { quantSpec($0) != nil }
        let measured = measuring ? block.sites.filter { name in
            guard let i = planIndex[name], let r = plan[i].rule else { return false }
            return recipe.rules[r].promote != nil && quantSpec(name) != nil
        } : []
        let targets = measuring ? measured : quantized
        if targets.isEmpty {
            try block.advance()
            return
        }
        // 1. Calibration inputs of every weight about to be quantized, from the current (quantized) model.
        var wanted = Set<HookPoint>()
        for name in targets {
            let s = sites[name]!
            if s.isLookup { continue }
            for e in 0..<s.experts { wanted.insert(s.point(s.experts > 1 ? e : nil)) }
        }
        for g in block.groups where g.members.contains(where: { targets.contains($0.site) }) { wanted.insert(g.point) }
        let inputs = InputCollector(wanted)
        var clock = Date()
        func lap(_ phase: String) {
            let now = Date()
            report.phaseSeconds[phase, default: 0] += now.timeIntervalSince(clock)
            clock = now
            let rss = Quantizer.residentBytes()
            if rss > report.peakResident.bytes { report.peakResident = (rss, "\(block.label): \(phase)") }
        }
        if !wanted.isEmpty { try block.observe(inputs) }
        lap("collect inputs")
        blockObserved?(block.label, inputs)
        largestBlockBytes = max(largestBlockBytes, try block.sites.reduce(0) { $0 + (try weights.shape($1)).reduce(4, *) })
        peakCalibrationBytes = max(peakCalibrationBytes, activationBytes + inputs.rows.values.reduce(0) { $0 + $1.count * 4 })

        if measuring {
            for name in targets { sensitivity[name] = try measure(name, inputs) }
            try block.advance()
            return
        }

        // 2. AWQ: search the scales of each group on its fp inputs and fold them. Weights about to be quantized are
        //    not kept: their scales are recorded and applied when each is read for rounding, so memory holds one
        //    weight (or one group during its search) at a time. Small float tensors that take folds (norms, biases,
        //    a kept router or linear) are changed in f32 working copies.
        var work: [String: [Float]] = [:]
        func load(_ n: String) throws {
            if work[n] == nil { work[n] = try weights.f32(n) }
        }
        var inScale: [String: [Float]] = [:]  // "name#e" → input channel scales
        var rowMul: [String: [Float]] = [:]   // "name#e" → factors that map folded rows back to the original
        var alphas: [String: Float] = [:]
        func sliceOf(_ name: String, _ e: Int?) throws -> [Float] {
            let s = sites[name]!
            return try weights.f32(name, offset: (e ?? 0) * s.out * s.inDim, count: s.out * s.inDim)
        }
        for g in block.groups {
            let members = g.members.filter { targets.contains($0.site) }
            guard members.count == g.members.count, !members.isEmpty,
                  members.allSatisfy({ quantSpec($0.site)!.1.usesAWQ }), let x = inputs.rows[g.point] else { continue }
            if case .none = g.fold { continue }
            let n = inputs.count[g.point]!
            let cols = sites[members[0].site]!.inDim
            guard n >= recipe.minExpertTokens || !members.contains(where: { $0.expert != nil }) else { continue }
            let ws: [(w: [Float], rows: Int, bias: [Float]?)] = try members.map { m in
                (try sliceOf(m.site, m.expert), sites[m.site]!.out, nil)
            }
            // The search runs on up to `searchRows` rows: each α quantizes the whole set and multiplies it by the
            // rows, so rows cost grid × a product of the set's size; 128 evenly strided rows keep the ranking of α.
            let sx = Quantizer.sampleRows(x, rows: n, cols: cols, limit: Quantizer.searchRows)
            let r = try AWQ.searchScales(input: sx.x, rows: sx.rows, cols: cols, weights: ws, spec: quantSpec(members[0].site)!.0,
                                         grid: recipe.awqGrid, memberwise: true)
            if r.alpha == 0 { continue }
            let s = r.scales
            for m in members {
                inScale[key(m.site, m.expert)] = s
                alphas[m.site] = r.alpha
            }
            for a in g.alsoScale {
                try load(a)
                let shape = try weights.shape(a)
                work[a] = AWQ.scaleColumns(work[a]!, rows: shape[0], cols: shape[1], by: s)
            }
            switch g.fold {
            case .none: break
            case .norm(let w, let b):
                for t in [w] + (b.map { [$0] } ?? []) {
                    try load(t)
                    for c in 0..<cols { work[t]![c] /= s[c] }
                }
            case .rows(let w, let e, let b):
                let site = sites[w]!
                if quantSpec(w) != nil && targets.contains(w) {
                    var mul = rowMul[key(w, e)] ?? [Float](repeating: 1, count: site.out)
                    for r in 0..<cols { mul[r] *= s[r] }
                    rowMul[key(w, e)] = mul
                } else {
                    try load(w)
                    let base = (e ?? 0) * site.out * site.inDim
                    for r in 0..<cols {
                        let inv = 1 / s[r]
                        for c in 0..<site.inDim { work[w]![base + r * site.inDim + c] *= inv }
                    }
                }
                if let b {
                    try load(b)
                    for r in 0..<cols { work[b]![(e ?? 0) * site.out + r] /= s[r] }
                }
            }
        }

        lap("awq search")
        // 3. Round every weight (GPTQ or RTN with clipping) on its inputs, scaled as the folded model sees them.
        for name in targets {
            let site = sites[name]!
            if site.isLookup {
                let (spec, method) = quantSpec(name)!
                let q = try quantizeWithoutData(name, site, nil, spec: spec)
                var layer = QuantReport.Layer(name: name, spec: spec.description, method: method.rawValue,
                                              params: site.out * site.inDim, bitsPerWeight: QuantReport.bits(spec))
                layer.note = planIndex[name].flatMap { plan[$0].note }
                report.layers.append(layer)
                try store(name, q)
                continue
            }
            let (spec, method) = quantSpec(name)!
            var parts: [QuantizedTensor] = []
            var layer = QuantReport.Layer(name: name, spec: spec.description, method: method.rawValue,
                                          params: site.out * site.inDim * site.experts, bitsPerWeight: QuantReport.bits(spec))
            layer.awqAlpha = alphas[name]
            layer.sensitivity = sensitivity[name]
            var errRTN = 0.0, errAfter = 0.0, ref = 0.0
            var fallbacks: [Int] = []
            for e in 0..<site.experts {
                let ex: Int? = site.experts > 1 ? e : nil
                // The weight as the folded model has it: columns × its input scales, rows ÷ the scales folded in.
                var w = try sliceOf(name, ex)
                if let sc = inScale[key(name, ex)] { w = AWQ.scaleColumns(w, rows: site.out, cols: site.inDim, by: sc) }
                if let mul = rowMul[key(name, ex)] {
                    for r in 0..<site.out where mul[r] != 1 {
                        let inv = 1 / mul[r]
                        for c in 0..<site.inDim { w[r * site.inDim + c] *= inv }
                    }
                }
                var x: [Float]? = nil
                var n = 0
                if !site.isLookup, let rows = inputs.rows[site.point(ex)] {
                    x = rows
                    n = inputs.count[site.point(ex)]!
                }
                let tooFew = ex != nil && n < recipe.minExpertTokens
                var xs = x
                if let s = inScale[key(name, ex)], var v = xs {
                    for r in 0..<n { for c in 0..<site.inDim { v[r * site.inDim + c] /= s[c] } }
                    xs = v
                }
                let q: QuantizedTensor
                do {
                    if n == 0 || tooFew {
                        if ex != nil { fallbacks.append(e) }
                        q = try RTN.quantize(weight: w, rows: site.out, cols: site.inDim, spec: spec, clipSearch: recipe.clipSearch)
                    } else if method.usesGPTQ {
                        q = try GPTQ.quantize(weight: w, rows: site.out, cols: site.inDim, inputs: xs!, inputRows: n, spec: spec,
                                              damp: recipe.gptqDamp, blockSize: recipe.gptqBlockSize, actOrder: recipe.gptqActOrder)
                    } else {
                        q = try Quantizer.roundWithClipping(w, rows: site.out, cols: site.inDim, spec: spec, search: recipe.clipSearch,
                                                            x: xs!, n: n)
                    }
                } catch let err as MM1Error {
                    throw MM1Error(file: weights.bundle.path, tensor: name + (ex.map { " (expert \($0))" } ?? ""), err.message)
                }
                parts.append(q)
                lap("round")
                defer { lap("error report") }
                if let x, n > 0 {
                    let e3 = try errors(name, site, ex, q, spec: spec, x: x, n: n, inScale: inScale[key(name, ex)], rowMul: rowMul[key(name, ex)])
                    errRTN += e3.rtn
                    errAfter += e3.after
                    ref += e3.ref
                }
            }
            if ref > 0 {
                layer.errorRTN = errRTN / ref
                layer.errorAfter = errAfter / ref
            }
            if !fallbacks.isEmpty {
                layer.note = "experts \(fallbacks.map(String.init).joined(separator: ",")) got fewer than \(recipe.minExpertTokens) calibration tokens: RTN without activations"
                report.expertFallbacks.append("\(name): \(fallbacks.count) of \(site.experts) experts")
            }
            if let note = planIndex[name].flatMap({ plan[$0].note }) { layer.note = [layer.note, note].compactMap { $0 }.joined(separator: "; ") }
            report.layers.append(layer)
            var whole = parts.count == 1 ? parts[0] : QuantizedTensor(spec: spec, shape: [], codes: parts.flatMap(\.codes),
                                        scales: parts.flatMap(\.scales), zeros: spec.scheme == .asym ? parts.flatMap { $0.zeros! } : nil)
            parts = []
            whole.shape = try weights.shape(name)
            try store(name, whole)
        }
        // Folded float tensors (norms, biases, the router) are used as changed from now on and written so.
        for (n, v) in work.sorted(by: { $0.key < $1.key }) where quantSpec(n) == nil {
            let r = rounded(v, to: keptDType(plan[planIndex[n]!]))
            keptValues[n] = r
            weights.overrides[n] = .values(r)
        }
        work.removeAll()

        // 4. The block's outputs become the next block's inputs: from the quantized block (sequential), or from
        //    the fp block when sequential calibration is off.
        lap("round")
        defer { lap("run quantized block") }
        if !options.sequential {
            // Every block then sees the fp model's activations: nothing quantized or rounded is ever read again.
            weights.overrides.removeAll()
        }
        try block.advance()
        // Quantized weights of finished blocks are not read again; their bytes are in the spill file.
        if !block.retain { for n in block.sites where quantSpec(n) != nil { weights.overrides[n] = nil } }
        // The pooled f32 buffers are sized by this block's largest weight; the next block reallocates its own.
        ScratchPool.shared.trim()
    }

    /// Packs a quantized weight into the spill file and lets the model read it as quantized from now on.
    func store(_ name: String, _ q: QuantizedTensor) throws {
        var q = q
        q.shape = try weights.shape(name)
        let p = try QuantFormat.pack(q)
        let off = try spill!.append(p.bytes)
        packed[name] = (off, p.bytes.count, p.dtype, p.quant)
        weights.overrides[name] = .quantized(q)
    }

    func key(_ n: String, _ e: Int?) -> String { e.map { "\(n)#\($0)" } ?? n }

    /// Up to `limit` rows of x, evenly strided, for error measures and the AWQ search.
    static func sampleRows(_ x: [Float], rows n: Int, cols: Int, limit: Int = reportRows) -> (x: [Float], rows: Int) {
        guard n > limit else { return (x, n) }
        var out = [Float](repeating: 0, count: limit * cols)
        for i in 0..<limit {
            let r = i * n / limit
            for c in 0..<cols { out[i * cols + c] = x[r * cols + c] }
        }
        return (out, limit)
    }

    /// Output errors of a quantized slice in the original model's terms (‖x(W − Ŵ)ᵀ‖², with Ŵ mapped back
    /// through the AWQ scales), of plain RTN at the same spec, and the reference ‖xWᵀ‖². Output rows go in chunks,
    /// so that a large weight (the output head) never has several f32 copies alive at once.
    func errors(_ name: String, _ s: Site, _ e: Int?, _ q: QuantizedTensor?, spec: QuantSpec, x: [Float], n: Int,
                inScale: [Float]?, rowMul: [Float]?) throws -> (rtn: Double, after: Double, ref: Double) {
        let sx = Quantizer.sampleRows(x, rows: n, cols: s.inDim)
        let k = s.inDim
        let chunk = max(1, min(s.out, (4 << 20) / k))
        var rtnErr = 0.0, afterErr = 0.0, ref = 0.0
        let saved = weights.overrides[name]
        weights.overrides[name] = nil
        defer { weights.overrides[name] = saved }
        for r0 in stride(from: 0, to: s.out, by: chunk) {
            let m = min(chunk, s.out - r0)
            let w = try weights.f32(name, offset: ((e ?? 0) * s.out + r0) * k, count: m * k)
            let rtn = try GroupQuantizer.quantize(weight: w, rows: m, cols: k, spec: spec).dequantized()
            rtnErr += AWQ.outputError(x: sx.x, rows: sx.rows, cols: k, w: w, wHat: rtn, outRows: m)
            if let q {
                var wHat = [Float](repeating: 0, count: m * k)
                wHat.withUnsafeMutableBufferPointer { q.dequantize(rows: r0..<(r0 + m), into: $0.baseAddress!) }
                if inScale != nil || rowMul != nil {
                    for r in 0..<m {
                        let mul = rowMul?[r0 + r] ?? 1
                        for c in 0..<k { wHat[r * k + c] = wHat[r * k + c] * mul / (inScale?[c] ?? 1) }
                    }
                }
                afterErr += AWQ.outputError(x: sx.x, rows: sx.rows, cols: k, w: w, wHat: wHat, outRows: m)
            }
            ref += AWQ.squaredOutput(x: sx.x, rows: sx.rows, cols: k, w: w, outRows: m)
        }
        return (rtnErr, afterErr, ref)
    }

    /// A weight quantized without activation data (lookups, the connector, experts without tokens), read and
    /// rounded in chunks of rows so that it never exists whole in f32.
    func quantizeWithoutData(_ name: String, _ s: Site, _ e: Int?, spec: QuantSpec) throws -> QuantizedTensor {
        let k = s.inDim
        let chunk = max(1, min(s.out, (16 << 20) / k))
        var codes: [UInt8] = [], scales: [Float] = [], zeros: [Float] = []
        codes.reserveCapacity(s.out * k)
        for r0 in stride(from: 0, to: s.out, by: chunk) {
            let m = min(chunk, s.out - r0)
            let w = try weights.f32(name, offset: ((e ?? 0) * s.out + r0) * k, count: m * k)
            let q = try RTN.quantize(weight: w, rows: m, cols: k, spec: spec, clipSearch: recipe.clipSearch)
            codes += q.codes
            scales += q.scales
            if let z = q.zeros { zeros += z }
        }
        return QuantizedTensor(spec: spec, shape: [s.out, k], codes: codes, scales: scales, zeros: spec.scheme == .asym ? zeros : nil)
    }

    /// Sensitivity of a weight: relative output error of plain RTN at its planned spec on fp inputs.
    func measure(_ name: String, _ inputs: InputCollector) throws -> Double {
        let s = sites[name]!
        let (spec, _) = quantSpec(name)!
        var err = 0.0, ref = 0.0
        for e in 0..<s.experts {
            let ex: Int? = s.experts > 1 ? e : nil
            guard !s.isLookup, let x = inputs.rows[s.point(ex)], let n = inputs.count[s.point(ex)], n > 0 else { continue }
            let r = try errors(name, s, ex, nil, spec: spec, x: x, n: n, inScale: nil, rowMul: nil)
            err += r.rtn
            ref += r.ref
        }
        return ref > 0 ? err / ref : 0
    }

    /// RTN with the clipping search weighted by the inputs' mean squares, kept only where it lowers the true output
    /// error on (a sample of) the inputs: the per-channel weighting ignores correlations between channels, so it can
    /// pick a clip that is worse for the actual rows.
    static func roundWithClipping(_ w: [Float], rows: Int, cols: Int, spec: QuantSpec, search: Bool, x: [Float], n: Int) throws -> QuantizedTensor {
        let plain = try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec)
        guard search else { return plain }
        let sx = sampleRows(x, rows: n, cols: cols)
        // Groups of up to 256 columns are clipped on their true output error (diagonal blocks of XᵀX); wider ones
        // (per-channel int8) on the channels' mean squares, which costs cols instead of cols² per ratio.
        let clipped = spec.groupSize <= 256
            ? try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec, clipSearch: true,
                               groupHessians: groupHessians(sx.x, rows: sx.rows, cols: cols, group: spec.groupSize))
            : try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec, clipSearch: true,
                               importance: meanSquare(x, rows: n, cols: cols))
        let ep = AWQ.outputError(x: sx.x, rows: sx.rows, cols: cols, w: w, wHat: plain.dequantized(), outRows: rows)
        let ec = AWQ.outputError(x: sx.x, rows: sx.rows, cols: cols, w: w, wHat: clipped.dequantized(), outRows: rows)
        return ec < ep ? clipped : plain
    }

    /// The diagonal blocks of XᵀX for groups of `group` columns: [cols / group, group, group].
    static func groupHessians(_ x: [Float], rows n: Int, cols k: Int, group g: Int) -> [Float] {
        var h = [Float](repeating: 0, count: k * g)
        x.withUnsafeBufferPointer { xp in
            h.withUnsafeMutableBufferPointer { hp in
                for j in 0..<(k / g) {
                    let blk = hp.baseAddress! + j * g * g
                    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(g), Int32(n), 1, xp.baseAddress! + j * g, Int32(k), 0, blk, Int32(g))
                    for r in 0..<g { for c in 0..<r { blk[r * g + c] = blk[c * g + r] } }
                }
            }
        }
        return h
    }

    /// The process's resident set now (Linux /proc/self/statm), sampled between phases for the report.
    static func residentBytes() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let f = s.split(separator: " ")
        return f.count > 1 ? (Int(f[1]) ?? 0) * Widen.pageSize : 0
    }

    /// Mean of x² per column: the channel importance RTN's clipping search weighs errors by.
    static func meanSquare(_ x: [Float], rows n: Int, cols k: Int) -> [Float] {
        var m = [Double](repeating: 0, count: k)
        for r in 0..<n { for c in 0..<k { let v = Double(x[r * k + c]); m[c] += v * v } }
        return m.map { Float($0 / Double(max(1, n))) }
    }
}

/// Collects the calibration inputs of the points it wants, rows concatenated over every item run.
final class InputCollector: ForwardHooks {
    let wanted: Set<HookPoint>
    var rows: [HookPoint: [Float]] = [:]
    var count: [HookPoint: Int] = [:]

    init(_ wanted: Set<HookPoint>) { self.wanted = wanted }

    func wants(_ point: HookPoint) -> Bool { wanted.contains(point) }

    func observe(_ point: HookPoint, _ data: [Float], shape: [Int]) {
        rows[point, default: []] += data
        count[point, default: 0] += shape.first ?? 0
    }
}
