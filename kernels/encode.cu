// fastpq GPU kernels for maps whose ids encode (category, instance): the pairs convention
// ((B, H, W, 2) [category, instance] maps, torchmetrics' layout) and the divisor convention
// (id = category * divisor + instance). They histogram such maps with pairs.cu's histogram,
// encoding each pixel to an int32 id as it is read, and derive the segment tables from the pair
// tables, so that these conventions need no segments_info and no host work (SPEC: segments come
// from the ids).
//
// Built at run time with NVRTC (CuPy RawModule, see fastpq/gpu/cupy_kernels.py) after pairs.cu,
// in one module: the fused kernel below reuses pairs.cu's histogram. kernels/gpu_layout.py
// holds its constants, tests/cuda_oracles.py a CPU emulation.
//
// Encoded id of a pixel: 0 for void (category == void_label), else
//     ((dense category index + 1) << inst_bits) | instance,
// with inst_bits = 31 - bit length of the number of categories, so ids stay in [0, 2^31).
// Ascending encoded ids order segments by category, then instance, as the host's ids do within
// a category; the matcher's per-category sums therefore come in the host's order.

// status bits beside pairs.cu's (kernels/gpu_layout.py names them all); STATUS_ID_OUT_OF_RANGE
// (pairs.cu) also flags a category or instance outside [0, 2^31)
#define STATUS_CATEGORY_UNKNOWN 32      // a category neither in the table nor the void label
#define STATUS_INSTANCE_TOO_LARGE 64    // an instance id >= 2^inst_bits

#define MODE_PAIRS 0
#define MODE_DIVISOR 1

__device__ __forceinline__ int encode_pixel(long long category, long long instance,
                                            long long void_label, const int* __restrict__ lut,
                                            long long lut_size, int inst_bits, int& bad)
{
    if (category == void_label) {
        return 0;
    }
    const int dense = (category >= 0 && category < lut_size) ? lut[category] : -1;
    if (dense < 0) {
        bad |= STATUS_CATEGORY_UNKNOWN;
        return 0;
    }
    if (instance >> inst_bits) {
        bad |= STATUS_INSTANCE_TOO_LARGE;
        return 0;
    }
    return ((dense + 1) << inst_bits) | (int)instance;
}

template <typename T>
__device__ __forceinline__ int encode_at(const T* __restrict__ map, long long i, int mode,
                                         long long divisor, long long void_label,
                                         const int* __restrict__ lut, long long lut_size,
                                         int inst_bits, int& bad)
{
    long long category, instance;
    if (mode == MODE_PAIRS) {
        category = (long long)map[2 * i];
        instance = (long long)map[2 * i + 1];
        if ((category | instance) < 0 || ((category | instance) >> 31)) {
            bad |= STATUS_ID_OUT_OF_RANGE;
            return 0;
        }
    } else {
        const long long id = (long long)map[i];
        if (id < 0) {
            bad |= STATUS_ID_OUT_OF_RANGE;
            return 0;
        }
        category = (long long)((unsigned long long)id / (unsigned long long)divisor);
        instance = id - category * divisor;
    }
    return encode_pixel(category, instance, void_label, lut, lut_size, inst_bits, bad);
}

// ---------------------------------------------------------------------------------------------
// The pair histogram of encoded maps in one pass: pairs.cu's histogram_tile with a reader that
// encodes each pixel as it is read (no id maps are written). Grid and tables as pair_histogram_*;
// the encoding's status bits go into the tables' status.
// ---------------------------------------------------------------------------------------------

template <typename T>
struct EncodedReader {
    const T* g;
    const T* p;
    int mode;
    long long divisor;
    long long void_label;
    const int* lut;
    long long lut_size;
    int inst_bits;
    int bad;
    static constexpr bool kVec4 = false;

    __device__ __forceinline__ u64 pixel(long long i)
    {
        const int a = encode_at(g, i, mode, divisor, void_label, lut, lut_size, inst_bits, bad);
        const int b = encode_at(p, i, mode, divisor, void_label, lut, lut_size, inst_bits, bad);
        return pair_key(a, b);
    }

    __device__ __forceinline__ void quad(long long, u64 (&)[4]) {}

    __device__ __forceinline__ int status_bits() const { return bad; }
};

