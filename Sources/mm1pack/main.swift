import ArgumentParser
import Foundation
import MM1Pack

@main
struct MM1PackCLI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mm1pack",
        abstract: "Convert, quantize and verify MM1-family multimodal checkpoints as one memory-mapped bundle.",
        version: Converter.toolVersion,
        subcommands: [Convert.self, Inspect.self]
    )
}

/// Runs a command body, turning errors into a one-line message and a non-zero exit.
func MM1PackCLI_run(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as MM1Error {
        FileHandle.standardError.write(Data("mm1pack: error: \(e.description)\n".utf8))
        throw ExitCode(2)
    }
}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a training checkpoint into a bundle.",
        discussion: """
        SRC is a checkpoint directory (Hugging Face safetensors, sharded or not; Honeybee; an AXLearn \
        checkpoints/ or step_XXXXXXXX/ directory; an open_clip model) or a single .safetensors file. The layout is \
        detected from the files; --layout overrides it and --mapping replaces the layout's mapping table \
        (formats/layouts/*.json) with your own.

        Example:
          mm1pack convert fixtures/llava-llama -o llava.mm1 --dtype f16
        """
    )

    @Argument(help: "Source checkpoint directory or .safetensors file.") var source: String
    @Option(name: .shortAndLong, help: "Output bundle path.") var output: String
    @Option(help: "Tensor dtype in the bundle: auto (keep each tensor's float type), f32, f16 or bf16.") var dtype: String = "auto"
    @Option(help: "Source layout: axlearn, honeybee, llava, openclip (default: detected).") var layout: String?
    @Option(help: "A layout mapping file to use instead of the built-in one.") var mapping: String?
    @Flag(help: "Record source tensors that no rule maps in the bundle's metadata instead of failing.") var allowUnused = false
    @Flag(name: .shortAndLong, help: "No progress output.") var quiet = false

    func run() throws {
        try MM1PackCLI_run {
            var o = ConvertOptions()
            guard let dt = ConvertOptions.TargetDType(rawValue: dtype) else {
                throw MM1Error("--dtype must be one of auto, f32, f16, bf16 (got '\(dtype)')")
            }
            o.dtype = dt
            o.layout = layout
            o.mappingFile = mapping
            o.allowUnused = allowUnused
            o.showProgress = !quiet
            let r = try Converter.convert(source: source, output: output, options: o)
            if !quiet {
                var msg = "wrote \(output): \(r.tensors) tensors, \(Progress.bytes(r.bytes)) from layout \(r.layout) in \(String(format: "%.2f", r.seconds)) s"
                if !r.ignored.isEmpty { msg += "; skipped \(r.ignored.count) buffer(s) (see metadata.ignored_tensors)" }
                if !r.unused.isEmpty { msg += "; recorded \(r.unused.count) unmapped tensor(s) in metadata.unused_tensors" }
                print(msg)
            }
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a bundle's configuration, parameter counts, bytes per dtype and checksums.",
        discussion: """
        Example:
          mm1pack inspect llava.mm1 --tensors --check
        """
    )

    @Argument(help: "Bundle file.") var bundle: String
    @Flag(help: "Print JSON instead of text.") var json = false
    @Flag(help: "List every tensor with dtype, shape and SHA-256.") var tensors = false
    @Flag(help: "Recompute every tensor's SHA-256 and compare with the table (exit 2 on a mismatch).") var check = false

    func run() throws {
        try MM1PackCLI_run {
            let b = try BundleReader(path: bundle)
            let failures = check ? b.checkAll() : nil
            if json {
                FileHandle.standardOutput.write(Data(try InspectReport.json(b, tensors: tensors, checked: failures)))
                print()
            } else {
                print(InspectReport.text(b, tensors: tensors, checked: failures))
            }
            if let failures, !failures.isEmpty {
                throw MM1Error(file: bundle, "checksum mismatch in \(failures.count) tensor(s): \(failures.joined(separator: ", "))")
            }
        }
    }
}
