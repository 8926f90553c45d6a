import Foundation

/// A place in the forward pass where intermediate tensors can be observed.
public enum HookPoint: Hashable, Sendable, CustomStringConvertible {
    /// The residual stream entering LLM layer `i` ([T, D]); layer 0's input is the embeddings.
    case llmLayerInput(Int)
    /// The output of the final RMSNorm ([T, D]), the input of the output head.
    case llmFinalNorm
    /// The output logits ([T, V]).
    case logits
    /// The input of a linear layer, named by its canonical weight (`llm.layers.3.attn.q.weight`), [rows, in].
    /// q, k and v each report the same input. The tied output head reports `llm.embed.weight`.
    case linearInput(String)
    /// The rows routed to one expert of a stacked MoE weight (`llm.layers.1.moe.gate.weight`, expert 2), [n, in].
    case expertLinearInput(String, expert: Int)
    /// Anything else, named by the code that reports it: `vit.embeddings`, `vit.blocks.N.output`, `vit.features`
    /// (once per image piece), `conn.output` (an image's token embeddings, [Q, D]), `llm.layers.N.output` (the
    /// residual stream after layer N), `llm.layers.N.moe.experts` (each token's chosen experts in rank order, as
    /// floats, [T, k]).
    case named(String)

    public var description: String {
        switch self {
        case .llmLayerInput(let i): return "llm.layers.\(i).input"
        case .llmFinalNorm: return "llm.norm.output"
        case .logits: return "logits"
        case .linearInput(let n): return "input(\(n))"
        case .expertLinearInput(let n, let e): return "input(\(n)[\(e)])"
        case .named(let n): return n
        }
    }
}

/// Observers of the forward pass. The model calls `observe` synchronously on the calling thread; `data` is the
/// model's own buffer (copy-on-write, so keeping it costs nothing until the model would mutate it — it never does
/// after reporting). `wants` lets an observer skip points cheaply; the default wants everything.
public protocol ForwardHooks: AnyObject {
    func wants(_ point: HookPoint) -> Bool
    func observe(_ point: HookPoint, _ data: [Float], shape: [Int])
}

public extension ForwardHooks {
    func wants(_ point: HookPoint) -> Bool { true }
}

extension Optional where Wrapped == any ForwardHooks {
    /// Reports to the hooks, if any and if they want the point. `shape` is built only when needed.
    @inline(__always)
    func report(_ point: @autoclosure () -> HookPoint, _ data: [Float], _ shape: @autoclosure () -> [Int]) {
        guard let h = self else { return }
        let p = point()
        if h.wants(p) { h.observe(p, data, shape: shape()) }
    }
}

/// Keeps the tensors of the points it is given (all points when `points` is nil).
public final class HookRecorder: ForwardHooks {
    public struct Record {
        public var shape: [Int]
        public var data: [Float]
    }

    public let points: Set<HookPoint>?
    public private(set) var records: [HookPoint: Record] = [:]
    /// Points in the order they were reported.
    public private(set) var order: [HookPoint] = []

    public init(points: Set<HookPoint>? = nil) { self.points = points }

    public func wants(_ point: HookPoint) -> Bool { points?.contains(point) ?? true }

    public func observe(_ point: HookPoint, _ data: [Float], shape: [Int]) {
        if records[point] == nil { order.append(point) }
        records[point] = Record(shape: shape, data: data)
    }

    public subscript(_ point: HookPoint) -> Record? { records[point] }
}
