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
