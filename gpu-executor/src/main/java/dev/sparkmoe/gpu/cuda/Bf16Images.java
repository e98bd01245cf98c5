package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;

/**
 * The registry of bf16 images: bf16 values that stand for f32 elements of a tensor not written yet. What remains of
 * them is the multi-GPU bf16 wire: its all-gathers ({@code Bf16WireGather}) leave the gathered f32 parameters so
 * ({@link #adopt}): FSDP's bf16 param dtype computes from bf16 values anyway, so the grouped GEMM reads an image in
 * place of rounding the f32 weights into a copy at every call, and the widening pass back to f32 runs only if
 * something reads the f32 values: {@link DeviceBuffer#address()}, which every f32 access goes through, widens the
 * images into place first ({@link #materialize}). A tensor wholly held by images gives its f32 block back until they
 * are widened. (The experts' activations are real BF16 tensors instead, {@link CudaBackend#emptyGemmOperand}.)
 * Called under the backend's lock.
 */
final class Bf16Images {
    private final CudaDevice device;
    private final CudaMemory memory;
    private final Bf16Parts parts;
    private long imagesAdopted; // images taken so far (tests)
    private long imagesWidened; // images written out to f32 so far (tests)
    private long imageOperands; // grouped GEMM operands read from an image (tests)

    /**
     * A bf16 image: {@code count} bf16 values at device address {@code address} (inside {@code scratch}) that stand
     * for f32 elements {@code [element, element + count)} of {@code target}, which are not written yet.
     */
    record Image(DeviceBuffer target, long element, long count, DeviceBuffer scratch, long address) {
        boolean overlaps(long from, long n) {
            return from < element + count && element < from + n;
        }
    }

    Bf16Images(CudaDevice device, CudaMemory memory, Bf16Parts parts) {
        this.device = device;
        this.memory = memory;
        this.parts = parts;
    }

    /** See {@link CudaBackend#adoptBf16Images}. */
    void adopt(Tensor[] target, long[] off, long[] src, long[] n, Tensor scratch) {
        if (target.length != off.length || target.length != src.length || target.length != n.length) {
            throw new IllegalArgumentException("adoptBf16Images: " + target.length + " targets, " + off.length
                    + " offsets, " + src.length + " sources and " + n.length + " lengths");
        }
        DeviceBuffer s = memory.buf(scratch, "bf16 image scratch");
        if (s.images != null || s.imagesIn != null) {
            throw new IllegalArgumentException("adoptBf16Images: the scratch " + s + " already holds images");
        }
        DeviceBuffer[] t = new DeviceBuffer[target.length];
        for (int i = 0; i < target.length; i++) { // every part checked before any is taken
            if (n[i] <= 0) {
                continue;
            }
            t[i] = memory.buf(target[i], "bf16 image target " + i);
            if (!target[i].dtype().isFloating() || off[i] < 0 || off[i] + n[i] > target[i].numel()) {
                throw new IllegalArgumentException("adoptBf16Images: part " + i + " is elements [" + off[i] + ", "
                        + (off[i] + n[i]) + ") of " + target[i] + ", which is not an f32 range of it");
            }
            if (src[i] < s.rawAddress() || src[i] + 2 * n[i] > s.rawAddress() + s.bytes()) {
                throw new IllegalArgumentException("adoptBf16Images: part " + i + "'s " + n[i] + " values at 0x"
                        + Long.toHexString(src[i]) + " do not lie inside the scratch " + s);
            }
            for (int j = 0; j < i; j++) {
                if (t[j] == t[i] && off[j] < off[i] + n[i] && off[i] < off[j] + n[j]) {
                    throw new IllegalArgumentException("adoptBf16Images: parts " + j + " and " + i
                            + " overlap in " + target[i] + "; one gather writes each element once");
                }
            }
        }
        List<Image> made = new ArrayList<>();
        for (int i = 0; i < target.length; i++) {
            if (t[i] == null) {
                continue;
            }
            if (t[i].images != null) {
                final long from = off[i], len = n[i];
                if (t[i].images.stream().anyMatch(img -> img.overlaps(from, len))) {
                    materialize(t[i]);
                }
            }
            Image img = new Image(t[i], off[i], n[i], s, src[i]);
            if (t[i].images == null) {
                t[i].images = new ArrayList<>(2);
            }
            t[i].images.add(img);
            made.add(img);
        }
        imagesAdopted += made.size();
        if (made.isEmpty()) {
            memory.release(s);
            return;
        }
        s.imagesIn = made;
        for (Image img : made) { // a target wholly held by images needs no f32 memory until they are widened
            DeviceBuffer b = img.target();
            long held = 0;
            for (Image i : b.images) {
                held += i.count();
            }
            if (b.backed && held * 4 == b.bytes()) {
                memory.releaseBlock(b);
            }
        }
    }

