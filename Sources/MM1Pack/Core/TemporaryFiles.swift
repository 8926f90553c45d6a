import Dispatch
import Foundation

/// Output files being written under a temporary name. Writers register them while they exist, so that a command
/// stopped by Ctrl-C, SIGTERM or SIGHUP removes them instead of leaving gigabytes of `.partial` files behind (an
/// error already removes them; a signal would otherwise end the process before that code runs).
public enum TemporaryFiles {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var paths: Set<String> = []
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    public static func add(_ path: String) {
        lock.withLock { _ = paths.insert(path) }
    }

    public static func remove(_ path: String) {
        lock.withLock { _ = paths.remove(path) }
    }

    /// From now on SIGINT, SIGTERM and SIGHUP delete every registered file, then end the process with status
    /// 128 + the signal's number, as the default action's status would read in a shell. Idempotent.
    public static func removeOnSignals() {
        lock.lock()
        defer { lock.unlock() }
        guard sources.isEmpty else { return }
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            // The handler runs on a dispatch queue, not in signal context, so it may take the lock and unlink.
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global(qos: .userInteractive))
            s.setEventHandler {
                lock.lock()
                for p in paths { unlink(p) }
                _exit(128 + sig)
            }
            s.resume()
            sources.append(s)
        }
    }
}
