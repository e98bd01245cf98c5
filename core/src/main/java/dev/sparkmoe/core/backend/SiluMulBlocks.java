package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.Tensor;

/**
 * The row geometry of {@link Backend#siluMulForward} and {@link Backend#siluMulBackward}, checked before anything is
 * written: [rows, cols] blocks with one row stride {@code ld} for gate, up, dGate and dUp (each at its element offset),
 * contiguous out and dOut. Every backend calls these, so that the CPU and a device refuse the same arguments with the
 * same message, naming the value that does not fit.
 */
public final class SiluMulBlocks {
    private SiluMulBlocks() {
    }

    /** Checks {@link Backend#siluMulForward}'s arguments. */
    public static void checkForward(Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols, int ld,
                                    Tensor out) {
        String op = "siluMulForward";
        if (!shape(op, rows, cols, ld)) {
            return;
        }
        block(op, "gate", gate, gateOff, rows, cols, ld);
        block(op, "up", up, upOff, rows, cols, ld);
        contiguous(op, "out", out, rows, cols);
        inPlaceOnly(op, "out", out, "gate", gate, gateOff, cols, ld);
        inPlaceOnly(op, "out", out, "up", up, upOff, cols, ld);
    }

    /** Checks {@link Backend#siluMulBackward}'s arguments. */
    public static void checkBackward(Tensor dOut, Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols,
                                     int ld, Tensor dGate, Tensor dUp) {
        String op = "siluMulBackward";
        if (!shape(op, rows, cols, ld)) {
            return;
        }
        contiguous(op, "dOut", dOut, rows, cols);
        block(op, "gate", gate, gateOff, rows, cols, ld);
        block(op, "up", up, upOff, rows, cols, ld);
        block(op, "dGate", dGate, gateOff, rows, cols, ld);
        block(op, "dUp", dUp, upOff, rows, cols, ld);
        if (dGate == dUp && overlap(gateOff, upOff, rows, cols, ld)) {
            throw new IllegalArgumentException(op + ": dGate (at element " + gateOff + ") and dUp (at element " + upOff
                    + ") are blocks of one tensor " + dGate + " that overlap with " + rows + " rows of " + cols
                    + " values and row stride " + ld + "; give them disjoint column blocks (e.g. offsets 0 and cols "
                    + "of a [rows, 2 * cols] tensor with ld = 2 * cols) or two tensors");
        }
        // an output may be an input only where each element is read and written at the same place
        String[] outNames = {"dGate", "dUp"};
        Tensor[] outs = {dGate, dUp};
        int[] outOffs = {gateOff, upOff};
        String[] inNames = {"gate", "up"};
        Tensor[] ins = {gate, up};
        int[] inOffs = {gateOff, upOff};
        for (int o = 0; o < 2; o++) {
            inPlaceOnly(op, outNames[o], outs[o], "dOut", dOut, 0, cols, cols);
            for (int i = 0; i < 2; i++) {
                if (outs[o] == ins[i] && outOffs[o] != inOffs[i] && overlap(outOffs[o], inOffs[i], rows, cols, ld)) {
                    throw new IllegalArgumentException(op + ": " + outNames[o] + " (at element " + outOffs[o]
                            + ") overlaps " + inNames[i] + " (at element " + inOffs[i] + ") in " + ins[i]
                            + " at other positions; write the gradients into another tensor");
                }
            }
        }
    }

    /** Checks the dimensions; false where the blocks are empty (nothing to do). */
    private static boolean shape(String op, int rows, int cols, int ld) {
        if (rows < 0 || cols < 0) {
            throw new IllegalArgumentException(op + ": rows (" + rows + ") and cols (" + cols + ") must not be "
                    + "negative");
        }
        if (ld < cols) {
            throw new IllegalArgumentException(op + ": the row stride ld (" + ld + ") is shorter than a row of " + cols
                    + " values, so rows would overlap; pass ld >= cols (ld = cols for contiguous blocks)");
        }
        if ((long) rows * cols > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(op + ": " + rows + " rows of " + cols + " values are more than "
                    + Integer.MAX_VALUE + " elements; split the call by rows");
        }
        return rows > 0 && cols > 0;
    }

    /** A [rows, cols] block of row stride ld at element off lies inside {@code t}. */
    private static void block(String op, String name, Tensor t, int off, int rows, int cols, int ld) {
        long end = off + (long) (rows - 1) * ld + cols;
        if (off < 0 || end > t.numel()) {
            throw new IllegalArgumentException(op + ": the " + name + " block of " + rows + " rows of " + cols
                    + " values with row stride " + ld + " at element " + off + " spans [" + off + ", " + end
                    + "), outside the " + t.numel() + " elements of " + t + "; check the offset and ld");
        }
    }

    private static void contiguous(String op, String name, Tensor t, int rows, int cols) {
        if (t.numel() < (long) rows * cols) {
            throw new IllegalArgumentException(op + ": " + name + " " + t + " holds fewer than the " + rows + " x "
                    + cols + " = " + (long) rows * cols + " values of its contiguous [rows, cols] block");
        }
    }

    /** An output that is also an input must put every element where the input holds it (an in-place update). */
    private static void inPlaceOnly(String op, String outName, Tensor out, String inName, Tensor in, int inOff,
                                    int cols, int ld) {
        if (out == in && (inOff != 0 || ld != cols)) {
            throw new IllegalArgumentException(op + ": " + outName + " is the " + inName + " tensor " + in
                    + ", read at element " + inOff + " with row stride " + ld + " but written contiguously from 0; "
                    + "write it into another tensor");
        }
    }

    /** Whether two [rows, cols] blocks of row stride ld at elements a and b of one tensor share an element. */
    static boolean overlap(long a, long b, int rows, int cols, int ld) {
        long d = Math.abs(a - b);
        long q = d / ld; // whole rows between the two starts
        long rem = d % ld;
        return (q <= rows - 1 && rem < cols) || (q + 1 <= rows - 1 && ld - rem < cols);
    }
}
