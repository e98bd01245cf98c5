#!/usr/bin/env python3
"""CPU emulation of grouped_gemm_sm90.cu's index arithmetic, for checking kernel edits where no GPU is at hand.

A translation of the kernel and of GroupedGemm's host side: 64 groups per launch, largest k first, tileStart in the
kernel's 128 x GS_BN tiles, the binary search; per K slice the two fills exactly as the threads run them (16-byte
cp.async chunks, zero fill past a group's rows / k, the 128-byte swizzle of the destination, source alignment and
bounds asserted) into a stage that starts as NaN; the 64-bit wgmma descriptors as the kernel packs them, decoded and
read back element by element through the canonical layouts of the PTX ISA ("Shared Memory Matrix Layout": K-major
((8,m),(T,2k)):((8T,SBO),(1,T)), MN-major ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)), T = 8 bf16, then Swizzle<3,4,3> on
the byte address), with the transpose bits choosing the layout; every element a wgmma reads must have been written
(no NaN); the m64nNk16 accumulator fragment (CUTLASS's SM90 C layout) and the epilogue's guarded pair stores, into an
f32 C or a bf16 one (GB_FLAG_C_BF16: the same f32 value rounded to nearest even; each case runs both on C0 rounded to
bf16 values and the bf16 C must equal the f32 C rounded, bit for bit), and where beta != 0 the L2 prefetch of C (its
byte addresses, in C's dtype, must step through the tile row's bytes 128 at a time from its first); the persistent
CTAs (GRID of them, default 3, so that each runs several tiles; 0: one a tile) with their fill cursor and the ring of
GS_STAGES stages across tiles, each stage tagged with the slice it holds (a step must read its own slice, a fill must
not hit a stage that a wgmma still in flight reads: the current step's and, before wait_group 1, the previous one's). Run on
small ragged problems for all four transpositions and compared with numpy on the same bf16 inputs, and with B in two
blocks (GBParams.bSplit: B_g's stored rows at or past the split read from b2[g], splits inside tiles and K slices). It checks the
arithmetic against the documented layouts, not the hardware (copies land at once here): keep it in step with the .cu
when either changes. Needs numpy:  [GS_BN=128] [GS_STAGES=6] [GRID=0] python3 grouped_gemm_sm90_emulate.py
"""
import numpy as np, os
BM = 128; BN = int(os.environ.get("GS_BN", 256)); BK = 64; THREADS = 256; MAXG = 64
STAGES = int(os.environ.get("GS_STAGES", 4)); GRID = int(os.environ.get("GRID", 3))  # persistent CTAs a launch
NO_SPLIT = 0x7fffffff
A_BYTES = BM * BK * 2; B_BYTES = BN * BK * 2; STAGE = A_BYTES + B_BYTES
NAN16 = 0x7FC0

def bf16_bits(x):
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF).astype(np.uint16)

def bits_f32(b):
    return (np.asarray(b, dtype=np.uint32) << 16).view(np.float32)