template <typename T>
__device__ __forceinline__ void encoded_histogram(
    const T* __restrict__ gt, const T* __restrict__ pred, long long n_pixels,
    long long tile_pixels, int mode, long long divisor, long long void_label,
    const int* __restrict__ lut, long long lut_size, int inst_bits, u64* __restrict__ table_keys,
    u64* __restrict__ table_counts, int cap_log2, int* __restrict__ status)
{
    __shared__ u64 s_keys[FASTPQ_SHARED_SLOTS];
    __shared__ u32 s_counts[FASTPQ_SHARED_SLOTS];
    const long long offset = blockIdx.y * n_pixels * (mode == MODE_PAIRS ? 2 : 1);
    EncodedReader<T> reader{gt + offset, pred + offset, mode, divisor, void_label, lut,
                            lut_size, inst_bits, 0};
    histogram_tile(reader, n_pixels, tile_pixels, 0, table_keys, table_counts, cap_log2, status,
                   s_keys, s_counts);
}

extern "C" __global__ void __launch_bounds__(FASTPQ_BLOCK_THREADS)
pair_histogram_encoded_i32(const int* __restrict__ gt, const int* __restrict__ pred,
                           long long n_pixels, long long tile_pixels, int mode,
                           long long divisor, long long void_label, const int* __restrict__ lut,
                           long long lut_size, int inst_bits, u64* __restrict__ table_keys,
                           u64* __restrict__ table_counts, int cap_log2, int* __restrict__ status)
{
    encoded_histogram<int>(gt, pred, n_pixels, tile_pixels, mode, divisor, void_label, lut,
                           lut_size, inst_bits, table_keys, table_counts, cap_log2, status);
}

extern "C" __global__ void __launch_bounds__(FASTPQ_BLOCK_THREADS)
pair_histogram_encoded_i64(const long long* __restrict__ gt, const long long* __restrict__ pred,
                           long long n_pixels, long long tile_pixels, int mode,
                           long long divisor, long long void_label, const int* __restrict__ lut,
                           long long lut_size, int inst_bits, u64* __restrict__ table_keys,
                           u64* __restrict__ table_counts, int cap_log2, int* __restrict__ status)
{
    encoded_histogram<long long>(gt, pred, n_pixels, tile_pixels, mode, divisor, void_label,
                                 lut, lut_size, inst_bits, table_keys, table_counts, cap_log2,
                                 status);
}

// ---------------------------------------------------------------------------------------------
// Segment tables from sorted pair tables: grid (B), FASTPQ_MATCH_THREADS threads.
// GT segments: the distinct non-zero gt ids, ascending (the pair table is sorted by gt id).
// Predicted segments: the distinct non-zero pred ids, in order of first appearance.
// Category: (id >> inst_bits) - 1. A GT segment is a crowd region when crowd_rule is set, its
// category is a thing (is_thing) and its instance is 0 (the Cityscapes convention).
// first (B, cap) int32 is scratch. Rows have the pair tables' capacity as stride.
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(FASTPQ_MATCH_THREADS)
derive_segment_tables(const int* __restrict__ pair_gt, const int* __restrict__ pair_pred,
                      const int* __restrict__ n_pairs, int cap_log2, int inst_bits,
                      const int* __restrict__ is_thing, int crowd_rule,
                      int* __restrict__ first, int* __restrict__ gt_id,
                      int* __restrict__ gt_category, int* __restrict__ gt_iscrowd,
                      int* __restrict__ n_gt, int* __restrict__ pred_id,
                      int* __restrict__ pred_category, int* __restrict__ n_pred)
{
    const long long row = (long long)blockIdx.x << cap_log2;
    const int np = n_pairs[blockIdx.x];
    const int instance_mask = (1 << inst_bits) - 1;

    for (int i = threadIdx.x; i < np; i += blockDim.x) {
        const int p = pair_pred[row + i];
        int is_first = p != 0;
        for (int j = 0; j < i && is_first; ++j) {
            is_first = pair_pred[row + j] != p;
        }
        first[row + i] = is_first;
    }
    __syncthreads();
    if (threadIdx.x != 0) {
        return;
    }
    int ng = 0;
    int nq = 0;
    for (int i = 0; i < np; ++i) {
        const int g = pair_gt[row + i];
        if (g != 0 && (i == 0 || pair_gt[row + i - 1] != g)) {
            const int category = (g >> inst_bits) - 1;
            gt_id[row + ng] = g;
            gt_category[row + ng] = category;
            gt_iscrowd[row + ng] = crowd_rule && is_thing[category] && (g & instance_mask) == 0;
            ++ng;
        }
        if (first[row + i]) {
            const int p = pair_pred[row + i];
            pred_id[row + nq] = p;
            pred_category[row + nq] = (p >> inst_bits) - 1;
            ++nq;
        }
    }
    n_gt[blockIdx.x] = ng;
    n_pred[blockIdx.x] = nq;
}
