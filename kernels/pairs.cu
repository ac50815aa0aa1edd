// fastpq GPU kernels: the (gt_id, pred_id) pair histogram of a batch of label maps, its
// compaction into sorted per-image pair tables, and the per-image matcher (SPEC §2.3-2.5).
//
// Built at run time with NVRTC (CuPy RawModule, see fastpq/gpu/cupy_kernels.py): no host
// headers, extern "C" entry points. The sizes below can be overridden with -D options;
// fastpq/gpu/cupy_kernels.py passes the values of kernels/gpu_layout.py. tests/cuda_oracles.py
// holds a CPU emulation of this file's work split.
//
// Data layout (B images of N = H*W pixels each, C-contiguous):
//   gt, pred          (B, N) int32 (or int64) label maps; ids must lie in [0, 2^31).
//   table_keys        (B, cap) uint64, key = gt << 32 | pred, EMPTY_KEY = empty slot.
//   table_counts      (B, cap) uint64 pixel counts of the keys.
//   pair_gt/pred      (B, cap) int32, pair_count (B, cap) int64: the first n_pairs[b] entries of
//                     row b are image b's distinct pairs in ascending (gt, pred) order.
//   status            (B,) int32 bit flags (STATUS_* below), OR-ed by every stage.
// cap = 1 << cap_log2 is fixed per launch; an image with more distinct pairs than its table can
// hold sets STATUS_PAIR_TABLE_OVERFLOW and its outputs are meaningless: the host reruns it with a
// larger capacity (which needs a host sync, so capacities are chosen generously).

#ifndef FASTPQ_BLOCK_THREADS
#define FASTPQ_BLOCK_THREADS 256     // threads of a histogram / compaction block (multiple of 32)
#endif
#ifndef FASTPQ_SHARED_LOG2
#define FASTPQ_SHARED_LOG2 11        // 2048 slots: 16 KiB of keys + 8 KiB of counts per block
#endif
#ifndef FASTPQ_SHARED_MAX_PROBE
#define FASTPQ_SHARED_MAX_PROBE 32   // probes in the shared table before a key goes to global
#endif
#ifndef FASTPQ_RANK_TILE
#define FASTPQ_RANK_TILE 1024        // keys staged in shared memory while ranking (8 KiB)
#endif
#ifndef FASTPQ_MATCH_THREADS
#define FASTPQ_MATCH_THREADS 128     // threads of a matcher block (one block per image)
#endif

#define FASTPQ_SHARED_SLOTS (1 << FASTPQ_SHARED_LOG2)
#define FASTPQ_SHARED_PROBES \
    (FASTPQ_SHARED_MAX_PROBE < FASTPQ_SHARED_SLOTS ? FASTPQ_SHARED_MAX_PROBE : FASTPQ_SHARED_SLOTS)

#define FASTPQ_FULL_MASK 0xffffffffu
#define FASTPQ_EMPTY_KEY 0xffffffffffffffffull
#define FASTPQ_HASH_MULTIPLIER 0x9e3779b97f4a7c15ull

// status bits (kernels/gpu_layout.py names them)
#define STATUS_PAIR_TABLE_OVERFLOW 1   // more distinct pairs than the per-image table holds
#define STATUS_ID_OUT_OF_RANGE 2       // an id < 0 or >= 2^31 in a label map
#define STATUS_PRED_ID_NOT_LISTED 4    // a non-zero pred id of the map is not in the pred table
#define STATUS_PRED_SEGMENT_ABSENT 8   // a pred table segment has no pixel in the map
#define STATUS_PRED_CATEGORY_UNKNOWN 16  // a pred segment present in the map has category -1

#define STATUS_MATCHED 1               // gt_state bits of the matcher
#define STATUS_LAST_CROWD 2

typedef unsigned long long u64;
typedef unsigned int u32;

// ---------------------------------------------------------------------------------------------
// Hashing and table insertion
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ u64 pair_key(long long gt, long long pred)
{
    return ((u64)(u32)gt << 32) | (u64)(u32)pred;
}

// Fibonacci hashing: the top log2 bits of key * 2^64/phi. log2 must lie in [1, 63].
__device__ __forceinline__ u32 slot_of(u64 key, int log2)
{
    return (u32)((key * FASTPQ_HASH_MULTIPLIER) >> (64 - log2));
}

