import Foundation
import XCTest
@testable import MM1Pack

enum TestPaths {
    static let repo: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static func fixture(_ name: String) -> String { repo + "/fixtures/" + name }

    static let fixtureNames = ["axlearn-dense", "axlearn-moe", "honeybee-dense", "honeybee-moe", "llama-text",
                               "llava-llama", "llava-mixtral", "llava-mixtral-v5", "openclip-vit"]

}

func quietOptions(_ dtype: ConvertOptions.TargetDType = .auto) -> ConvertOptions {
    var o = ConvertOptions()
    o.dtype = dtype
    o.showProgress = false
    return o
}

/// Deterministic pseudo-random numbers for tests (splitmix64).
struct SplitMix64 {
    var state: UInt64

    init(state: UInt64) { self.state = state }
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func int(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    /// Uniform in [−1, 1).
    mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }
}
