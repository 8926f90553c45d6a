// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "mm1pack",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "mm1pack", targets: ["mm1pack"]),
        .library(name: "MM1Pack", targets: ["MM1Pack"]),
        .library(name: "CMM1Bundle", targets: ["CMM1Bundle"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CJSONC", pkgConfig: "json-c", providers: [.apt(["libjson-c-dev"])]),
        // The one parser of the bundle header, in C so that other runtimes link the same code (formats/bundle.md).
        .target(name: "CMM1Bundle", dependencies: ["CJSONC", "CZstd"]),
        // System calls the Swift Glibc overlay does not expose (copy_file_range).
        .target(name: "CSystemShims"),
        // Small hot loops written in C so that they vectorise predictably.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        .target(
            name: "MM1Pack",
            dependencies: [
                "CZstd", "COpenBLAS", "CMM1Bundle", "CSystemShims", "CKernels",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .executableTarget(
            name: "mm1pack",
            dependencies: ["MM1Pack", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .testTarget(name: "MM1PackTests", dependencies: ["MM1Pack", "CMM1Bundle"], resources: []),
    ],
    swiftLanguageModes: [.v6]
)