// Adds count to key in an image's global table (linear probing, CAS on the key). A full table
// sets STATUS_PAIR_TABLE_OVERFLOW; once set, later inserts return at once (results are discarded).
__device__ void global_insert(u64* keys, u64* counts, int cap_log2, u64 key, u64 count,
                              int* status)
{
    if (*(volatile int*)status & STATUS_PAIR_TABLE_OVERFLOW) {
        return;
    }
    const u32 mask = (1u << cap_log2) - 1u;
    u32 slot = slot_of(key, cap_log2);
    for (u32 probe = 0; probe <= mask; ++probe) {
        const u64 found = atomicCAS(keys + slot, FASTPQ_EMPTY_KEY, key);
        if (found == FASTPQ_EMPTY_KEY || found == key) {
            atomicAdd(counts + slot, count);
            return;
        }
        slot = (slot + 1u) & mask;
    }
    atomicOr(status, STATUS_PAIR_TABLE_OVERFLOW);
}

// Adds count to key in the block's shared table; after FASTPQ_SHARED_PROBES occupied slots the
// key goes straight to the global table. Slots are never freed, so a key that is in the shared
// table is always found within its first FASTPQ_SHARED_PROBES probes.
__device__ __forceinline__ void shared_insert(u64* s_keys, u32* s_counts, u64 key, u32 count,
                                              u64* keys, u64* counts, int cap_log2, int* status)
{
    u32 slot = slot_of(key, FASTPQ_SHARED_LOG2);
    for (int probe = 0; probe < FASTPQ_SHARED_PROBES; ++probe) {
        const u64 found = atomicCAS(s_keys + slot, FASTPQ_EMPTY_KEY, key);
        if (found == FASTPQ_EMPTY_KEY || found == key) {
            atomicAdd(s_counts + slot, count);
            return;
        }
        slot = (slot + 1u) & (FASTPQ_SHARED_SLOTS - 1u);
    }
    global_insert(keys, counts, cap_log2, key, (u64)count, status);
}

// One lane's four pixels (k[j], c[j]; c[j] = 0 for no pixel) go into the shared table. All 32
// lanes of the warp must call this together (the loops that call it are warp-uniform).
__device__ __forceinline__ void insert_lane_items(u64 (&k)[4], u32 (&c)[4], int lane,
                                                  u64* s_keys, u32* s_counts, u64* keys,
                                                  u64* counts, int cap_log2, int* status)
{
    // equal neighbours inside the lane become one item
#pragma unroll
    for (int j = 3; j > 0; --j) {
        if (k[j] == k[j - 1]) {
            c[j - 1] += c[j];
            c[j] = 0;
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const bool has = c[j] != 0;
        if (__any_sync(FASTPQ_FULL_MASK, has)) {
            const u64 key = has ? k[j] : FASTPQ_EMPTY_KEY;
#if __CUDA_ARCH__ >= 800
            // lanes with equal keys form a group; its lowest lane adds the group's total
            const u32 peers = __match_any_sync(FASTPQ_FULL_MASK, key);
            const u32 total = __reduce_add_sync(peers, c[j]);
            if (lane == __ffs(peers) - 1 && key != FASTPQ_EMPTY_KEY) {
                shared_insert(s_keys, s_counts, key, total, keys, counts, cap_log2, status);
            }
#else
            (void)lane;  // no group leaders before sm_80: every lane inserts its own item
            if (key != FASTPQ_EMPTY_KEY) {
                shared_insert(s_keys, s_counts, key, c[j], keys, counts, cap_log2, status);
            }
#endif
        }
    }
}

// A warp's span (every lane's four items) is uniform when all its pixels share lane 0's first key
// (lane 0's first item is always a pixel). Returns the span's key and pixel count through *key and
// *n; the result is the same in every lane.
__device__ __forceinline__ bool uniform_span(const u64 (&k)[4], const u32 (&c)[4], u64* key,
                                             u32* n)
{
    const u64 first = __shfl_sync(FASTPQ_FULL_MASK, k[0], 0);
    bool same = true;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        same = same && (c[j] == 0u || k[j] == first);
    }
    if (!__all_sync(FASTPQ_FULL_MASK, same)) {
        return false;
    }
    u32 pixels = 0u;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        pixels += __popc(__ballot_sync(FASTPQ_FULL_MASK, c[j] != 0u));
    }
    *key = first;
    *n = pixels;
    return true;
}

