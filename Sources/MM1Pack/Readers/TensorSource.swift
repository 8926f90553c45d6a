/// What a source reader tells about one stored tensor.
public struct SourceTensorInfo: Sendable, Equatable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    /// The file that holds it, relative to the checkpoint root (for error messages and provenance).
    public var file: String

    public init(name: String, dtype: DType, shape: [Int], file: String) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.file = file
    }

    public var elementCount: Int { checkedElementCount(shape) ?? 0 }
    public var byteCount: Int { elementCount * dtype.byteSize }
}

/// A checkpoint seen as a set of named, typed, shaped tensors, whatever the files are (safetensors shards, zarr
/// arrays). Readers validate their files when they are opened; reading returns the stored bytes unchanged
/// (little-endian, row-major), never converted.
public protocol TensorSource: AnyObject {
    /// Directory or file the source was opened from.
    var root: String { get }
    /// Every tensor, by source name.
    var tensors: [String: SourceTensorInfo] { get }
    /// The files that make up the checkpoint, relative to `root`, for provenance.
    var files: [String] { get }

    /// Copies the box `lower ..< upper` (per axis, in elements) of tensor `name` into `into`, row-major, in the
    /// stored dtype. `into.count` must equal the box's element count times the dtype size.
    func read(_ name: String, lower: [Int], upper: [Int], into: UnsafeMutableRawBufferPointer) throws

    /// The whole tensor's stored bytes in place, when the format allows zero-copy access (memory-mapped,
    /// uncompressed); nil otherwise. Valid until `release` or until the source is deallocated.
    func mappedBytes(_ name: String) throws -> UnsafeRawBufferPointer?

    /// Hint that the caller is done with `name`: a memory-mapped reader drops the pages it touched from the
    /// process (they stay in the page cache), which keeps resident memory near one tensor.
    func release(_ name: String)
}

/// Where a tensor's stored bytes lie in a plain file.
public struct FileRange: Sendable, Equatable {
    public var path: String
    public var offset: Int
    public var length: Int
}

public protocol FileBackedTensorSource: TensorSource {
    /// The file range holding `name`'s stored bytes, when they are stored uncompressed, so that a writer can let
    /// the kernel copy them (copy_file_range) instead of copying through user memory.
    func fileRange(_ name: String) -> FileRange?
}
