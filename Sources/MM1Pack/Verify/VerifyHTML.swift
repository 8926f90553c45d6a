import Foundation

/// The HTML form of a verify report: one self-contained page (inline SVG, no scripts, nothing fetched), with the
/// relative error of every stage of the model on a log scale, because a curve shows where error enters faster
/// than sixty numbers do.
extension VerifyReport {
    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    /// The per-stage chart as SVG: x = stages in model order, y = log10 relative error; the total over all probes
    /// in black, each probe in colour, the stage of largest growth marked in red. Nothing else on the page is pure
    /// black (text is dark grey), so a screenshot check can find the curve.
    public func chartSVG(width: Int = 960, height: Int = 380) -> String {
        let names = stages.map(\.stage)
        guard !names.isEmpty else { return "<p>No stage errors were captured.</p>" }
        let (left, right, top, bottom) = (70.0, 20.0, 20.0, 110.0)
        let w = Double(width) - left - right, h = Double(height) - top - bottom
        var values = stages.map(\.relative)
        for p in probes { values += p.stages.map(\.relative) }
        let positive = values.filter { $0 > 0 && $0.isFinite }
        let lo = floor(log10(positive.min() ?? 1e-8)), hi = max(lo + 1, ceil(log10(positive.max() ?? 1)))
        func x(_ i: Int) -> Double { left + (names.count == 1 ? w / 2 : w * Double(i) / Double(names.count - 1)) }
        func y(_ v: Double) -> Double {
            let l = v > 0 && v.isFinite ? log10(v) : lo
            return top + h * (1 - (min(max(l, lo), hi) - lo) / (hi - lo))
        }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" role=\"img\" aria-label=\"relative error by stage\" font-family=\"sans-serif\" font-size=\"11\" fill=\"#444\">\n"
        s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(w)\" height=\"\(h)\" fill=\"#fafafa\" stroke=\"#ccc\"/>\n"
        var e = lo
        while e <= hi {
            let yy = y(pow(10, e))
            s += "<line x1=\"\(left)\" x2=\"\(left + w)\" y1=\"\(yy)\" y2=\"\(yy)\" stroke=\"#e3e3e3\"/>"
            s += "<text x=\"\(left - 6)\" y=\"\(yy + 4)\" text-anchor=\"end\">1e\(Int(e))</text>\n"
            e += 1
        }
        for (i, n) in names.enumerated() {
            let label = n.replacingOccurrences(of: "llm.layers.", with: "llm ").replacingOccurrences(of: "vit.blocks.", with: "vit ")
            s += "<text transform=\"translate(\(x(i) + 4),\(top + h + 8)) rotate(60)\">\(VerifyReport.esc(label))</text>\n"
        }
        s += "<text transform=\"translate(16,\(top + h / 2)) rotate(-90)\" text-anchor=\"middle\">relative error ‖Δ‖/‖ref‖</text>\n"
        func line(_ pts: [(Int, Double)], color: String, width: Double, id: String) -> String {
            guard !pts.isEmpty else { return "" }
            let path = pts.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
            var out = "<polyline class=\"\(id)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"\(width)\" points=\"\(path)\"/>\n"
            for p in pts { out += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%@\"/>", x(p.0), y(p.1), width + 1, color) }
            return out + "\n"
        }
        let index = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })
        for (j, p) in probes.enumerated() {
            let pts = p.stages.compactMap { st in index[st.stage].map { ($0, st.relative) } }
            s += line(pts, color: VerifyReport.palette[j % VerifyReport.palette.count], width: 1.2, id: "probe")
        }
        s += line(stages.enumerated().map { ($0.offset, $0.element.relative) }, color: "#000", width: 2.5, id: "total")
        if let lg = largestGrowth, lg.after > 0, let i = index[lg.stage] {
            s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"8\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>", x(i), y(lg.after))
            s += "<text x=\"\(x(i) + 10)\" y=\"\(y(lg.after) - 10)\" fill=\"#d62728\">largest growth</text>\n"
        }
        // Legend.
        var lx = left + 8
        let ly = top + 14
        s += "<text x=\"\(lx)\" y=\"\(ly)\" font-weight=\"bold\">all probes</text>"
        lx += 80
        for (j, p) in probes.enumerated() {
            s += "<text x=\"\(lx)\" y=\"\(ly)\" fill=\"\(VerifyReport.palette[j % VerifyReport.palette.count])\">\(VerifyReport.esc(p.id))</text>"
            lx += Double(p.id.count * 7 + 16)
        }
        return s + "\n</svg>"
    }

    public func html() -> String {
        let status = integrityOnly ? "INTEGRITY OK" : (passed ? "PASS" : "FAIL")
        let colour = passed ? "#2ca02c" : "#d62728"
        var b = """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>mm1pack verify: \(VerifyReport.esc((bundle as NSString).lastPathComponent))</title>
        <style>
        body { font-family: sans-serif; margin: 24px; color: #222; }
        h1, h2, b { color: #222; }
        table { border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }
        th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
        th:first-child, td:first-child { text-align: left; }
        .status { display: inline-block; padding: 4px 12px; color: #fff; background: \(colour); font-weight: bold; }
        .fail { color: #d62728; font-weight: bold; }
        </style></head><body>
        <h1>mm1pack verify <span class="status">\(status)</span></h1>
        <p><b>bundle</b> \(VerifyReport.esc(bundle))<br><b>integrity</b> \(tensorsChecked) tensor and \(sectionsChecked) section digests OK

        """
        if !integrityOnly {
            b += "<br><b>reference</b> \(VerifyReport.esc(referenceKind)): \(VerifyReport.esc(referenceDescription))"
            b += "<br><b>probes</b> \(probes.count) from \(VerifyReport.esc(probeSource)); logits compared: \(VerifyReport.esc(logitsMode)); \(VerifyReport.esc(rowsMode))</p>\n"
            if !thresholds.isEmpty {
                b += "<h2>Limits</h2><table><tr><th>metric</th><th>value</th><th>limit</th><th>from</th><th>result</th></tr>\n"
                for t in thresholds {
                    let res = t.value == nil ? "n/a" : (t.passed ? "pass" : "<span class=\"fail\">FAIL: \(VerifyReport.esc(t.excess))</span>")
                    b += "<tr><td>\(VerifyReport.esc(t.metric.label))</td><td>\(t.value.map(VerifyReport.g) ?? "n/a")</td><td>\(t.metric.isMinimum ? "≥" : "≤") \(VerifyReport.g(t.limit))</td><td>\(VerifyReport.esc(t.origin))</td><td>\(res)</td></tr>\n"
                }
                b += "</table>\n"
            }
            b += "<h2>Relative error by stage</h2>\n" + chartSVG() + "\n"
            if let lg = largestGrowth, lg.after > 0 {
                b += "<p>The error grows most at <b>\(VerifyReport.esc(lg.stage))</b>: \(VerifyReport.g(lg.before)) → \(VerifyReport.g(lg.after)).</p>\n"
            }
            if let o = overall, o.all.count > 0 {
                b += "<h2>Tokens</h2><table><tr><th>positions</th><th>count</th><th>mean KLD</th><th>median KLD</th><th>p99 KLD</th><th>max KLD</th><th>top-1</th><th>top-5</th><th>rms Δp(top)</th><th>max |Δlogit|</th><th>logit NMSE</th></tr>\n"
                func row(_ n: String, _ s: TokenSummary) -> String {
                    guard s.count > 0 else { return "" }
                    let cells = [String(s.count), VerifyReport.g(s.meanKLD), VerifyReport.g(s.medianKLD), VerifyReport.g(s.p99KLD),
                                 VerifyReport.g(s.maxKLD), VerifyReport.pct(s.top1), VerifyReport.pct(s.top5),
                                 VerifyReport.g(s.rmsDeltaTopP), VerifyReport.g(s.maxAbsDeltaLogit), VerifyReport.g(s.logitNMSE)]
                    return "<tr><td>\(VerifyReport.esc(n))</td>" + cells.map { "<td>\($0)</td>" }.joined() + "</tr>\n"
                }
                b += row("all", o.all) + row("text", o.text) + row("image-conditioned", o.image)
                for p in probes { b += row("probe " + p.id, p.tokens.all) }
                b += "</table>\n"
            }
            b += "<h2>Stages</h2><table><tr><th>stage</th><th>relative error</th><th>NMSE</th></tr>\n"
            for s in stages { b += "<tr><td>\(s.stage)</td><td>\(VerifyReport.g(s.relative))</td><td>\(VerifyReport.g(s.nmse))</td></tr>\n" }
            b += "</table>\n"
            if !experts.isEmpty {
                b += "<h2>MoE routing</h2><table><tr><th>layer</th><th>tokens with the same top-k experts</th></tr>\n"
                for e in experts { b += "<tr><td>llm.layers.\(e.layer)</td><td>\(e.same)/\(e.total) (\(VerifyReport.pct(Double(e.same) / Double(max(1, e.total)))))</td></tr>\n" }
                b += "</table>\n"
            }
        } else {
            b += "</p>\n"
        }
        return b + "<p style=\"color:#888\">written by mm1pack \(Converter.toolVersion)</p>\n</body></html>\n"
    }
}