// Adds one warp span: a uniform span extends the warp's run (or flushes it and starts a new one),
// any other span goes through insert_lane_items. Warp-uniform control flow.
__device__ __forceinline__ void add_span(u64 (&k)[4], u32 (&c)[4], int lane, u64* run_key,
                                         u32* run_count, u64* s_keys, u32* s_counts, u64* keys,
                                         u64* counts, int cap_log2, int* status)
{
    u64 key;
    u32 n;
    if (uniform_span(k, c, &key, &n)) {
        if (key == *run_key && *run_count <= 0x7fffffffu) {
            *run_count += n;
        } else {
            if (lane == 0 && *run_count != 0u) {
                shared_insert(s_keys, s_counts, *run_key, *run_count, keys, counts, cap_log2,
                              status);
            }
            *run_key = key;
            *run_count = n;
        }
    } else {
        insert_lane_items(k, c, lane, s_keys, s_counts, keys, counts, cap_log2, status);
    }
}

// ---------------------------------------------------------------------------------------------
// Histogram: grid (tiles per image, B), FASTPQ_BLOCK_THREADS threads; block (t, b) counts the
// pixels [t * tile_pixels, min((t + 1) * tile_pixels, N)) of image b.
// vec4 != 0 (int32 maps only) needs N % 4 == 0, tile_pixels % 4 == 0 and 16-byte aligned maps;
// a lane then reads one int4 of each map (4 adjacent pixels). Otherwise a lane reads pixels
// base + 32 j + lane, j = 0..3, with base stepping 128 pixels per warp. Reads are coalesced either
// way and every pixel is read once.
// A warp keeps a run in registers: consecutive uniform spans of one key only add to the run's
// count, and the run goes into the shared table (one insert by lane 0) when the key changes and at
// the end of the tile. Flat regions thus cost loads and a few warp votes, no atomics.
// ---------------------------------------------------------------------------------------------

// How histogram_tile reads pixels: a Reader gives the (gt, pred) key of pixel i of its image
// (pixel), may read four adjacent pixels as one int4 of each map (kVec4, quad), and reports the
// status bits of what it read (status_bits) once the tile is done.
template <typename T>
struct IdReader {
    const T* g;
    const T* p;
    long long seen;  // OR of every id read: bits >= 31 mean an id outside [0, 2^31)
    static constexpr bool kVec4 = sizeof(T) == 4;

    __device__ __forceinline__ u64 pixel(long long i)
    {
        const T a = g[i];
        const T b = p[i];
        seen |= (long long)(a | b);
        return pair_key((long long)a, (long long)b);
    }

    __device__ __forceinline__ void quad(long long q, u64 (&k)[4])
    {
        const int4 a = __ldg(reinterpret_cast<const int4*>(g) + q);
        const int4 b = __ldg(reinterpret_cast<const int4*>(p) + q);
        seen |= (long long)(a.x | a.y | a.z | a.w | b.x | b.y | b.z | b.w);
        k[0] = pair_key(a.x, b.x);
        k[1] = pair_key(a.y, b.y);
        k[2] = pair_key(a.z, b.z);
        k[3] = pair_key(a.w, b.w);
    }

    __device__ __forceinline__ int status_bits() const
    {
        return ((u64)seen >> 31) != 0ull ? STATUS_ID_OUT_OF_RANGE : 0;
    }
};