def cp16(S, dst, G, src, in_):
    """cp.async.cg 16 bytes: src / dst byte addresses (src into the global uint16 array G, 16-byte aligned)"""
    assert dst % 16 == 0 and 0 <= dst and dst + 16 <= len(S) * 2
    if in_:
        assert src % 16 == 0 and 0 <= src and src + 16 <= len(G) * 2, "unaligned or out-of-bounds source"
        S[dst // 2: dst // 2 + 8] = G[src // 2: src // 2 + 8]
    else:
        assert 0 <= src < len(G) * 2, "a zero fill names an address outside the operand"
        S[dst // 2: dst // 2 + 8] = 0

def fill_kmajor(S, tile, G, base, base2, split, ld, rowsLeft, kLeft, ROWS):
    N = ROWS * 8 // THREADS
    none = base if split > 0 else base2
    for tid in range(THREADS):
        c = tid & 7; r0 = tid >> 3; kIn = c * 8 < kLeft
        dst = tile + r0 * 128 + ((c ^ (r0 & 7)) << 4)
        for i in range(N):
            row = r0 + 32 * i; in_ = kIn and row < rowsLeft
            src = base + (row * ld + c * 8) if row < split else base2 + ((row - split) * ld + c * 8)
            cp16(S, dst + i * 32 * 128, G, 2 * src if in_ else 2 * none, in_)

def fill_mnmajor(S, tile, G, base, base2, split, ld, kLeft, colsLeft, COLS):
    CPR = COLS // 8; RPP = THREADS // CPR; N = BK // RPP
    assert RPP % 8 == 0
    none = base if split > 0 else base2
    for tid in range(THREADS):
        cc = tid % CPR; k0 = tid // CPR; c = cc & 7; colIn = cc * 8 < colsLeft
        dst = tile + (cc >> 3) * (BK * 128) + k0 * 128 + ((c ^ (k0 & 7)) << 4)
        for i in range(N):
            kr = k0 + RPP * i; in_ = colIn and kr < kLeft
            src = base + (kr * ld + cc * 8) if kr < split else base2 + ((kr - split) * ld + cc * 8)
            cp16(S, dst + i * RPP * 128, G, 2 * src if in_ else 2 * none, in_)

def desc(start, lbo, sbo):
    return ((start & 0x3FFFF) >> 4) | (((lbo & 0x3FFFF) >> 4) << 16) | (((sbo & 0x3FFFF) >> 4) << 32) | (1 << 62)

def swz(addr):  # Swizzle<3,4,3> on a byte address: bits 4-6 ^= bits 7-9
    return addr ^ (((addr >> 7) & 7) << 4)

def read_operand(S, d, mn_extent, trans):
    """the [mn_extent, 16] matrix (A: [m, k]; B: [n, k]) that a wgmma reads through descriptor d"""
    assert (d >> 62) == 1 and ((d >> 49) & 7) == 0, "128-byte swizzle, base offset 0"
    start = (d & 0x3FFF) << 4; lbo = ((d >> 16) & 0x3FFF) << 4; sbo = ((d >> 32) & 0x3FFF) << 4
    out = np.empty((mn_extent, 16), dtype=np.uint16)
    for mn in range(mn_extent):
        for k in range(16):
            if not trans:  # K-major: ((8,m),(8,2k)):((64 el, SBO),(1 el, 8 el))
                off = 2 * ((mn % 8) * 64 + (k % 8) + 8 * (k // 8)) + sbo * (mn // 8)
            else:          # MN-major: ((8,8,m),(8,k)):((1,8,LBO),(64,SBO))
                off = 2 * ((mn % 8) + 8 * ((mn // 8) % 8) + 64 * (k % 8)) + lbo * (mn // 64) + sbo * (k // 8)
            out[mn, k] = S[swz(start + off) // 2]
    return out

def fma32(a, b, c):  # fmaf: one rounding of the exact a * b + c to f32
    return np.float32(np.float64(np.float32(a)) * np.float64(np.float32(b)) + np.float64(np.float32(c)))

def store_pair(C, ci, col, N, v0, v1, alpha, beta, vecC, c16=False):
    """C holds f32 values; with c16 it stands for a bf16 C (values bf16 holds), written rounded to nearest even"""
    out = (lambda v: bits_f32(bf16_bits(v))) if c16 else np.float32
    v0 = np.float32(v0) * np.float32(alpha); v1 = np.float32(v1) * np.float32(alpha)
    if vecC and col + 1 < N:
        assert (ci + col) % 2 == 0  # 8 bytes of f32, 4 of bf16
        if beta != 0:
            v0 = fma32(beta, C[ci + col], v0); v1 = fma32(beta, C[ci + col + 1], v1)
        C[ci + col] = out(v0); C[ci + col + 1] = out(v1)
    else:
        if col < N: C[ci + col] = out(fma32(beta, C[ci + col], v0) if beta != 0 else v0)
        if col + 1 < N: C[ci + col + 1] = out(fma32(beta, C[ci + col + 1], v1) if beta != 0 else v1)

def check_prefetch(p, g, m0, n0, c16):
    """the beta != 0 prefetch of a tile's C rows, per thread as the kernel computes it: byte addresses that walk each
    row's bytes of the tile (columns n0 .. min(n0 + BN, N)) 128 at a time from the first, each once"""
    M, N, ldc, Cg = p["m"][g], p["n"][g], p["ldc"], p["c"][g]
    eb = 2 if c16 else 4
    rows = {}
    for tid in range(THREADS):
        wg = tid >> 7; q = (tid >> 5) & 3; lane = tid & 31
        rowBase = m0 + wg * 64 + q * 16 + (lane >> 2)
        for h in range(2):
            row = rowBase + h * 8
            if row >= M: continue
            if not c16:
                cols = [n0 + l * 128 + (lane & 3) * 32 for l in range(BN // 128)]
                cols = [c for c in cols if c < N]
            else:
                cols = []
                for l in range((BN // 64 + 3) // 4):
                    line = 4 * l + (lane & 3); col = n0 + line * 64
                    if line < BN // 64 and col < N: cols.append(col)
            rows.setdefault(row, []).extend((Cg + row * ldc + c) * eb for c in cols)
    for row, addrs in rows.items():
        start = (Cg + row * ldc + n0) * eb; end = (Cg + row * ldc + min(n0 + BN, N)) * eb
        assert sorted(addrs) == list(range(start, end, 128)), "prefetch of row %d: %s, want %s" % (
            row, sorted(addrs)[:6], list(range(start, end, 128))[:6])

def group_of(p, t):
    lo, hi = 0, p["groups"] - 1
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if p["tileStart"][mid] <= t: lo = mid
        else: hi = mid - 1
    return lo

def tile_origin(p, g, t):
    tilesN = (p["n"][g] + BN - 1) // BN; local = t - p["tileStart"][g]
    return (local // tilesN) * BM, (local % tilesN) * BN

def cta(p, b, grid, TA, TB, Ag, Bg, C):
    """one persistent CTA (blockIdx.x = b of grid): tiles b, b + grid, ...; the ring of stages runs across tiles"""
    last = p["groups"] - 1
    total = p["tileStart"][last] + ((p["m"][last] + BM - 1) // BM) * ((p["n"][last] + BN - 1) // BN)
    lda, ldb = p["lda"], p["ldb"]
    aStep = BK * lda if TA else BK; bStep = BK if TB else BK * ldb
    smem = 1024 * 3  # a 1024-aligned ring start
    S = np.full((smem + STAGES * STAGE) // 2, NAN16, dtype=np.uint16)
    tag = [None] * STAGES  # the slice number each stage holds (the emulator's check of the ring's accounting)
    cur = dict(t=b)
    def seek():
        while cur["t"] < total:
            g = group_of(p, cur["t"])
            if p["k"][g] > 0:
                m0, n0 = tile_origin(p, g, cur["t"])
                cur.update(a=p["a"][g] + (m0 if TA else m0 * lda), b=p["b"][g] + (n0 * ldb if TB else n0),
                           aRows=p["m"][g] - m0, bRows=p["n"][g] - n0, K=p["k"][g],
                           numK=(p["k"][g] + BK - 1) // BK, kt=0)
                if p["bSplit"] > 0:  # the second block: K-major split relative to the tile's n0, MN-major to k 0
                    cur.update(b2=p["b2"][g] if TB else p["b2"][g] + n0,
                               bSplit=p["bSplit"] - n0 if TB else p["bSplit"])
                else:
                    cur.update(b2=cur["b"], bSplit=NO_SPLIT)
                return
            cur["t"] += grid
    seek()
    st = dict(fill=0, issued=0)
    busy = set()  # stages that in-flight wgmmas may still read (steps u and u - 1 at step u's fill)
    def issue():
        if cur["t"] < total:
            kLeft = cur["K"] - cur["kt"] * BK
            assert st["fill"] not in busy, "a fill overwrote a stage that a wgmma in flight still reads"
            as_ = smem + st["fill"] * STAGE; bs = as_ + A_BYTES
            S[as_ // 2: (as_ + STAGE) // 2] = NAN16
            a = cur["a"] + cur["kt"] * aStep
            if not TA: fill_kmajor(S, as_, Ag, a, a, NO_SPLIT, lda, cur["aRows"], kLeft, BM)
            else: fill_mnmajor(S, as_, Ag, a, a, NO_SPLIT, lda, kLeft, cur["aRows"], BM)
            if TB: fill_kmajor(S, bs, Bg, cur["b"] + cur["kt"] * bStep, cur["b2"] + cur["kt"] * bStep, cur["bSplit"],
                               ldb, cur["bRows"], kLeft, BN)
            else: fill_mnmajor(S, bs, Bg, cur["b"] + cur["kt"] * bStep, cur["b2"], cur["bSplit"] - cur["kt"] * BK,
                               ldb, kLeft, cur["bRows"], BN)
            tag[st["fill"]] = st["issued"]; st["issued"] += 1
            st["fill"] = 0 if st["fill"] + 1 == STAGES else st["fill"] + 1
            cur["kt"] += 1
            if cur["kt"] == cur["numK"]:
                cur["t"] += grid; seek()
    for _ in range(STAGES - 2): issue()
    mma = 0; u = 0; prev = None
    t = b
    while t < total:
        g = group_of(p, t); M, N, K = p["m"][g], p["n"][g], p["k"][g]; m0, n0 = tile_origin(p, g, t)
        acc = np.zeros((2, 64, BN), dtype=np.float64)
        for kt in range((K + BK - 1) // BK):
            assert tag[mma] == u, "step %d reads stage %d holding slice %s" % (u, mma, tag[mma])
            for wg in range(2):
                dA0 = desc(smem + wg * (BK * 128), BK * 128, 1024) if TA else desc(smem + wg * 64 * 128, 16, 1024)
                dB0 = desc(smem + A_BYTES, 16, 1024) if TB else desc(smem + A_BYTES, BK * 128, 1024)
                stage = (mma * STAGE) >> 4
                AK = 2048 if TA else 32; BKs = 32 if TB else 2048
                for kk in range(BK // 16):
                    a = bits_f32(read_operand(S, dA0 + stage + (kk * AK >> 4), 64, TA))
                    b_ = bits_f32(read_operand(S, dB0 + stage + (kk * BKs >> 4), BN, not TB))
                    assert not np.isnan(a).any() and not np.isnan(b_).any(), "a wgmma read an element no copy wrote"
                    acc[wg] += a.astype(np.float64) @ b_.astype(np.float64).T
            busy = {mma} | ({prev} if prev is not None else set())  # wgmma(u) and wgmma(u - 1) may be in flight
            issue()
            prev = mma  # after wait_group 1 only wgmma(u) may be in flight
            mma = 0 if mma + 1 == STAGES else mma + 1; u += 1
        prev = None; busy = set()  # wait_group 0 at the tile's end
        ldc = p["ldc"]; Cg = p["c"][g]; vecC = Cg % 2 == 0 and ldc % 2 == 0  # element offsets: 8 (4) bytes
        c16 = p.get("c16", False)
        if p["beta"] != 0: check_prefetch(p, g, m0, n0, c16)
        for tid in range(THREADS):
            wg = tid >> 7; q = (tid >> 5) & 3; lane = tid & 31
            # the m64nNk16 D fragment: d[4j + 2h + e] = D[16 q + lane/4 + 8 h][8 j + 2 (lane % 4) + e]
            d = np.empty(BN // 2)
            for j in range(BN // 8):
                for h in range(2):
                    for e in range(2):
                        d[4 * j + 2 * h + e] = acc[wg][16 * q + (lane >> 2) + 8 * h][8 * j + 2 * (lane & 3) + e]
            rowBase = m0 + wg * 64 + q * 16 + (lane >> 2); colBase = n0 + 2 * (lane & 3)
            for h in range(2):
                row = rowBase + h * 8
                if row < M:
                    for j in range(BN // 8):
                        store_pair(C, Cg + row * ldc, colBase + j * 8, N, d[4 * j + 2 * h], d[4 * j + 2 * h + 1],
                                   p["alpha"], p["beta"], vecC, c16)
        t += grid
    assert st["issued"] == u, "copies issued for %d slices, %d consumed" % (st["issued"], u)

def r8(x): return (x + 7) // 8 * 8

def run_case(TA, TB, m, n, k, alpha, beta, rng, split=0):
    """split > 0: B_g's stored rows [0, split) and [split, ...) packed as two separate blocks (b, b2), as
    Backend.groupedGemmSplitB passes the gate and up weights"""
    G = len(m)
    arows = [k[g] if TA else m[g] for g in range(G)]; acols = [m[g] if TA else k[g] for g in range(G)]
    brows = [n[g] if TB else k[g] for g in range(G)]; bcols = [k[g] if TB else n[g] for g in range(G)]
    lda = r8(max(acols + [1])) + 8; ldb = r8(max(bcols + [1])) + 8; ldc = max(n) + 3
    def pack(rows, cols, ld):
        offs, at, blocks = [], 8, []
        for g in range(len(rows)):
            offs.append(at); at += max(rows[g], 1) * ld + 16
        buf = np.full(at + 16, NAN16, dtype=np.uint16)
        for g in range(len(rows)):
            x = rng.uniform(-1, 1, (rows[g], cols[g])).astype(np.float32)
            for r in range(rows[g]):
                buf[offs[g] + r * ld: offs[g] + r * ld + r8(cols[g])] = 0
                buf[offs[g] + r * ld: offs[g] + r * ld + cols[g]] = bf16_bits(x[r])
            blocks.append(bits_f32(bf16_bits(x)).astype(np.float64))
        return buf, offs, blocks
    Ag, aOff, Ab = pack(arows, acols, lda)
    if split > 0:  # the second blocks after the first ones in the same buffer, each group's B_g their row stack
        assert all(brows[g] >= split for g in range(G) if m[g] > 0)
        Bg, offs, blocks = pack([split] * G + [max(brows[g] - split, 0) for g in range(G)], bcols + bcols, ldb)
        bOff, b2Off = offs[:G], offs[G:]
        Bb = [np.vstack([blocks[g], blocks[G + g]]) for g in range(G)]
    else:
        Bg, bOff, Bb = pack(brows, bcols, ldb); b2Off = [0] * G
    cOff, at = [], 1
    for g in range(G):
        if at % 2 == 0 and (g % 2 == 0): at += 1
        cOff.append(at); at += max(m[g], 1) * ldc + 5
    C0 = bits_f32(bf16_bits(rng.uniform(-1, 1, at + 8).astype(np.float32)))  # values a bf16 C holds too
    if beta == 0: C0[:] = np.nan
    want = C0.copy().astype(np.float64)
    for g in range(G):
        if m[g] == 0 or n[g] == 0: continue
        a = Ab[g].T if TA else Ab[g]; b = Bb[g].T if TB else Bb[g]
        prod = a @ b if k[g] > 0 else np.zeros((m[g], n[g]))
        for r in range(m[g]):
            old = C0[cOff[g] + r * ldc: cOff[g] + r * ldc + n[g]].astype(np.float64)
            want[cOff[g] + r * ldc: cOff[g] + r * ldc + n[g]] = alpha * prod[r] + (beta * old if beta != 0 else 0)
    def launch(c16):
        C = C0.copy()
        active = sorted([g for g in range(G) if m[g] > 0 and n[g] > 0], key=lambda g: -k[g])  # stable
        for s in range(0, len(active), MAXG):
            here = active[s:s + MAXG]; tiles = 0
            p = dict(lda=lda, ldb=ldb, ldc=ldc, groups=len(here), alpha=alpha, beta=beta, c16=c16, a=[], b=[], c=[],
                     m=[], n=[], k=[], tileStart=[], b2=[], bSplit=split)
            for g in here:
                p["a"].append(aOff[g]); p["b"].append(bOff[g]); p["c"].append(cOff[g]); p["b2"].append(b2Off[g])
                p["m"].append(m[g]); p["n"].append(n[g]); p["k"].append(k[g]); p["tileStart"].append(tiles)
                tiles += ((m[g] + BM - 1) // BM) * ((n[g] + BN - 1) // BN)
            grid = min(tiles, GRID) if GRID > 0 else tiles
            for b in range(grid):
                cta(p, b, grid, TA, TB, Ag, Bg, C)
        return C
    C = launch(False)
    C16 = launch(True)
    inside = np.zeros(len(C0), dtype=bool)
    for g in range(G):
        for r in range(m[g]): inside[cOff[g] + r * ldc: cOff[g] + r * ldc + n[g]] = True
    want16 = np.where(inside, bits_f32(bf16_bits(C)), C0)
    same = (want16.view(np.uint32) == C16.view(np.uint32)) | (np.isnan(want16) & np.isnan(C16))
    assert same.all(), "bf16 C differs from the f32 C rounded at %s" % np.nonzero(~same)[0][:5]
    bad = np.isnan(want) != np.isnan(C)
    assert not bad.any(), "NaN pattern differs (untouched elements written, or NaN leaked) at %s" % np.nonzero(bad)[0][:5]
    ok = ~np.isnan(want)
    err = np.abs(C[ok] - want[ok]).max() if ok.any() else 0
    scale = np.abs(want[ok]).max() if ok.any() else 1
    assert err <= 1e-5 * scale + 1e-5, "max error %g of scale %g" % (err, scale)
    return err

if __name__ == "__main__":
    rng = np.random.default_rng(1)
    cases = [([37, 0, 3, 130, 5], [40, 72, 129, 72, 200], [72, 50, 33, 150, 1]),
             ([1, 129, 64], [257, 8, 1], [0, 97, 16]),
             ([70, 20], [100, 30], [700, 260])]
    for TA in (False, True):
        for TB in (False, True):
            for m, n, k in cases:
                for alpha, beta in ((1.3, 0.5), (0.9, 0.0)):
                    err = run_case(TA, TB, m, n, k, alpha, beta, rng)
                    print("ok TA=%d TB=%d m=%s n=%s k=%s alpha=%.1f beta=%.1f: max error %.2e; bf16 C == f32 C rounded"
                          % (TA, TB, m, n, k, alpha, beta, err), flush=True)
    # B in two blocks (groupedGemmSplitB: no transA): splits inside a tile's n rows (NT: 100, 200, 300 against 256-wide
    # tiles) and inside K slices (NN: 100, 200 against 64-deep slices), a group exactly at the split, m = 0, k = 0
    split_cases = [(True, [37, 0, 130, 5, 64], [300, 300, 420, 200, 200], [72, 50, 150, 0, 129], 200),
                   (True, [129, 3], [100, 356], [97, 16], 100),
                   (True, [70], [600], [260], 300),
                   (False, [37, 0, 130, 5, 64], [40, 72, 129, 200, 8], [300, 300, 420, 200, 230], 200),
                   (False, [129, 3, 70], [257, 16, 100], [100, 356, 700], 100)]
    for TB, m, n, k, split in split_cases:
        for alpha, beta in ((1.3, 0.5), (0.9, 0.0)):
            err = run_case(False, TB, m, n, k, alpha, beta, rng, split)
            print("ok split=%d TB=%d m=%s n=%s k=%s alpha=%.1f beta=%.1f: max error %.2e; bf16 C == f32 C rounded"
                  % (split, TB, m, n, k, alpha, beta, err), flush=True)
    print("all cases match (GS_BN=%d, GS_STAGES=%d, GRID=%d)" % (BN, STAGES, GRID))