    /**
     * Widens every image of {@code b} into its f32 range and lets them go; called by {@link DeviceBuffer#address()}
     * before the f32 values are used. The other images in the same scratch buffers (the rest of one gather: the
     * parameters of one FSDP unit, which are read together) are widened in the same launch, on the backend's stream.
     */
    void materialize(DeviceBuffer b) {
        if (b.images == null) {
            return;
        }
        java.util.LinkedHashSet<Image> all = new java.util.LinkedHashSet<>();
        for (Image img : b.images) {
            all.add(img);
            if (img.scratch().imagesIn != null) {
                all.addAll(img.scratch().imagesIn);
            }
        }
        device.enterThread();
        int count = all.size();
        long[] src = new long[count], dst = new long[count], len = new long[count];
        int i = 0;
        for (Image img : all) {
            DeviceBuffer t = img.target();
            if (!t.backed) { // gave its block back to its images: a new one for the widened values
                long[] block = new long[1];
                long address = memory.allocateBlock(t.bytes(), block);
                t.rebind(address, block[0]);
            }
            t.images.remove(img);
            if (t.images.isEmpty()) {
                t.images = null;
            }
            src[i] = img.address();
            dst[i] = t.rawAddress() + 4 * img.element();
            len[i] = img.count();
            i++;
        }
        parts.widen(src, dst, len, device.stream());
        imagesWidened += count;
        for (Image img : all) {
            dropImage(img); // stream-ordered after the widening that read it
        }
    }

    /** Takes an image out of its scratch, which goes back to the allocator with its last image. */
    private void dropImage(Image img) {
        DeviceBuffer s = img.scratch();
        if (s.imagesIn == null) {
            return;
        }
        s.imagesIn.remove(img);
        if (s.imagesIn.isEmpty()) {
            s.imagesIn = null;
            if (!s.released) {
                memory.free(s); // its scope (if any) skips it once released
            }
        }
    }

    /**
     * {@code b} is being released ({@link CudaMemory#free}, already marked released): images that live in it are
     * written out first, queued before its memory goes back; its own images go, their scratch with the last of them.
     */
    void released(DeviceBuffer b) {
        if (b.imagesIn != null) {
            // a bf16 scratch freed while images still live in it (its scope closed first): write them out now,
            // queued before the memory goes back to the allocator
            for (Image img : new ArrayList<>(b.imagesIn)) {
                if (img.target().images != null && !img.target().released) {
                    materialize(img.target());
                }
            }
            b.imagesIn = null;
        }
        if (b.images != null) { // released unread: the images go, their scratch with the last of them
            List<Image> gone = b.images;
            b.images = null;
            for (Image img : gone) {
                dropImage(img);
            }
        }
    }

    /** The grouped GEMM read an operand from an image (tests count them). */
    void countOperandRead() {
        imageOperands++;
    }

    /** Images adopted, images widened, grouped GEMM operands read from images, so far (tests). */
    long[] counts() {
        return new long[] {imagesAdopted, imagesWidened, imageOperands};
    }
}