template <typename Reader>
__device__ __forceinline__ void histogram_tile(Reader& reader, long long n_pixels,
                                               long long tile_pixels, int vec4,
                                               u64* __restrict__ table_keys,
                                               u64* __restrict__ table_counts, int cap_log2,
                                               int* __restrict__ status, u64* s_keys,
                                               u32* s_counts)
{
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int n_warps = blockDim.x >> 5;
    const long long image = blockIdx.y;
    const long long start = (long long)blockIdx.x * tile_pixels;
    const long long end = min(start + tile_pixels, n_pixels);

    u64* keys = table_keys + (image << cap_log2);
    u64* counts = table_counts + (image << cap_log2);
    int* image_status = status + image;

    for (int s = tid; s < FASTPQ_SHARED_SLOTS; s += blockDim.x) {
        s_keys[s] = FASTPQ_EMPTY_KEY;
        s_counts[s] = 0u;
    }
    __syncthreads();

    u64 run_key = FASTPQ_EMPTY_KEY;  // the warp's run (warp-uniform)
    u32 run_count = 0u;
    u64 k[4];
    u32 c[4];
    bool scalar = true;
    if constexpr (Reader::kVec4) {
        if (vec4) {
            scalar = false;
            const long long quad_end = end >> 2;
            for (long long base = (start >> 2) + warp * 32; base < quad_end;
                 base += n_warps * 32) {
                const long long q = base + lane;
                if (q < quad_end) {
                    reader.quad(q, k);
                    c[0] = c[1] = c[2] = c[3] = 1u;
                } else {
                    k[0] = k[1] = k[2] = k[3] = FASTPQ_EMPTY_KEY;
                    c[0] = c[1] = c[2] = c[3] = 0u;
                }
                add_span(k, c, lane, &run_key, &run_count, s_keys, s_counts, keys, counts,
                         cap_log2, image_status);
            }
        }
    }
    if (scalar) {
        for (long long base = start + warp * 128; base < end; base += n_warps * 128) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const long long i = base + 32 * j + lane;
                if (i < end) {
                    k[j] = reader.pixel(i);
                    c[j] = 1u;
                } else {
                    k[j] = FASTPQ_EMPTY_KEY;
                    c[j] = 0u;
                }
            }
            add_span(k, c, lane, &run_key, &run_count, s_keys, s_counts, keys, counts, cap_log2,
                     image_status);
        }
    }
    if (lane == 0 && run_count != 0u) {
        shared_insert(s_keys, s_counts, run_key, run_count, keys, counts, cap_log2, image_status);
    }

    const int bits = reader.status_bits();
    if (bits) {
        atomicOr(image_status, bits);
    }
    __syncthreads();  // the shared table is complete before the flush
    for (int s = tid; s < FASTPQ_SHARED_SLOTS; s += blockDim.x) {
        const u64 key = s_keys[s];
        if (key != FASTPQ_EMPTY_KEY) {
            global_insert(keys, counts, cap_log2, key, (u64)s_counts[s], image_status);
        }
    }
}

// Table initialisation: grid-stride over the (B, cap) slots; empty keys, zero counts, zero status.
extern "C" __global__ void __launch_bounds__(FASTPQ_BLOCK_THREADS)
init_pair_tables(u64* __restrict__ table_keys, u64* __restrict__ table_counts, long long n_slots,
                 int* __restrict__ status, long long n_images)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_slots; i += stride) {
        table_keys[i] = FASTPQ_EMPTY_KEY;
        table_counts[i] = 0ull;
        if (i < n_images) {
            status[i] = 0;
        }
    }
}

extern "C" __global__ void __launch_bounds__(FASTPQ_BLOCK_THREADS)
pair_histogram_i32(const int* __restrict__ gt, const int* __restrict__ pred, long long n_pixels,
                   long long tile_pixels, int vec4, u64* __restrict__ table_keys,
                   u64* __restrict__ table_counts, int cap_log2, int* __restrict__ status)
{
    __shared__ u64 s_keys[FASTPQ_SHARED_SLOTS];
    __shared__ u32 s_counts[FASTPQ_SHARED_SLOTS];
    IdReader<int> reader{gt + blockIdx.y * n_pixels, pred + blockIdx.y * n_pixels, 0};
    histogram_tile(reader, n_pixels, tile_pixels, vec4, table_keys, table_counts, cap_log2,
                   status, s_keys, s_counts);
}

