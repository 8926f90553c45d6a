import Foundation
import XCTest
@testable import MM1Pack

/// The quantization math on small random problems: edge values of the group rules, the clip search, GPTQ's
/// bookkeeping (against RTN where the two must agree exactly, and on error where GPTQ must win), and AWQ.
final class QuantMathTests: XCTestCase {
    static let allSpecs: [QuantSpec] = [
        QuantSpec(bits: 8, groupSize: 32, scheme: .sym),
        QuantSpec(bits: 4, groupSize: 32, scheme: .sym),
        QuantSpec(bits: 4, groupSize: 32, scheme: .asym),
    ]

    func gaussian(_ rng: inout SplitMix64) -> Float {
        // Box–Muller on two uniforms in (0, 1].
        let u1 = (Float(rng.next() >> 40) + 1) / Float(1 << 24), u2 = Float(rng.next() >> 40) / Float(1 << 24)
        return (-2 * logf(u1)).squareRoot() * cosf(2 * .pi * u2)
    }

    func randomMatrix(_ rows: Int, _ cols: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<(rows * cols)).map { _ in gaussian(&rng) * scale }
    }

    func isF16(_ v: Float) -> Bool { Float(Float16(v)) == v }

    /// Checks the invariants every quantized tensor must satisfy.
    func checkInvariants(_ q: QuantizedTensor, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(q.codes.count, q.rows * q.cols, file: file, line: line)
        XCTAssertEqual(q.scales.count, q.rows * q.groupsPerRow, file: file, line: line)
        for s in q.scales { XCTAssertTrue(s.isFinite && isF16(s), "scale \(s) not f16-exact", file: file, line: line) }
        if q.spec.bits == 8 {
            XCTAssertFalse(q.codes.contains(0x80), "int8 code −128 used", file: file, line: line)
            XCTAssertNil(q.zeros, file: file, line: line)
        } else {
            XCTAssertTrue(q.codes.allSatisfy { $0 <= 15 }, "int4 code out of range", file: file, line: line)
            if q.spec.scheme == .asym {
                XCTAssertEqual(q.zeros?.count, q.scales.count, file: file, line: line)
                for z in q.zeros ?? [] { XCTAssertTrue(z >= 0 && z <= 15 && z == z.rounded(), "zero \(z)", file: file, line: line) }
                // Asym scales are never negative; only sym int4 uses the sign.
                XCTAssertTrue(q.scales.allSatisfy { $0 >= 0 }, file: file, line: line)
            } else {
                XCTAssertNil(q.zeros, file: file, line: line)
            }
        }
    }

    // MARK: group rules and edge values

    func testZeroGroupDequantizesToExactZero() throws {
        for spec in Self.allSpecs {
            var w = randomMatrix(2, 64, seed: 1)
            for i in 32..<64 { w[i] = 0 }  // row 0, group 1
            let q = try GroupQuantizer.quantize(weight: w, rows: 2, cols: 64, spec: spec)
            checkInvariants(q)
            XCTAssertEqual(q.scales[1], 0, "\(spec)")
            for c in 32..<64 {
                let v = q.value(row: 0, col: c)
                XCTAssertEqual(v, 0, "\(spec)")
                XCTAssertEqual(v.sign, .plus, "\(spec)")
            }
        }
    }

    func testConstantGroupsRoundTripExactly() throws {
        // f16-representable constants of both signs and several magnitudes, including a subnormal-range one; and a
        // group mixing one constant with zeros.
        let constants: [Float] = [1, -1, 0.3, -0.3, 1.75, -1000, 3e-5, 65504, -65504, 1e-7].map { Float(Float16($0)) }
        for spec in Self.allSpecs {
            for c in constants {
                var w = [Float](repeating: c, count: 32)
                let q = try GroupQuantizer.quantize(weight: w, rows: 1, cols: 32, spec: spec)
                checkInvariants(q)
                for i in 0..<32 { XCTAssertEqual(q.value(row: 0, col: i), c, "\(spec) constant \(c)") }
                for i in stride(from: 0, to: 32, by: 3) { w[i] = 0 }
                let q2 = try GroupQuantizer.quantize(weight: w, rows: 1, cols: 32, spec: spec)
                for i in 0..<32 { XCTAssertEqual(q2.value(row: 0, col: i), w[i], "\(spec) constant \(c) with zeros") }
            }
        }
    }

    func testF16ExtremesAndScaleOverflow() throws {
        for spec in Self.allSpecs {
            var w = randomMatrix(1, 32, seed: 2)
            w[3] = 65504
            w[17] = -65504
            let q = try GroupQuantizer.quantize(weight: w, rows: 1, cols: 32, spec: spec)
            checkInvariants(q)
            let s = abs(q.scales[0])
            for i in 0..<32 {
                XCTAssertLessThanOrEqual(abs(q.value(row: 0, col: i) - w[i]), s * 1.001, "\(spec) col \(i)")
            }
        }
        // Scales that cannot be stored in f16: |w|/127 for int8, |w|/8 for sym int4, range/15 for asym int4.
        let over: [(QuantSpec, Float)] = [(Self.allSpecs[0], 1e7), (Self.allSpecs[1], 1e6), (Self.allSpecs[2], 1e6)]
        for (spec, big) in over {
            var w = [Float](repeating: 0.5, count: 32)
            w[5] = -big
            XCTAssertThrowsError(try GroupQuantizer.quantize(weight: w, rows: 1, cols: 32, spec: spec), "\(spec)") { e in
                XCTAssertTrue("\(e)".contains("overflows f16"), "\(e)")
            }
        }
        // Just under the limit still works for int8: 127 · 65504 rounds to a finite scale.
        var w = [Float](repeating: 1, count: 32)
        w[0] = 127 * 65504
        let q = try GroupQuantizer.quantize(weight: w, rows: 1, cols: 32, spec: Self.allSpecs[0])
        XCTAssertEqual(q.scales[0], 65504)
    }

    func testNonFiniteWeightsAreRefused() throws {
        for spec in Self.allSpecs {
            for bad in [Float.nan, .infinity, -.infinity] {
                var w = randomMatrix(2, 64, seed: 3)
                w[64 + 40] = bad
                XCTAssertThrowsError(try GroupQuantizer.quantize(weight: w, rows: 2, cols: 64, spec: spec)) { e in
                    XCTAssertTrue("\(e)".contains("[1, 40]"), "\(e)")
                }
                XCTAssertThrowsError(try RTN.quantize(weight: w, rows: 2, cols: 64, spec: spec, clipSearch: true))
                XCTAssertThrowsError(try GroupQuantizer.params(for: Array(w[64..<128]), spec: spec))
            }
        }
    }

    func testRandomCodesInRangeScalesF16AndErrorWithinOneStep() throws {
        for spec in Self.allSpecs + [QuantSpec(bits: 4, groupSize: 64, scheme: .sym), QuantSpec(bits: 8, groupSize: 128, scheme: .sym)] {
            let w = randomMatrix(16, 128, seed: 4)
            let q = try GroupQuantizer.quantize(weight: w, rows: 16, cols: 128, spec: spec)
            checkInvariants(q)
            XCTAssertEqual(q.shape, [16, 128])
            let deq = q.dequantized()
            for r in 0..<16 {
                for c in 0..<128 {
                    let s = abs(q.scales[r * q.groupsPerRow + c / spec.groupSize])
                    // Half a step from rounding; a clipped extreme (the far side of sym int4, the top of asym
                    // after the zero point rounds) can be off by up to one step.
                    let bound = spec.bits == 8 ? 0.5 * s * 1.13 : s * 1.001
                    XCTAssertLessThanOrEqual(abs(deq[r * 128 + c] - w[r * 128 + c]), bound, "\(spec) [\(r), \(c)]")
                }
            }
        }
        // The sign rule of sym int4: the largest-magnitude value lands exactly on level −8.
        let g: [Float] = [0.1, -0.2, 0.8, 0.3] + [Float](repeating: 0.05, count: 28)
        let p = try GroupQuantizer.params(for: g, spec: Self.allSpecs[1])
        XCTAssertEqual(p.scale, Float(Float16(-0.1)))
        XCTAssertEqual(GroupQuantizer.code(0.8, params: p, spec: Self.allSpecs[1]), 0)
        let (p2, codes) = try GroupQuantizer.quantizeGroup(g, spec: Self.allSpecs[1])
        XCTAssertEqual(p2, p)
        XCTAssertEqual(codes[2], 0)
        XCTAssertEqual(GroupQuantizer.dequantize(code: codes[2], params: p2, spec: Self.allSpecs[1]), -8 * p.scale)
    }

    // MARK: RTN clip search

    func testClipSearchNeverIncreasesWeightedError() throws {
        var rng = SplitMix64(seed: 5)
        let rows = 32, cols = 256
        // Heavy-tailed weights (a few outliers per row) are where clipping pays.
        var w = randomMatrix(rows, cols, seed: 6)
        for _ in 0..<64 { w[rng.int(rows * cols)] *= 6 }
        let imp = (0..<cols).map { _ in abs(gaussian(&rng)) + 0.01 }
        for spec in Self.allSpecs {
            for importance in [nil, imp] {
                let plain = try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec)
                let clipped = try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec, clipSearch: true, importance: importance)
                checkInvariants(clipped)
                let a = plain.dequantized(), b = clipped.dequantized()
                let weights = importance ?? [Float](repeating: 1, count: cols)
                var totalA = 0.0, totalB = 0.0
                for r in 0..<rows {
                    for g in 0..<(cols / spec.groupSize) {
                        var ea = 0.0, eb = 0.0
                        for c in (g * spec.groupSize)..<((g + 1) * spec.groupSize) {
                            let i = r * cols + c
                            ea += Double(weights[c]) * Double(w[i] - a[i]) * Double(w[i] - a[i])
                            eb += Double(weights[c]) * Double(w[i] - b[i]) * Double(w[i] - b[i])
                        }
                        XCTAssertLessThanOrEqual(eb, ea * (1 + 1e-12), "\(spec) row \(r) group \(g)")
                        totalA += ea
                        totalB += eb
                    }
                }
                print("RTN clip search \(spec) importance=\(importance != nil): weighted error \(totalA) -> \(totalB) (\(String(format: "%.1f", 100 * (1 - totalB / totalA)))% lower)")
                // int8's step is so fine that cutting even 2.5% off an outlier costs more than it gains.
                if spec.bits == 4 { XCTAssertLessThan(totalB, totalA * 0.97, "\(spec)") }
            }
        }
    }

    // MARK: GPTQ

    /// X = Z · M with Z Gaussian [n, cols] and M = I + 0.6 · Gaussian/√cols mixing, so the inputs are correlated
    /// (what GPTQ exploits); some channels are also made louder.
    func correlatedInput(n: Int, cols: Int, seed: UInt64) -> [Float] {
        let z = randomMatrix(n, cols, seed: seed)
        var m = randomMatrix(cols, cols, seed: seed + 1, scale: 0.6 / Float(cols).squareRoot())
        for i in 0..<cols { m[i * cols + i] += 1 }
        for i in stride(from: 0, to: cols, by: 17) { for j in 0..<cols { m[i * cols + j] *= 4 } }
        return Linear.matmul(z, m, m: n, k: cols, n: cols)
    }

    func hessian(_ x: [Float], n: Int, cols: Int) -> [Float] {
        var xt = [Float](repeating: 0, count: n * cols)
        for r in 0..<n { for c in 0..<cols { xt[c * n + r] = x[r * cols + c] } }
        return Linear.matmul(xt, x, m: cols, k: n, n: cols)
    }

    func testGPTQBeatsRTNOnCorrelatedInputs() throws {
        let rows = 64, cols = 256, n = 4 * cols
        let w = randomMatrix(rows, cols, seed: 7)
        let x = correlatedInput(n: n, cols: cols, seed: 8)
        let h = hessian(x, n: n, cols: cols)
        let specs = [QuantSpec(bits: 4, groupSize: 32, scheme: .sym), QuantSpec(bits: 4, groupSize: 64, scheme: .sym),
                     QuantSpec(bits: 4, groupSize: 32, scheme: .asym), QuantSpec(bits: 4, groupSize: 64, scheme: .asym),
                     QuantSpec(bits: 8, groupSize: 64, scheme: .sym), QuantSpec(bits: 8, groupSize: 256, scheme: .sym)]
        for spec in specs {
            let rtn = try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec)
            let eRTN = AWQ.relativeOutputError(x: x, rows: n, cols: cols, w: w, wHat: rtn.dequantized(), outRows: rows)
            for actOrder in [false, true] {
                let r = try GPTQ.run(weight: w, rows: rows, cols: cols, hessian: h, spec: spec, damp: 0.01, blockSize: 32,
                                     actOrder: actOrder, keepWHat: true)
                checkInvariants(r.tensor)
                let deq = r.tensor.dequantized()
                XCTAssertEqual(deq, r.wHat, "\(spec) actOrder=\(actOrder): stored tensor differs from the internal Ŵ")
                let e = AWQ.relativeOutputError(x: x, rows: n, cols: cols, w: w, wHat: deq, outRows: rows)
                print("GPTQ \(spec) actOrder=\(actOrder): relative output error \(String(format: "%.3e", e)) vs RTN \(String(format: "%.3e", eRTN)) (ratio \(String(format: "%.3f", e / eRTN)))")
                XCTAssertLessThan(e, eRTN * 0.9, "\(spec) actOrder=\(actOrder)")
            }
        }
    }

    /// The clip search scored on the group's true output error: with identity blocks it is the unweighted search
    /// exactly; with blocks of XᵀX it lowers the output error on correlated inputs, and more than the per-channel
    /// weighting does.
    func testClipSearchOnGroupHessians() throws {
        let rows = 64, cols = 256, n = 4 * cols
        let w = randomMatrix(rows, cols, seed: 11)
        let x = correlatedInput(n: n, cols: cols, seed: 12)
        for spec in [QuantSpec(bits: 4, groupSize: 32, scheme: .sym), QuantSpec(bits: 4, groupSize: 64, scheme: .asym)] {
            let g = spec.groupSize
            var identity = [Float](repeating: 0, count: cols * g)
            for j in 0..<(cols / g) { for i in 0..<g { identity[j * g * g + i * g + i] = 1 } }
            let plainSearch = try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec, clipSearch: true)
            let viaIdentity = try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec, clipSearch: true, groupHessians: identity)
            XCTAssertEqual(plainSearch, viaIdentity, "\(spec)")
            let blocks = Quantizer.groupHessians(x, rows: n, cols: cols, group: g)
            func err(_ q: QuantizedTensor) -> Double {
                AWQ.relativeOutputError(x: x, rows: n, cols: cols, w: w, wHat: q.dequantized(), outRows: rows)
            }
            let none = try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec)
            let diag = try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec, clipSearch: true,
                                        importance: Quantizer.meanSquare(x, rows: n, cols: cols))
            let full = try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec, clipSearch: true, groupHessians: blocks)
            checkInvariants(full)
            print("clip search \(spec): no clip \(err(none)), per-channel \(err(diag)), group Hessians \(err(full))")
            XCTAssertLessThan(err(full), err(none))
            XCTAssertLessThan(err(full), err(diag))
        }
    }

    /// GPTQ given the rows X forms H = XᵀX itself: the same result as given H, up to summation order.
    func testGPTQFromInputsMatchesGPTQFromHessian() throws {
        let rows = 64, cols = 256, n = 4 * cols
        let w = randomMatrix(rows, cols, seed: 21)
        var x = correlatedInput(n: n, cols: cols, seed: 22)
        for r in 0..<n { x[r * cols + 5] = 0 }  // a dead channel
        for actOrder in [false, true] {
            let spec = QuantSpec(bits: 4, groupSize: 32, scheme: .asym)
            let a = try GPTQ.quantize(weight: w, rows: rows, cols: cols, hessian: hessian(x, n: n, cols: cols), spec: spec, actOrder: actOrder)
            let b = try GPTQ.quantize(weight: w, rows: rows, cols: cols, inputs: x, inputRows: n, spec: spec, actOrder: actOrder)
            checkInvariants(b)
            let same = zip(a.codes, b.codes).filter { $0 == $1 }.count
            XCTAssertGreaterThan(Double(same) / Double(a.codes.count), 0.99, "actOrder=\(actOrder)")
            let ea = AWQ.relativeOutputError(x: x, rows: n, cols: cols, w: w, wHat: a.dequantized(), outRows: rows)
            let eb = AWQ.relativeOutputError(x: x, rows: n, cols: cols, w: w, wHat: b.dequantized(), outRows: rows)
            XCTAssertEqual(ea, eb, accuracy: ea * 1e-2, "actOrder=\(actOrder)")
        }
    }

    func testGPTQWithIdentityOrDiagonalHessianEqualsRTN() throws {
        let rows = 16, cols = 128
        let w = randomMatrix(rows, cols, seed: 9)
        var identity = [Float](repeating: 0, count: cols * cols)
        for i in 0..<cols { identity[i * cols + i] = 1 }
        // A diagonal H with distinct entries makes actOrder a real permutation with nothing to propagate.
        var rng = SplitMix64(seed: 10)
        var diagonal = [Float](repeating: 0, count: cols * cols)
        for i in 0..<cols { diagonal[i * cols + i] = 0.1 + abs(gaussian(&rng)) }
        for spec in Self.allSpecs + [QuantSpec(bits: 4, groupSize: 64, scheme: .asym)] {
            let rtn = try RTN.quantize(weight: w, rows: rows, cols: cols, spec: spec)
            for (name, h) in [("identity", identity), ("diagonal", diagonal)] {
                for actOrder in [false, true] {
                    for bs in [7, 128] {
                        let g = try GPTQ.quantize(weight: w, rows: rows, cols: cols, hessian: h, spec: spec, blockSize: bs,
                                                  actOrder: actOrder)
                        XCTAssertEqual(g, rtn, "\(spec) H=\(name) actOrder=\(actOrder) blockSize=\(bs)")
                    }
                }
            }
        }
    }

    func testGPTQActOrderGroupsConsistentAcrossBlockSizes() throws {
        // Groups larger than blocks and blocks that cut groups, with actOrder scattering every group over many
        // blocks: group parameters then come from pending updates. The stored tensor must reproduce the internal
        // Ŵ exactly, and the block size (a pure scheduling choice) must barely change the result.
        let rows = 32, cols = 192, n = 4 * cols
        let w = randomMatrix(rows, cols, seed: 11)
        let x = correlatedInput(n: n, cols: cols, seed: 12)
        let h = hessian(x, n: n, cols: cols)
        for spec in [QuantSpec(bits: 4, groupSize: 64, scheme: .asym), QuantSpec(bits: 4, groupSize: 32, scheme: .sym)] {
            var results: [(Int, Double, [UInt8])] = []
            for bs in [1, 5, 16, 192] {
                let r = try GPTQ.run(weight: w, rows: rows, cols: cols, hessian: h, spec: spec, damp: 0.01, blockSize: bs,
                                     actOrder: true, keepWHat: true)
                XCTAssertEqual(r.tensor.dequantized(), r.wHat, "\(spec) blockSize \(bs)")
                let e = AWQ.relativeOutputError(x: x, rows: n, cols: cols, w: w, wHat: r.wHat, outRows: rows)
                results.append((bs, e, r.tensor.codes))
            }
            let (_, e0, c0) = results[0]
            for (bs, e, c) in results.dropFirst() {
                let same = zip(c0, c).filter { $0 == $1 }.count
                print("GPTQ actOrder \(spec) blockSize \(bs): error \(String(format: "%.4e", e)) vs blockSize 1 \(String(format: "%.4e", e0)), \(same)/\(c.count) codes equal")
                XCTAssertEqual(e, e0, accuracy: e0 * 0.02, "\(spec) blockSize \(bs)")
                XCTAssertGreaterThan(Double(same) / Double(c.count), 0.97, "\(spec) blockSize \(bs)")
            }
        }
    }

    func testGPTQFactorIsUpperCholeskyOfInverse() throws {
        // UᵀU (upper triangle of U only) times the permuted, damped H must be the identity, including a dead channel.
        let n = 40, lambda: Float = 0.5
        var x = correlatedInput(n: 160, cols: n, seed: 21)
        for r in 0..<160 { x[r * n + 7] = 0 }
        let h = hessian(x, n: 160, cols: n)
        var rng = SplitMix64(seed: 22)
        var perm = Array(0..<n)
        for i in stride(from: n - 1, to: 0, by: -1) { perm.swapAt(i, rng.int(i + 1)) }
        let dead = (0..<n).map { $0 == 7 }
        var u = [Float](repeating: 0, count: n * n)
        XCTAssertTrue(try GPTQ.factor(&u, source: .matrix(h), cols: n, perm: perm, dead: dead, lambda: lambda))
        var a = [Double](repeating: 0, count: n * n)
        for i in 0..<n {
            for j in 0..<n { a[i * n + j] = dead[perm[i]] || dead[perm[j]] ? 0 : Double(h[perm[i] * n + perm[j]]) }
            a[i * n + i] += dead[perm[i]] ? 1 + Double(lambda) : Double(lambda)
        }
        var worst = 0.0
        for i in 0..<n {
            for j in 0..<n {
                // (UᵀU A)[i][j] = Σ_k Σ_m U[k][i] U[k][m] A[m][j], with U[k][i] = 0 for k > i.
                var v = 0.0
                for k in 0...i {
                    var t = 0.0
                    for m in k..<n { t += Double(u[k * n + m]) * a[m * n + j] }
                    v += Double(u[k * n + i]) * t
                }
                worst = max(worst, abs(v - (i == j ? 1 : 0)))
            }
        }
        XCTAssertLessThan(worst, 1e-3)
    }

    func testGPTQDeadChannelsAndDampingRetries() throws {
        let rows = 8, cols = 64, n = 256
        var x = correlatedInput(n: n, cols: cols, seed: 13)
        for r in 0..<n { x[r * cols + 5] = 0; x[r * cols + 40] = 0 }
        let h = hessian(x, n: n, cols: cols)
        let w = randomMatrix(rows, cols, seed: 14)
        let spec = QuantSpec(bits: 4, groupSize: 32, scheme: .asym)
        for actOrder in [false, true] {
            let q = try GPTQ.quantize(weight: w, rows: rows, cols: cols, hessian: h, spec: spec, actOrder: actOrder)
            for r in 0..<rows {
                XCTAssertEqual(q.value(row: r, col: 5), 0)
                XCTAssertEqual(q.value(row: r, col: 40), 0)
            }
        }
        // Indefinite with a positive diagonal: 2 × 2 blocks [[1, b], [b, 1]] have eigenvalue 1 − b. b = 5 needs
        // λ > 4, reached by the retries (0.01 → 10); b = 50 is beyond them.
        func blocks(_ b: Float) -> [Float] {
            var m = [Float](repeating: 0, count: cols * cols)
            for i in stride(from: 0, to: cols, by: 2) {
                m[i * cols + i] = 1; m[(i + 1) * cols + i + 1] = 1
                m[i * cols + i + 1] = b; m[(i + 1) * cols + i] = b
            }
            return m
        }
        let r = try GPTQ.run(weight: w, rows: rows, cols: cols, hessian: blocks(5), spec: spec, damp: 0.01, blockSize: 16,
                             actOrder: false, keepWHat: false)
        XCTAssertEqual(r.damp, 10, accuracy: 1e-4)
        XCTAssertThrowsError(try GPTQ.quantize(weight: w, rows: rows, cols: cols, hessian: blocks(50), spec: spec, actOrder: false)) { e in
            XCTAssertTrue("\(e)".contains("not positive definite"), "\(e)")
        }
        var bad = h
        bad[3 * cols + 7] = .nan
        XCTAssertThrowsError(try GPTQ.quantize(weight: w, rows: rows, cols: cols, hessian: bad, spec: spec, actOrder: false))
    }

    // MARK: AWQ

    func testAWQNeverWorseAndWinsWithSalientChannels() throws {
        let rows = 48, cols = 256, n = 512
        let spec = QuantSpec(bits: 4, groupSize: 64, scheme: .asym)
        var x = randomMatrix(n, cols, seed: 15)
        let w1 = randomMatrix(rows, cols, seed: 16), w2 = randomMatrix(rows / 2, cols, seed: 17)
        let lin: [(w: [Float], rows: Int, bias: [Float]?)] = [(w1, rows, nil), (w2, rows / 2, [Float](repeating: 1, count: rows / 2))]

        // Plain Gaussian activations: whatever α is picked, it is no worse than α = 0, and α = 0's error is RTN's.
        let plain = try AWQ.searchScales(input: x, rows: n, cols: cols, weights: lin, spec: spec)
        var rtnError = 0.0
        for l in lin {
            let q = try RTN.quantize(weight: l.w, rows: l.rows, cols: cols, spec: spec)
            rtnError += AWQ.outputError(x: x, rows: n, cols: cols, w: l.w, wHat: q.dequantized(), outRows: l.rows)
        }
        XCTAssertEqual(plain.errorBefore, rtnError, accuracy: rtnError * 1e-9)
        XCTAssertLessThanOrEqual(plain.errorAfter, plain.errorBefore)
        print("AWQ Gaussian x: α = \(plain.alpha), error \(plain.errorBefore) -> \(plain.errorAfter)")

        // A few channels 50× louder: AWQ must win clearly.
        for c in [3, 77, 130, 201] { for r in 0..<n { x[r * cols + c] *= 50 } }
        let salient = try AWQ.searchScales(input: x, rows: n, cols: cols, weights: lin, spec: spec)
        print("AWQ salient x: α = \(salient.alpha), error \(salient.errorBefore) -> \(salient.errorAfter) (\(String(format: "%.3f", salient.errorAfter / salient.errorBefore))×)")
        XCTAssertGreaterThan(salient.alpha, 0)
        XCTAssertLessThan(salient.errorAfter, 0.7 * salient.errorBefore)

        // The reported error is what applying the scales gives.
        var check = 0.0
        for l in lin {
            var scaled = l.w
            for r in 0..<l.rows { for c in 0..<cols { scaled[r * cols + c] *= salient.scales[c] } }
            var wHat = try RTN.quantize(weight: scaled, rows: l.rows, cols: cols, spec: spec).dequantized()
            for r in 0..<l.rows { for c in 0..<cols { wHat[r * cols + c] /= salient.scales[c] } }
            check += AWQ.outputError(x: x, rows: n, cols: cols, w: l.w, wHat: wHat, outRows: l.rows)
        }
        XCTAssertEqual(check, salient.errorAfter, accuracy: salient.errorAfter * 1e-9)
        let rel = AWQ.relativeOutputError(x: x, rows: n, cols: cols, w: w1, wHat: w1, outRows: rows)
        XCTAssertEqual(rel, 0)
    }

    // MARK: timing (release builds, on request)

    /// MM1_QUANT_BENCH=1 swift test -c release -Xswiftc -enable-testing --filter QuantMathTests/testGPTQTiming
    /// (`@testable` needs -enable-testing in release builds).
    func testGPTQTiming() throws {
        guard let v = ProcessInfo.processInfo.environment["MM1_QUANT_BENCH"], let size = v == "1" ? 4096 : Int(v) else {
            throw XCTSkip("set MM1_QUANT_BENCH=1 (or a size) to time GPTQ at 4096 × 4096")
        }
        let rows = size, cols = size, n = 2 * cols
        let w = randomMatrix(rows, cols, seed: 18)
        let x = randomMatrix(n, cols, seed: 19)
        var h = [Float](repeating: 0, count: cols * cols)
        x.withUnsafeBufferPointer { xb in
            h.withUnsafeMutableBufferPointer { hb in
                gramFull(xb.baseAddress!, n: n, cols: cols, into: hb.baseAddress!)
            }
        }
        for actOrder in [false, true] {
            let t0 = Date()
            let q = try GPTQ.quantize(weight: w, rows: rows, cols: cols, hessian: h, spec: QuantSpec(bits: 4, groupSize: 128, scheme: .sym),
                                      actOrder: actOrder)
            let dt = Date().timeIntervalSince(t0)
            print("GPTQ \(rows)×\(cols), int4 g128 sym, actOrder=\(actOrder): \(String(format: "%.2f", dt)) s (\(q.codes.count) codes)")
        }
    }
}

/// H = XᵀX (full, both triangles) through sgemm.
private func gramFull(_ x: UnsafePointer<Float>, n: Int, cols: Int, into h: UnsafeMutablePointer<Float>) {
    var xt = [Float](repeating: 0, count: n * cols)
    for r in 0..<n { for c in 0..<cols { xt[c * n + r] = x[r * cols + c] } }
    xt.withUnsafeBufferPointer { Linear.gemmNT($0.baseAddress!, rows: cols, weight: $0.baseAddress!, out: cols, in: n, into: h, ldy: cols) }
}
