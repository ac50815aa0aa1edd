"""PNG scanline unfiltering straight into COCO panoptic segment ids, on the CPU with Numba.

A non-interlaced 8-bit RGB or RGBA PNG inflates to ``height`` scanlines of
``1 + width * bytes_per_pixel`` bytes: a filter-type byte, then the filtered samples. Each sample
is reconstructed from itself and the reconstructed sample of the same channel to the left (``a``),
above (``b``) and above-left (``c``) with one of the five filters of the PNG specification
(ISO/IEC 15948, section 9): None, Sub, Up, Average, Paeth. A channel depends only on the same
channel of its neighbours, so the alpha channel of RGBA is never reconstructed, and the row above
is read back from the ids already written (``id = R + 256*G + 65536*B`` holds R, G, B as its three
low bytes). Every filtered byte is read once and every row of ids is built in place; no RGB image
and no reconstructed copy of the scanlines exist.

The kernel is pure: arrays in, arrays out, no exceptions. A filter-type byte outside 0..4 is
reported by its row index instead of raised.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from .pair_table import DONE, NO_PAIRS, pair_table
from .pairs import marginals

#: PNG filter types (the first byte of every scanline).
FILTER_NONE, FILTER_SUB, FILTER_UP, FILTER_AVERAGE, FILTER_PAETH = 0, 1, 2, 3, 4

# Pixels are handled as packed ids: three byte lanes (R, G, B) in one integer. The filters are
# byte-wise and never carry across channels, so they are computed on whole pixels with the usual
# SWAR identities: lane-wise addition modulo 256 and lane-wise floor((x + y) / 2).
_LOW7 = 0x7F7F7F
_HIGH1 = 0x808080
_NOT_LOW1 = 0xFEFEFE


@njit(nogil=True, cache=True, inline="always")
def _sample(samples, bytes_per_pixel, x):
    """The filtered R, G, B samples of pixel ``x`` of a scanline, packed like an id."""
    return (
        np.int64(samples[bytes_per_pixel * x])
        | (np.int64(samples[bytes_per_pixel * x + 1]) << 8)
        | (np.int64(samples[bytes_per_pixel * x + 2]) << 16)
    )


@njit(nogil=True, cache=True, inline="always")
def _add_lanes(x, y):
    """Lane-wise ``(x + y) mod 256`` of two packed pixels."""
    return ((x & _LOW7) + (y & _LOW7)) ^ ((x ^ y) & _HIGH1)


@njit(nogil=True, cache=True, inline="always")
def _average_lanes(x, y):
    """Lane-wise ``floor((x + y) / 2)`` of two packed pixels."""
    return (x & y) + (((x ^ y) & _NOT_LOW1) >> 1)


@njit(nogil=True, cache=True, inline="always")
def _paeth_lane(a, b, c):
    """The Paeth predictor of one sample: whichever of a, b, c is nearest ``a + b - c``.

    Ties go to a, then b, in the order the specification tests them.
    """
    pa = abs(b - c)
    pb = abs(a - c)
    pc = abs(a + b - 2 * c)
    if pa <= pb and pa <= pc:
        return a
    if pb <= pc:
        return b
    return c


@njit(nogil=True, cache=True, inline="always")
def _paeth_pixel(a, b, c):
    """The Paeth predictor of a packed pixel, lane by lane.

    Inside a segment the neighbours mostly agree, and two whole-pixel identities decide every
    lane at once: ``b == c`` gives ``a`` (distance 0 to a), and ``a == c`` gives ``b`` (distance 0
    to b, while a is at distance ``|b - c| > 0``).
    """
    if b == c:
        return a
    if a == c:
        return b
    predictor = np.int64(0)
    for shift in (0, 8, 16):
        lane = _paeth_lane((a >> shift) & 0xFF, (b >> shift) & 0xFF, (c >> shift) & 0xFF)
        predictor |= lane << shift
    return predictor


# One function per filter type: each row loop stays small enough for LLVM to vectorise what has no
# left-to-right dependency (None, the second pass of Up). Sub, Average and Paeth are serial along
# the row; inside a segment their filtered samples are 0 and their predictor is the left pixel,
# so branches on those cases (well predicted) keep the dependency chain short.


@njit(nogil=True, cache=True)
def _none_row(samples, bytes_per_pixel, row):
    for x in range(row.shape[0]):
        row[x] = (
            np.uint32(samples[bytes_per_pixel * x])
            | (np.uint32(samples[bytes_per_pixel * x + 1]) << np.uint32(8))
            | (np.uint32(samples[bytes_per_pixel * x + 2]) << np.uint32(16))
        )


@njit(nogil=True, cache=True)
def _sub_row(samples, bytes_per_pixel, row, marks, positions):
    # A pixel whose filtered samples are 0 repeats the pixel to its left.
    for x in range(row.shape[0]):
        marks[x] = _sample(samples, bytes_per_pixel, x) != 0
    left = np.int64(0)
    pos = 0
    for i in range(_marked(marks, row.shape[0], positions)):
        x = positions[i]
        row[pos:x] = left
        left = _add_lanes(_sample(samples, bytes_per_pixel, x), left)
        row[x] = left
        pos = x + 1
    row[pos:] = left


@njit(nogil=True, cache=True)
def _up_row(samples, bytes_per_pixel, row, above, marks, positions):
    for x in range(row.shape[0]):  # not row[:] = above: Numba copies overlapping views twice
        row[x] = above[x]
    _patch_up_row(samples, bytes_per_pixel, row, marks, positions)


@njit(nogil=True, cache=True, inline="always")
def _patch_up_row(samples, bytes_per_pixel, row, marks, positions):
    """An Up row reconstructed in place over the row above: a pixel whose filtered samples are
    all 0 repeats the pixel above, so only the others change."""
    for i in range(_nonzero_pixels(samples, bytes_per_pixel, marks, positions)):
        x = positions[i]
        row[x] = _add_lanes(_sample(samples, bytes_per_pixel, x), np.int64(row[x]))


@njit(nogil=True, cache=True, inline="always")
def _nonzero_pixels(samples, bytes_per_pixel, marks, positions):
    """Write into ``positions`` the pixels with a nonzero filtered sample (alpha included),
    ascending; returns how many. ``marks`` (at least ``len(samples) // 8`` rounded up to 8) is
    scratch.

    The samples are read as 8-byte words. A branch-free (vectorised) pass marks the nonzero words,
    and the marks are read eight at a time, so that the mostly zero rows of a panoptic PNG cost no
    branch per word.
    """
    n = samples.shape[0]
    whole = n // 8
    words = samples[: whole * 8].view(np.uint64)
    for k in range(whole):
        marks[k] = words[k] != 0
    padded = (whole + 7) // 8 * 8
    marks[whole:padded] = False
    count = 0
    last = -1
    marked = marks[:padded].view(np.uint64)
    for j in range(padded // 8):
        eight = marked[j]
        while eight != 0:
            k = j * 8 + (trailing_zeros(eight) >> 3)
            eight &= eight - np.uint64(1)
            word = words[k]
            while word != 0:
                x = (k * 8 + (trailing_zeros(word) >> 3)) // bytes_per_pixel
                if x != last:
                    positions[count] = x
                    count += 1
                    last = x
                word &= word - np.uint64(1)
    for b in range(whole * 8, n):
        if samples[b] != 0:
            x = b // bytes_per_pixel
            if x != last:
                positions[count] = x
                count += 1
                last = x
    return count


@njit(nogil=True, cache=True)
def _average_row(samples, bytes_per_pixel, row, above):
    left = np.int64(0)
    for x in range(row.shape[0]):
        up = np.int64(above[x])
        if up != left:
            left = _average_lanes(left, up)
        sample = _sample(samples, bytes_per_pixel, x)
        if sample != 0:
            left = _add_lanes(sample, left)
        row[x] = left


@njit(nogil=True, cache=True)
def _paeth_row(samples, bytes_per_pixel, row, above, marks, positions):
    # Where the row above is flat (b == c) the predictor is the left pixel, so a pixel with
    # filtered samples 0 there repeats the pixel to its left.
    width = row.shape[0]
    if width == 0:
        return
    marks[0] = True
    for x in range(1, width):
        marks[x] = (above[x] != above[x - 1]) | (_sample(samples, bytes_per_pixel, x) != 0)
    left = np.int64(0)
    pos = 0
    for i in range(_marked(marks, width, positions)):
        x = positions[i]
        row[pos:x] = left
        up = np.int64(above[x])
        up_left = np.int64(above[x - 1]) if x > 0 else np.int64(0)
        left = _paeth_pixel(left, up, up_left)
        sample = _sample(samples, bytes_per_pixel, x)
        if sample != 0:
            left = _add_lanes(sample, left)
        row[x] = left
        pos = x + 1
    row[pos:] = left


@njit(nogil=True, cache=True, inline="always")
def _marked(marks, n, positions):
    """Write into ``positions`` the indices ``x < n`` whose mark is set, ascending, reading the
    marks eight at a time; returns how many."""
    marks[n:] = False
    words = marks.view(np.uint64)
    count = 0
    for k in range((n + 7) // 8):
        word = words[k]
        while word != 0:
            positions[count] = k * 8 + (trailing_zeros(word) >> 3)
            count += 1
            word &= word - np.uint64(1)
    return count


@njit(nogil=True, cache=True)
def unfilter_ids(scanlines, bytes_per_pixel, ids):
    """Reconstruct filtered 8-bit RGB(A) scanlines into segment ids ``R + 256*G + 65536*B``.

    Parameters
    ----------
    scanlines : ndarray of uint8, shape (H * (1 + W * bytes_per_pixel),)
        The inflated IDAT stream of a non-interlaced PNG of bit depth 8: per row, one filter-type
        byte followed by ``W * bytes_per_pixel`` filtered samples. Only read.
    bytes_per_pixel : int
        3 for colour type 2 (RGB), 4 for colour type 6 (RGBA; alpha is skipped).
    ids : ndarray of uint32, shape (H, W)
        Output, any strides. Row ``y`` is written completely before row ``y + 1`` reads it back
        as the row above.

    Returns
    -------
    int
        -1 when every row was reconstructed; otherwise the index of the first row whose filter
        type is not 0..4. That row and the rows below it are left unwritten.
    """
    # Two call sites with a literal pixel size, so that the sample offsets in the row loops are
    # compile-time constants (the RGB gather then vectorises).
    if bytes_per_pixel == 3:
        return _unfilter_rows(scanlines, 3, ids)
    return _unfilter_rows(scanlines, 4, ids)


@njit(nogil=True, cache=True, inline="always")
def _unfilter_rows(scanlines, bytes_per_pixel, ids):
    """The body of `unfilter_ids`, inlined once per pixel size."""
    height, width = ids.shape
    stride = 1 + width * bytes_per_pixel
    above_first_row = np.zeros(width, np.uint32)  # the specification's row of zeros
    marks = np.zeros((width + 7) // 8 * 8, np.bool_)  # scratch of the Sub, Up and Paeth rows
    positions = np.empty(width, np.int32)
    for y in range(height):
        start = y * stride
        filter_type = scanlines[start]
        samples = scanlines[start + 1 : start + stride]
        above = ids[y - 1] if y > 0 else above_first_row
        if not _unfilter_row(filter_type, samples, bytes_per_pixel, ids[y], above, marks,
                             positions):
            return y
    return -1


@njit(nogil=True, cache=True, inline="always")
def _unfilter_row(filter_type, samples, bytes_per_pixel, row, above, marks, positions):
    """Reconstruct one row into ``row`` from the row ``above``; False for a filter type outside
    0..4 (``row`` then unwritten)."""
    if filter_type == FILTER_NONE:
        _none_row(samples, bytes_per_pixel, row)
    elif filter_type == FILTER_SUB:
        _sub_row(samples, bytes_per_pixel, row, marks, positions)
    elif filter_type == FILTER_UP:
        _up_row(samples, bytes_per_pixel, row, above, marks, positions)
    elif filter_type == FILTER_AVERAGE:
        _average_row(samples, bytes_per_pixel, row, above)
    elif filter_type == FILTER_PAETH:
        _paeth_row(samples, bytes_per_pixel, row, above, marks, positions)
    else:
        return False
    return True


@njit(nogil=True, cache=True)
def pair_counts_scanlines(gt_scanlines, gt_bytes_per_pixel, pred_scanlines, pred_bytes_per_pixel,
                          height, width, capacity):
    """The (gt id, pred id) pair histogram of two filtered PNG images of one size, reconstructed
    row by row: no id map is written, each map keeps one or two rows in cache.

    The scanlines are those of `unfilter_ids`; an Up row (most rows of a panoptic PNG) is patched
    in place over the row above. The reconstructed rows are the row source of
    `fastpq.kernels.pair_table.pair_table`, so the table is the one
    `fastpq.kernels.pairs.pair_counts` returns for the decoded maps.

    Returns
    -------
    status : int
        `~fastpq.kernels.pair_table.DONE` (1); `~fastpq.kernels.pair_table.TABLE_FULL` (0) when
        more than ``capacity // 2`` pairs appeared (call again with a larger power-of-two
        ``capacity``: `fastpq.kernels.pair_table.grow_and_retry`); ``-1 - y`` when row ``y`` of
        the ground truth has a filter type outside 0..4, ``-1 - height - y`` for row ``y`` of the
        prediction.
    gt_ids, pred_ids, counts : ndarray of int64
        The pair table sorted by (gt, pred), as `fastpq.kernels.pairs.pair_counts` returns it.
    gt_present, gt_area, pred_present, pred_area : ndarray of int64
        Each map's distinct ids (ascending) and pixel counts (`fastpq.kernels.pairs.marginals`).
    """
    # Literal pixel sizes for the common RGB pair, so that the sample offsets in the row loops
    # are compile-time constants (the RGB gather then vectorises).
    if gt_bytes_per_pixel == 3 and pred_bytes_per_pixel == 3:
        return _pair_counts_rows((gt_scanlines, 3, -1), (pred_scanlines, 3, -1 - height), height,
                                 width, capacity)
    return _pair_counts_rows((gt_scanlines, gt_bytes_per_pixel, -1),
                             (pred_scanlines, pred_bytes_per_pixel, -1 - height), height, width,
                             capacity)


@njit(nogil=True, cache=True, inline="always")
def _pair_counts_rows(gt, pred, height, width, capacity):
    """The body of `pair_counts_scanlines`, inlined once per pair of pixel sizes; ``gt`` and
    ``pred`` are (scanlines, bytes per pixel, status of a bad filter type in row 0)."""
    # row y - 1 of each map starts as the specification's zeros
    rows = (np.zeros((2, width), np.uint32), np.zeros((2, width), np.uint32), 0, 0,
            np.zeros((width + 7) // 8 * 8, np.bool_), np.empty(width, np.int32))
    status, gt_ids, pred_ids, counts = pair_table(_scanline_rows, gt, pred, rows, height, width,
                                                  capacity)
    if status != DONE:
        return status, NO_PAIRS, NO_PAIRS, NO_PAIRS, NO_PAIRS, NO_PAIRS, NO_PAIRS, NO_PAIRS
    gt_present, gt_area = marginals(gt_ids, counts)
    pred_present, pred_area = marginals(pred_ids, counts)
    return DONE, gt_ids, pred_ids, counts, gt_present, gt_area, pred_present, pred_area


@njit(nogil=True, cache=True, inline="always")
def _scanline_rows(y, gt, pred, rows):
    """Row source of two PNGs' scanlines (`fastpq.kernels.pair_table.pair_table`): row ``y`` of
    each image reconstructed over its row ``y - 1``. ``rows`` holds both images' two row buffers,
    which buffer of each holds the last row, and the filters' scratch."""
    gt_scanlines, gt_bpp, gt_bad_row = gt
    pred_scanlines, pred_bpp, pred_bad_row = pred
    gt_rows, pred_rows, g, p, marks, positions = rows
    g = _next_row(gt_scanlines, y, gt_bpp, gt_rows, g, marks, positions)
    if g < 0:
        return gt_bad_row - y, gt_rows[0], pred_rows[0], rows
    p = _next_row(pred_scanlines, y, pred_bpp, pred_rows, p, marks, positions)
    if p < 0:
        return pred_bad_row - y, gt_rows[0], pred_rows[0], rows
    return DONE, gt_rows[g], pred_rows[p], (gt_rows, pred_rows, g, p, marks, positions)


@njit(nogil=True, cache=True, inline="always")
def _next_row(scanlines, y, bytes_per_pixel, rows, current, marks, positions):
    """Reconstruct row ``y`` from ``rows[current]`` (row y - 1). Returns which of the two rows
    now holds row ``y`` (an Up row is patched in place), or -1 for a bad filter type."""
    width = rows.shape[1]
    stride = 1 + width * bytes_per_pixel
    start = y * stride
    filter_type = scanlines[start]
    samples = scanlines[start + 1 : start + stride]
    above = rows[current]
    if filter_type == FILTER_UP:
        _patch_up_row(samples, bytes_per_pixel, above, marks, positions)
        return current
    if not _unfilter_row(filter_type, samples, bytes_per_pixel, rows[1 - current], above, marks,
                         positions):
        return -1
    return 1 - current