extern "C" __global__ void __launch_bounds__(FASTPQ_BLOCK_THREADS)
pair_histogram_i64(const long long* __restrict__ gt, const long long* __restrict__ pred,
                   long long n_pixels, long long tile_pixels, int vec4,
                   u64* __restrict__ table_keys, u64* __restrict__ table_counts, int cap_log2,
                   int* __restrict__ status)
{
    __shared__ u64 s_keys[FASTPQ_SHARED_SLOTS];
    __shared__ u32 s_counts[FASTPQ_SHARED_SLOTS];
    // int64 maps always take the scalar path (IdReader<long long>::kVec4 is false)
    IdReader<long long> reader{gt + blockIdx.y * n_pixels, pred + blockIdx.y * n_pixels, 0};
    histogram_tile(reader, n_pixels, tile_pixels, vec4, table_keys, table_counts, cap_log2,
                   status, s_keys, s_counts);
}

// ---------------------------------------------------------------------------------------------
// Compaction: grid (B), FASTPQ_BLOCK_THREADS threads. Packs image b's non-empty slots (in slot
// order: per-thread runs of slots and one block-wide prefix sum) into scratch, then writes each pair at its rank
// (the number of smaller keys), so the pair table comes out sorted by (gt, pred).
// O(n_pairs^2 / threads) comparisons per image: cheap for the tens to hundreds of pairs of real
// panoptic maps.
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(FASTPQ_BLOCK_THREADS)
compact_pair_tables(const u64* __restrict__ table_keys, const u64* __restrict__ table_counts,
                    int cap_log2, u64* __restrict__ scratch_keys,
                    u64* __restrict__ scratch_counts, int* __restrict__ pair_gt,
                    int* __restrict__ pair_pred, long long* __restrict__ pair_count,
                    int* __restrict__ n_pairs)
{
    __shared__ u32 warp_totals[FASTPQ_BLOCK_THREADS / 32];
    __shared__ u64 tile[FASTPQ_RANK_TILE];

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int n_warps = blockDim.x >> 5;
    const long long cap = 1ll << cap_log2;
    const long long row = (long long)blockIdx.x << cap_log2;

    // 1. pack non-empty slots in slot order: thread t owns the slots [t * chunk, (t + 1) * chunk),
    //    and one block-wide exclusive scan of the threads' counts gives each its offset
    const long long chunk = (cap + blockDim.x - 1) / blockDim.x;
    const long long first = min((long long)tid * chunk, cap);
    const long long last = min(first + chunk, cap);
    u32 mine = 0u;
    for (long long s = first; s < last; ++s) {
        mine += table_keys[row + s] != FASTPQ_EMPTY_KEY ? 1u : 0u;
    }
    u32 inclusive = mine;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const u32 below = __shfl_up_sync(FASTPQ_FULL_MASK, inclusive, d);
        inclusive += lane >= d ? below : 0u;
    }
    if (lane == 31) {
        warp_totals[warp] = inclusive;
    }
    __syncthreads();
    u32 offset = inclusive - mine;
    u32 n = 0u;
    for (int w = 0; w < n_warps; ++w) {
        offset += w < warp ? warp_totals[w] : 0u;
        n += warp_totals[w];
    }
    for (long long s = first; s < last; ++s) {
        const u64 key = table_keys[row + s];
        if (key != FASTPQ_EMPTY_KEY) {
            scratch_keys[row + offset] = key;
            scratch_counts[row + offset] = table_counts[row + s];
            ++offset;
        }
    }
    __syncthreads();  // scratch is complete before any thread ranks it

    // 2. write every pair at its rank
    for (u32 i0 = 0; i0 < n; i0 += blockDim.x) {
        const u32 i = i0 + tid;
        const u64 key = i < n ? scratch_keys[row + i] : FASTPQ_EMPTY_KEY;
        u32 rank = 0u;
        for (u32 t0 = 0; t0 < n; t0 += FASTPQ_RANK_TILE) {
            const u32 m = min((u32)FASTPQ_RANK_TILE, n - t0);
            __syncthreads();  // the previous tile is consumed
            for (u32 t = tid; t < m; t += blockDim.x) {
                tile[t] = scratch_keys[row + t0 + t];
            }
            __syncthreads();
            for (u32 t = 0; t < m; ++t) {
                rank += tile[t] < key ? 1u : 0u;
            }
        }
        if (i < n) {
            pair_gt[row + rank] = (int)(key >> 32);
            pair_pred[row + rank] = (int)(u32)key;
            pair_count[row + rank] = (long long)scratch_counts[row + i];
        }
    }
    if (tid == 0) {
        n_pairs[blockIdx.x] = (int)n;
    }
}

