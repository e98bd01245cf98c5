package dev.sparkmoe.core.backend;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/**
 * The SwiGLU ops on column blocks of a wider tensor ({@link Backend#siluMulForward}, {@link Backend#siluMulBackward}
 * with a row stride): the values of the contiguous call on the same numbers, bit for bit, every element outside the
 * blocks untouched; and the geometry that does not fit refused with the values named ({@link SiluMulBlocks}).
 */
class SiluMulBlocksTest {
    private final CpuBackend be = new CpuBackend();

    /** Rows of {@code cols} values from column {@code col} of a [rows, ld] array. */
    private static float[] columns(float[] src, int off, int rows, int cols, int ld) {
        float[] out = new float[rows * cols];
        for (int r = 0; r < rows; r++) {
            System.arraycopy(src, off + r * ld, out, r * cols, cols);
        }
        return out;
    }

    /**
     * gate at column 0 and up at column cols of one [rows, ld] tensor (the experts' [rows, 2I] layout where ld =
     * 2 * cols, padded rows where ld is larger), against the same values in contiguous tensors.
     */
    private void stridedEqualsContiguous(int rows, int cols, int ld, int base) {
        String what = rows + " x " + cols + ", ld " + ld + ", at " + base;
        Rand r = new Rand(rows * 31 + cols);
        int len = base + rows * ld;
        float[] gu = r.floats(len, 6);
        float[] dOutF = r.floats(rows * cols, 1);
        int gateOff = base;
        int upOff = base + cols;
        float[] gate = columns(gu, gateOff, rows, cols, ld);
        float[] up = columns(gu, upOff, rows, cols, ld);

        Tensor flatOut = Tensor.zeros(DType.F32, rows, cols);
        be.siluMulForward(Tensor.of(gate, rows, cols), 0, Tensor.of(up, rows, cols), 0, rows, cols, cols, flatOut);
        Tensor out = Tensor.zeros(DType.F32, rows, cols);
        Tensor guT = Tensor.of(gu.clone(), len);
        be.siluMulForward(guT, gateOff, guT, upOff, rows, cols, ld, out);
        assertArrayEquals(flatOut.floats(), out.floats(), "forward " + what);
        assertArrayEquals(gu, guT.floats(), "forward wrote into its inputs, " + what);

        Tensor flatDg = Tensor.zeros(DType.F32, rows, cols);
        Tensor flatDu = Tensor.zeros(DType.F32, rows, cols);
        be.siluMulBackward(Tensor.of(dOutF, rows, cols), Tensor.of(gate, rows, cols), 0, Tensor.of(up, rows, cols),
                0, rows, cols, cols, flatDg, flatDu);
        float[] fill = r.floats(len, 3);
        Tensor dGu = Tensor.of(fill.clone(), len);
        be.siluMulBackward(Tensor.of(dOutF, rows, cols), guT, gateOff, guT, upOff, rows, cols, ld, dGu, dGu);
        float[] d = dGu.floats();
        assertArrayEquals(flatDg.floats(), columns(d, gateOff, rows, cols, ld), "dGate " + what);
        assertArrayEquals(flatDu.floats(), columns(d, upOff, rows, cols, ld), "dUp " + what);
        for (int i = 0; i < len; i++) { // outside both blocks: as it was
            int inRow = (i - base) % ld;
            boolean written = i >= base && inRow < 2 * cols;
            if (!written) {
                assertEquals(fill[i], d[i], "element " + i + " outside the blocks written, " + what);
            }
        }
    }

    @Test
    void columnBlocksGiveTheContiguousValuesBitForBit() {
        stridedEqualsContiguous(5, 8, 16, 0);     // [rows, 2I]
        stridedEqualsContiguous(7, 6, 15, 3);     // padded rows, an offset
        stridedEqualsContiguous(96, 48, 96, 0);   // large enough to run in parallel chunks that start mid-row
        stridedEqualsContiguous(1, 40, 80, 2);    // one row
    }

    @Test
    void separateTensorsWithTheirOwnOffsets() {
        // DenseMlp's form (ld = cols, offset 0) and gate and up in two tensors at different offsets
        Rand r = new Rand(3);
        int rows = 4;
        int cols = 5;
        int ld = 9;
        float[] g = r.floats(2 + rows * ld, 6);
        float[] u = r.floats(7 + rows * ld, 2);
        Tensor out = Tensor.zeros(DType.F32, rows, cols);
        be.siluMulForward(Tensor.of(g, g.length), 2, Tensor.of(u, u.length), 7, rows, cols, ld, out);
        Tensor ref = Tensor.zeros(DType.F32, rows, cols);
        be.siluMulForward(Tensor.of(columns(g, 2, rows, cols, ld), rows * cols), 0,
                Tensor.of(columns(u, 7, rows, cols, ld), rows * cols), 0, rows, cols, cols, ref);
        assertArrayEquals(ref.floats(), out.floats());
        float gate = g[2 + ld + 3];
        float expected = gate * (float) (1.0 / (1.0 + Math.exp(-gate))) * u[7 + ld + 3];
        assertEquals(expected, out.floats()[cols + 3], "row 1, column 3: silu(gate) * up in f32");
    }

