import Foundation

/// Progress of a long operation on a terminal: items n of N, bytes, rate and time left, redrawn on one line at most
/// ten times a second. Silent when disabled (`--quiet`) or when standard error is not a terminal.
public final class Progress: @unchecked Sendable {
    let label: String
    let totalItems: Int
    let totalBytes: Int
    let enabled: Bool
    let start = Date()
    var lastDraw = Date.distantPast
    var drewSomething = false

    public init(label: String, totalItems: Int, totalBytes: Int, enabled: Bool) {
        self.label = label
        self.totalItems = totalItems
        self.totalBytes = totalBytes
        self.enabled = enabled && isatty(2) == 1
    }

    public func update(item: Int, bytes: Int, detail: String, force: Bool = false) {
        guard enabled else { return }
        let now = Date()
        guard force || now.timeIntervalSince(lastDraw) >= 0.1 else { return }
        lastDraw = now
        let elapsed = max(now.timeIntervalSince(start), 1e-6)
        let rate = Double(bytes) / elapsed
        let left = rate > 0 ? Double(totalBytes - bytes) / rate : 0
        var line = "\(label) [\(item)/\(totalItems)] \(Progress.bytes(bytes)) / \(Progress.bytes(totalBytes))"
        line += "  \(Progress.bytes(Int(rate)))/s  \(Progress.duration(left)) left  \(detail)"
        let width = 118
        if line.count > width { line = String(line.prefix(width)) }
        FileHandle.standardError.write(Data(("\r" + line + "\u{1B}[K").utf8))
        drewSomething = true
    }

    public func done() {
        guard enabled, drewSomething else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }

    public static func bytes(_ n: Int) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var v = Double(n)
        var u = 0
        while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
        return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
    }

    public static func duration(_ s: Double) -> String {
        if !s.isFinite { return "?" }
        let t = Int(s.rounded())
        return t >= 3600 ? "\(t / 3600)h\(t % 3600 / 60)m" : t >= 60 ? "\(t / 60)m\(t % 60)s" : "\(t)s"
    }
}