// ---------------------------------------------------------------------------------------------
// Matcher: grid (B), FASTPQ_MATCH_THREADS threads; SPEC §2.3-2.5 on one image's sorted pair table.
//
// Segment tables are padded (B, S) arrays with per-image counts: gt_id, gt_category (dense
// category index, -1 = not a category of the table: never matched, its FN invisible as in the
// reference), gt_iscrowd (crowd iff == 1), gt_area (float64: the JSON area of pq_compute; ignored
// when gt_area_from_pixels != 0, the area is then the pixel count); pred_id, pred_category.
// Pred areas are the pixel counts (pair-table marginals), as in the reference.
//
// Outputs, row b of (B, n_categories): tp, fp, fn (int64) and iou_sum (float64), the IoUs of the
// image's matches of each category added to 0.0 in ascending (gt_id, pred_id) order by one
// thread; the host adds per-image rows in image order. pair_iou / pair_matched (B, cap) keep each
// pair's IoU and match flag so that other float orders (SPEC §2.9) can be rebuilt on the host.
// Scratch (written before read): pair_gt_segment, pair_pred_segment (B, cap) int32; gt_pixels
// (B, S_gt) int64, gt_state (B, S_gt) int32; pred_area, pred_void, pred_crowd (B, S_pred) int64,
// pred_matched (B, S_pred) int32.
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ int find_segment(const int* ids, int n, int id)
{
    for (int k = 0; k < n; ++k) {
        if (ids[k] == id) {
            return k;
        }
    }
    return -1;
}

__device__ __forceinline__ void atomic_add_i64(long long* address, long long value)
{
    atomicAdd(reinterpret_cast<u64*>(address), (u64)value);
}

