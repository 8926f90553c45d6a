import Foundation

/// Every failure the tool reports. The message always names what the user must look at: the file, the tensor
/// (when one is involved) and what is wrong with it.
public struct MM1Error: Error, CustomStringConvertible, Equatable, Sendable {
    public var file: String?
    public var tensor: String?
    public var message: String

    public init(file: String? = nil, tensor: String? = nil, _ message: String) {
        self.file = file
        self.tensor = tensor
        self.message = message
    }

    public var description: String {
        var parts: [String] = []
        if let file { parts.append(file) }
        if let tensor { parts.append("tensor '\(tensor)'") }
        parts.append(message)
        return parts.joined(separator: ": ")
    }

    /// The same error with the file filled in when the lower layer did not know it.
    public func inFile(_ path: String) -> MM1Error {
        var e = self
        if e.file == nil { e.file = path }
        return e
    }

    public func forTensor(_ name: String) -> MM1Error {
        var e = self
        if e.tensor == nil { e.tensor = name }
        return e
    }
}