    @Test
    void emptyBlocksDoNothing() {
        Tensor t = Tensor.of(new float[] {1, 2, 3}, 3);
        be.siluMulForward(t, 0, t, 0, 0, 3, 3, Tensor.zeros(DType.F32, 1));
        be.siluMulBackward(t, t, 0, t, 0, 3, 0, 0, Tensor.zeros(DType.F32, 3), Tensor.zeros(DType.F32, 3));
        assertArrayEquals(new float[] {1, 2, 3}, t.floats());
    }

    private static void refused(Executable call, String... parts) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call);
        for (String p : parts) {
            assertTrue(e.getMessage().contains(p), "'" + p + "' in: " + e.getMessage());
        }
    }

    @Test
    void geometryThatDoesNotFitIsRefusedWithItsValues() {
        Tensor gu = Tensor.zeros(DType.F32, 4, 16);
        Tensor out = Tensor.zeros(DType.F32, 4, 8);
        refused(() -> be.siluMulForward(gu, 0, gu, 8, 4, 8, 7, out), "ld (7)", "row of 8", "ld >= cols");
        refused(() -> be.siluMulForward(gu, 0, gu, 9, 4, 8, 16, out), "up block", "at element 9",
                "[9, 65)", "64 elements");
        refused(() -> be.siluMulForward(gu, -1, gu, 8, 4, 8, 16, out), "gate block", "at element -1");
        refused(() -> be.siluMulForward(gu, 0, gu, 8, 4, 8, 16, Tensor.zeros(DType.F32, 31)), "out",
                "4 x 8 = 32");
        refused(() -> be.siluMulForward(gu, 0, gu, 8, -2, 8, 16, out), "rows (-2)");
        refused(() -> be.siluMulForward(gu, 0, gu, 8, 4, 8, 16, gu), "out is the gate tensor",
                "row stride 16");
        Tensor dOut = Tensor.zeros(DType.F32, 4, 8);
        Tensor dGu = Tensor.zeros(DType.F32, 4, 16);
        refused(() -> be.siluMulBackward(dOut, gu, 0, gu, 4, 4, 8, 16, dGu, dGu), "dGate (at element 0)",
                "dUp (at element 4)", "overlap", "disjoint column blocks");
        // dGate written over the gate it reads (in place) is fine, over an overlapping up block is not
        refused(() -> be.siluMulBackward(dOut, gu, 0, gu, 4, 4, 8, 16, gu, Tensor.zeros(DType.F32, 64)),
                "dGate (at element 0) overlaps up (at element 4)");
        refused(() -> be.siluMulBackward(Tensor.zeros(DType.F32, 8), gu, 0, gu, 8, 4, 8, 16, dGu, dGu), "dOut");
        refused(() -> be.siluMulBackward(dOut, gu, 0, gu, 8, 4, 8, 16, dGu, Tensor.zeros(DType.F32, 60)),
                "dUp block", "[8, 64)", "60 elements");
        // in place where each element is read and written at one place
        Tensor g = Tensor.of(new float[] {1, -2, 0.5f}, 3);
        Tensor u = Tensor.of(new float[] {2, 3, 4}, 3);
        Tensor ref = Tensor.zeros(DType.F32, 3);
        be.siluMulForward(g, 0, u, 0, 1, 3, 3, ref);
        be.siluMulForward(g, 0, u, 0, 1, 3, 3, g);
        assertArrayEquals(ref.floats(), g.floats(), "in place");
    }

    @Test
    void overlapOfColumnBlocks() {
        // two blocks of 3 rows of 4 values, row stride 10
        assertTrue(SiluMulBlocks.overlap(0, 0, 3, 4, 10));
        assertTrue(SiluMulBlocks.overlap(0, 3, 3, 4, 10), "column 3 of row 0");
        assertFalse(SiluMulBlocks.overlap(0, 4, 3, 4, 10), "side by side");
        assertFalse(SiluMulBlocks.overlap(0, 6, 3, 4, 10), "b's row r ends at 10 r + 10, where a's row r + 1 starts");
        assertTrue(SiluMulBlocks.overlap(0, 7, 3, 4, 10), "b's row 0 runs into a's row 1");
        assertTrue(SiluMulBlocks.overlap(0, 23, 3, 4, 10), "b's row 0 is in a's row 2");
        assertFalse(SiluMulBlocks.overlap(0, 30, 3, 4, 10), "b starts after a's last row");
        assertFalse(SiluMulBlocks.overlap(0, 27, 3, 4, 10), "b's row 0 runs into a's row 3, which a has not");
        assertFalse(SiluMulBlocks.overlap(27, 0, 3, 4, 10), "symmetric");
        assertTrue(SiluMulBlocks.overlap(23, 0, 3, 4, 10), "symmetric");
        assertFalse(SiluMulBlocks.overlap(0, 8, 1, 8, 8), "one row: [0, 8) and [8, 16)");
    }
}