extern "C" __global__ void __launch_bounds__(FASTPQ_MATCH_THREADS)
match_segments(const int* __restrict__ pair_gt, const int* __restrict__ pair_pred,
               const long long* __restrict__ pair_count, const int* __restrict__ n_pairs,
               int cap_log2,
               const int* __restrict__ gt_id, const int* __restrict__ gt_category,
               const int* __restrict__ gt_iscrowd, const double* __restrict__ gt_area,
               const int* __restrict__ n_gt, int gt_stride, int gt_area_from_pixels,
               const int* __restrict__ pred_id, const int* __restrict__ pred_category,
               const int* __restrict__ n_pred, int pred_stride, int n_categories,
               int* __restrict__ pair_gt_segment, int* __restrict__ pair_pred_segment,
               double* __restrict__ pair_iou, int* __restrict__ pair_matched,
               long long* __restrict__ gt_pixels, int* __restrict__ gt_state,
               long long* __restrict__ pred_area, long long* __restrict__ pred_void,
               long long* __restrict__ pred_crowd, int* __restrict__ pred_matched,
               long long* __restrict__ tp, long long* __restrict__ fp, long long* __restrict__ fn,
               double* __restrict__ iou_sum, int* __restrict__ status)
{
    const int tid = threadIdx.x;
    const long long image = blockIdx.x;
    const long long prow = image << cap_log2;
    const long long grow = image * gt_stride;
    const long long qrow = image * pred_stride;
    const long long crow = image * n_categories;
    const int np = n_pairs[image];
    const int ng = n_gt[image];
    const int nq = n_pred[image];
    int* image_status = status + image;

    // 0. clear this image's rows; mark the last-listed crowd segment of each category (§2.4)
    for (int c = tid; c < n_categories; c += blockDim.x) {
        tp[crow + c] = 0;
        fp[crow + c] = 0;
        fn[crow + c] = 0;
        iou_sum[crow + c] = 0.0;
    }
    for (int j = tid; j < nq; j += blockDim.x) {
        pred_area[qrow + j] = 0;
        pred_void[qrow + j] = 0;
        pred_crowd[qrow + j] = 0;
        pred_matched[qrow + j] = 0;
    }
    for (int i = tid; i < ng; i += blockDim.x) {
        gt_pixels[grow + i] = 0;
        int state = 0;
        if (gt_iscrowd[grow + i] == 1) {
            state = STATUS_LAST_CROWD;
            for (int later = i + 1; later < ng; ++later) {
                if (gt_iscrowd[grow + later] == 1 &&
                    gt_category[grow + later] == gt_category[grow + i]) {
                    state = 0;
                    break;
                }
            }
        }
        gt_state[grow + i] = state;
    }
    __syncthreads();

    // 1. segment of each pair; marginals (pred area, gt pixels) and I(void, p)
    for (int i = tid; i < np; i += blockDim.x) {
        const int g = pair_gt[prow + i];
        const int p = pair_pred[prow + i];
        const long long count = pair_count[prow + i];
        const int gs = find_segment(gt_id + grow, ng, g);
        const int ps = find_segment(pred_id + qrow, nq, p);
        pair_gt_segment[prow + i] = gs;
        pair_pred_segment[prow + i] = ps;
        if (ps >= 0) {
            atomic_add_i64(pred_area + qrow + ps, count);
            if (g == 0) {
                pred_void[qrow + ps] = count;  // (0, p) is one pair
            }
        } else if (p != 0) {
            atomicOr(image_status, STATUS_PRED_ID_NOT_LISTED);
        }
        if (gs >= 0) {
            atomic_add_i64(gt_pixels + grow + gs, count);
        }
    }
    __syncthreads();

    // 2. IoU of every same-category (non-crowd gt, pred) pair; I(crowd of the category, p)
    for (int i = tid; i < np; i += blockDim.x) {
        const int gs = pair_gt_segment[prow + i];
        const int ps = pair_pred_segment[prow + i];
        int matched = 0;
        double iou = 0.0;
        if (gs >= 0 && ps >= 0) {
            const int category = gt_category[grow + gs];
            if (category >= 0 && category == pred_category[qrow + ps]) {
                const long long count = pair_count[prow + i];
                if (gt_state[grow + gs] & STATUS_LAST_CROWD) {
                    pred_crowd[qrow + ps] = count;
                }
                if (gt_iscrowd[grow + gs] != 1) {
                    // union = area_p + area_g - I - I(void, p), evaluated left to right as the
                    // reference does (exact for integer areas below 2^53)
                    const double area_g = gt_area_from_pixels
                                              ? (double)gt_pixels[grow + gs]
                                              : gt_area[grow + gs];
                    const double union_ = (((double)pred_area[qrow + ps] + area_g) -
                                           (double)count) -
                                          (double)pred_void[qrow + ps];
                    iou = (double)count / union_;
                    if (iou > 0.5) {
                        matched = 1;
                        atomicOr(gt_state + grow + gs, STATUS_MATCHED);
                        pred_matched[qrow + ps] = 1;
                    }
                }
            }
        }
        pair_iou[prow + i] = iou;
        pair_matched[prow + i] = matched;
    }
    __syncthreads();

    // 3. tp and iou_sum in pair order (one thread); fn and fp in parallel
    if (tid == 0) {
        for (int i = 0; i < np; ++i) {
            if (pair_matched[prow + i]) {
                const int category = gt_category[grow + pair_gt_segment[prow + i]];
                tp[crow + category] += 1;
                iou_sum[crow + category] += pair_iou[prow + i];
            }
        }
    }
    for (int i = tid; i < ng; i += blockDim.x) {
        const int category = gt_category[grow + i];
        if (!(gt_state[grow + i] & STATUS_MATCHED) && gt_iscrowd[grow + i] != 1 &&
            category >= 0) {
            atomic_add_i64(fn + crow + category, 1);
        }
    }
    for (int j = tid; j < nq; j += blockDim.x) {
        if (pred_matched[qrow + j]) {
            continue;
        }
        const long long area = pred_area[qrow + j];
        if (area == 0) {
            atomicOr(image_status, STATUS_PRED_SEGMENT_ABSENT);
            continue;
        }
        const int category = pred_category[qrow + j];
        if (category < 0) {
            atomicOr(image_status, STATUS_PRED_CATEGORY_UNKNOWN);
            continue;
        }
        const long long ignored = pred_void[qrow + j] + pred_crowd[qrow + j];
        if ((double)ignored / (double)area > 0.5) {
            continue;  // mostly void or same-category crowd (§2.5)
        }
        atomic_add_i64(fp + crow + category, 1);
    }
}
