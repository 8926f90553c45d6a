import Foundation

/// `mm1pack bench convert`: conversion time as a ratio to copying the same bytes with `cp`, measured in the same
/// run, alternating the two so that disk and page-cache noise hits both; medians are reported.
public enum ConvertBench {
    public struct Run: Sendable {
        public var convert: Double
        public var cp: Double
        /// `cp` followed by fsync of every copied file: the same durability the converter gives (it fsyncs
        /// before renaming the bundle into place).
        public var cpSync: Double
    }

    public struct Result: Sendable {
        public var runs: [Run]
        public var sourceBytes: Int
        public var bundleBytes: Int
        public var peakRSSBytes: Int
        public var sourceDigests: SourceDigestKind
        /// Source bytes the source-file digests hashed beyond what the bundle's tensor digests cover (last run).
        public var sourceBytesHashed: Int

        public static func median(_ xs: [Double]) -> Double {
            let s = xs.sorted()
            return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
        }

        public var medianConvert: Double { Result.median(runs.map(\.convert)) }
        public var medianCp: Double { Result.median(runs.map(\.cp)) }
        public var medianCpSync: Double { Result.median(runs.map(\.cpSync)) }

        public var summary: String {
            let gb = Double(sourceBytes) / 1e9
            return String(format: """
            source %.2f GB, bundle %.2f GB, %d runs (medians), source digests: \(sourceDigests.rawValue) (%.2f GB hashed again)
              convert      %7.2f s  %6.0f MB/s
              cp           %7.2f s  %6.0f MB/s   convert / cp         = %.2fx
              cp + fsync   %7.2f s  %6.0f MB/s   convert / (cp+fsync) = %.2fx
              peak RSS of the converting process: %.0f MB
            """, gb, Double(bundleBytes) / 1e9, runs.count, Double(sourceBytesHashed) / 1e9,
                          medianConvert, gb * 1e3 / medianConvert,
                          medianCp, gb * 1e3 / medianCp, medianConvert / medianCp,
                          medianCpSync, gb * 1e3 / medianCpSync, medianConvert / medianCpSync,
                          Double(peakRSSBytes) / 1e6)
        }
    }

    public static func run(source: String, workDir: String, runs: Int, options: ConvertOptions,
                           log: (String) -> Void) throws -> Result {
        try FileManager.default.createDirectory(atPath: workDir, withIntermediateDirectories: true)
        let sourceRoot = Converter.isDir(source) ? source : (source as NSString).deletingLastPathComponent
        let bytes = try directoryBytes(sourceRoot)
        let out = workDir + "/bench.mm1"
        let copy = workDir + "/bench-cp"
        var results: [Run] = []
        var bundleBytes = 0
        var hashed = 0
        for i in 1...max(1, runs) {
            try? FileManager.default.removeItem(atPath: copy)
            try? FileManager.default.removeItem(atPath: out)
            sync()
            let t0 = Date()
            try runProcess("/bin/cp", ["-r", sourceRoot, copy])
            let tCp = Date().timeIntervalSince(t0)
            try fsyncTree(copy)
            let tCpSync = Date().timeIntervalSince(t0)
            try FileManager.default.removeItem(atPath: copy)
            sync()
            let t1 = Date()
            let report = try Converter.convert(source: source, output: out, options: options)
            let tConvert = Date().timeIntervalSince(t1)
            bundleBytes = fileSize(out)
            hashed = report.sourceBytesHashed
            results.append(Run(convert: tConvert, cp: tCp, cpSync: tCpSync))
            log(String(format: "run %d: convert %.2f s, cp %.2f s, cp+fsync %.2f s", i, tConvert, tCp, tCpSync))
        }
        try? FileManager.default.removeItem(atPath: out)
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Result(runs: results, sourceBytes: bytes, bundleBytes: bundleBytes, peakRSSBytes: Int(usage.ru_maxrss) * 1024,
                      sourceDigests: options.sourceDigestKind, sourceBytesHashed: hashed)
    }

    static func fileSize(_ p: String) -> Int {
        var st = stat()
        return stat(p, &st) == 0 ? Int(st.st_size) : 0
    }

    static func walk(_ root: String) -> [String] {
        guard let e = FileManager.default.enumerator(atPath: root) else { return [] }
        var files: [String] = []
        while let rel = e.nextObject() as? String {
            let p = root + "/" + rel
            if !Converter.isDir(p) { files.append(p) }
        }
        return files
    }

    static func directoryBytes(_ root: String) throws -> Int {
        walk(root).reduce(0) { $0 + fileSize($1) }
    }

    static func fsyncTree(_ root: String) throws {
        for p in walk(root) {
            let fd = open(p, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw MM1Error(file: p, "cannot open for fsync") }
            fsync(fd)
            close(fd)
        }
    }

    static func runProcess(_ exe: String, _ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw MM1Error("\(exe) \(args.joined(separator: " ")) failed with status \(p.terminationStatus)") }
    }
}
