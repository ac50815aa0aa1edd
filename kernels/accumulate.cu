// fastpq GPU kernel: device-side accumulation of the matcher's per-image partials into the
// streaming metric's running sums (fastpq/gpu/device_state.py), with the host accumulator's
// arithmetic, so that a metric fed on the GPU ends with the bits of one fed on the host.
//
// Built at run time with NVRTC (CuPy RawModule, see fastpq/gpu/cupy_kernels.py), like pairs.cu.
//
// The host accumulator (fastpq/core/accumulator.py, PQAccumulator.add_image) adds one image at a
// time:
// int64 tp/fp/fn, and the IoU sums as a double-double (iou, iou_err) updated by one TwoSum per
// image and category:
//     s = iou + x;  bb = s - iou;  err = (iou - (s - bb)) + (x - bb);  iou = s;  iou_err += err.
// Here one thread owns one category and walks the batch's rows in image order doing exactly that
// (additions and subtractions only: no FMA contraction can apply, and CUDA double arithmetic is
// IEEE round-to-nearest, so every intermediate is the host's).
//
// A batch in which any image has a status bit (pairs.cu STATUS_*) adds nothing, as a host update
// with a refused image adds nothing; record (int64[RECORD_FIELDS]) keeps what the host needs to
// raise the error later, at compute():
//   record[0] refused updates         record[1] the first refused update's number
//   record[2] its first bad image     record[3] that image's status bits
//   record[4] OR of every status bit  record[5] images of the refused updates
//
// Grid: ceil(n_categories / FASTPQ_ACCUMULATE_THREADS) blocks of FASTPQ_ACCUMULATE_THREADS.

#ifndef FASTPQ_ACCUMULATE_THREADS
#define FASTPQ_ACCUMULATE_THREADS 128
#endif

extern "C" __global__ void __launch_bounds__(FASTPQ_ACCUMULATE_THREADS)
accumulate_partials(const long long* __restrict__ batch_tp,
                    const long long* __restrict__ batch_fp,
                    const long long* __restrict__ batch_fn,
                    const double* __restrict__ batch_iou, const int* __restrict__ status,
                    int n_images, int n_categories, long long update,
                    long long* __restrict__ tp, long long* __restrict__ fp,
                    long long* __restrict__ fn, double* __restrict__ iou,
                    double* __restrict__ iou_err, long long* __restrict__ record)
{
    // every thread scans the (few) status words: no inter-block communication is needed
    int first_bad = -1;
    int bits = 0;
    for (int b = 0; b < n_images; ++b) {
        const int s = status[b];
        if (s != 0) {
            if (first_bad < 0) {
                first_bad = b;
            }
            bits |= s;
        }
    }
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (first_bad >= 0) {
        if (c == 0) {
            if (record[0] == 0) {
                record[1] = update;
                record[2] = first_bad;
                record[3] = status[first_bad];
            }
            record[0] += 1;
            record[4] |= bits;
            record[5] += n_images;
        }
        return;
    }
    if (c >= n_categories) {
        return;
    }
    long long t = tp[c], f = fp[c], n = fn[c];
    double sum = iou[c], err_sum = iou_err[c];
    for (int b = 0; b < n_images; ++b) {
        const long long at = (long long)b * n_categories + c;
        t += batch_tp[at];
        f += batch_fp[at];
        n += batch_fn[at];
        const double x = batch_iou[at];
        const double s = sum + x;
        const double bb = s - sum;
        const double err = (sum - (s - bb)) + (x - bb);
        sum = s;
        err_sum += err;
    }
    tp[c] = t;
    fp[c] = f;
    fn[c] = n;
    iou[c] = sum;
    iou_err[c] = err_sum;
}
