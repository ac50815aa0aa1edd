"""Reading COCO panoptic PNGs as segment-id maps, ``id = R + 256*G + 65536*B`` (SPEC §1.1).

The reference decodes every PNG with ``rgb2id(np.array(Image.open(f), dtype=np.uint32))``
(SPEC §2.2). The files it is given are 8-bit RGB (or RGBA) PNGs written by Pillow, OpenCV or
libpng, and for those this module takes a fast path: walk the chunks, inflate the IDAT stream with
libdeflate (``imagecodecs``; the standard library's zlib without it) into a buffer of the exact
size, and unfilter the scanlines straight into ids with one Numba pass
(`fastpq.kernels.png.unfilter_ids`). The inflate and the kernel both release the GIL, so threads
decode files in parallel. `pair_counts_bytes` goes one step further for a (ground truth,
prediction) pair of such files: both are unfiltered row by row straight into the pair histogram,
and no id map is written.

Everything else goes through Pillow exactly as the reference does, so the ids are the same:
palette, grayscale, 16-bit and interlaced PNGs, other image formats, and any file the fast path
finds damaged (Pillow then decides, as in the reference, whether it is readable). Where the
reference crashes, a `fastpq.errors.DecodeError` names the file and what is wrong:

* a 2-D image (modes ``1``, ``L``, ``P``, ``I;16``, ...) or one with fewer than three channels
  (``LA``): the reference's ``rgb2id`` fails with ``TypeError`` or ``IndexError`` (SPEC §2.7);
* a truncated or corrupt file, or one that is not an image at all.

A missing file raises the built-in ``FileNotFoundError``, as it does in the reference.

Ancillary chunks are not interpreted (their CRCs before the image data are checked, as Pillow
checks them); a file with a malformed ancillary chunk that Pillow refuses may decode here.
"""

from __future__ import annotations

import io
import os
import re
import struct
import threading
import zlib
from typing import NamedTuple

import numpy as np

from fastpq.core.arrays import rgb_to_ids
from fastpq.errors import DecodeError
from fastpq.kernels.pair_table import DONE, grow_and_retry
from fastpq.kernels.png import pair_counts_scanlines, unfilter_ids

try:
    import imagecodecs
except ImportError:  # the standard library's zlib inflates instead, about 15x slower
    imagecodecs = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: What Pillow accepts as a chunk type (``PngImagePlugin.is_cid``): four word characters.
_CHUNK_TYPE = re.compile(rb"\w{4}")

#: (colour type -> bytes per pixel) of the 8-bit, non-interlaced PNGs the fast path decodes.
_FAST_COLOUR_TYPES = {2: 3, 6: 4}
_COLOUR_TYPE_NAMES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}

#: Pillow's default ``Image.MAX_IMAGE_PIXELS``. Larger images go through Pillow, which warns or
#: refuses (``DecompressionBombError``) as it does for the reference.
_PILLOW_PIXEL_LIMIT = 89_478_485

#: Pillow image modes whose arrays are 2-D or have fewer than three channels, in words.
_NOT_RGB_MODES = {
    "1": "1-bit",
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "La": "grayscale+alpha",
    "P": "palette",
    "PA": "palette+alpha",
    "I": "32-bit grayscale",
    "I;16": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
    "F": "floating-point grayscale",
}


def read_ids(path, out=None):
    """Read a COCO panoptic PNG as a map of segment ids.

    Parameters
    ----------
    path : str or os.PathLike
        The PNG file.
    out : ndarray of uint32, shape (H, W), or IdBuffer, optional
        Where to write the ids (any strides, e.g. a slice of a padded batch buffer), so that
        memory is reused across images; partly overwritten when decoding fails. An
        :class:`IdBuffer` provides a view of its memory in the image's shape. A new array is
        allocated when omitted.

    Returns
    -------
    ndarray of uint32, shape (H, W)
        ``R + 256*G + 65536*B`` per pixel, bit-identical to the reference's
        ``rgb2id(np.array(Image.open(path), dtype=np.uint32))``; ``out`` when given.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    fastpq.errors.DecodeError
        The file is not an image, is truncated or corrupt, or is not RGB(A) (grayscale, palette).
    ValueError
        ``out`` is not a writable uint32 array of the image's shape.
    """
    name = os.fspath(path)
    return read_ids_bytes(read_file(name), name=name, out=out)


def read_file(path) -> bytes:
    """The whole contents of a file, with as few system calls as it takes (each releases and
    retakes the GIL; ``open().read()`` makes about twice as many). Raises what ``open`` raises."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)
        if len(data) == size:  # one byte more was asked for: this is the end of the file
            return data
        chunks = [data]
        while chunks[-1]:  # a short read, or the file grew: read up to the end
            chunks.append(os.read(fd, 1 << 20))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_ids_bytes(data, name="<bytes>", out=None):
    """Decode an in-memory PNG (or any image Pillow reads) as a map of segment ids.

    Parameters
    ----------
    data : bytes-like
        The encoded file.
    name : str, optional
        How error messages name the file.
    out : ndarray of uint32, shape (H, W), optional
        Where to write the ids, as in `read_ids`.

    Returns
    -------
    ndarray of uint32, shape (H, W)
        The ids, as in `read_ids`.

    Raises
    ------
    fastpq.errors.DecodeError
        As in `read_ids`.
    ValueError
        ``out`` is not a writable uint32 array of the image's shape.
    """
    data = memoryview(data).cast("B")
    png = _parse_png(data, name)
    if isinstance(png, str):
        return _read_ids_with_pillow(data, name, out, problem=png)
    ids = _output(out, png.height, png.width, name)
    problem = _inflate_and_unfilter(png, ids)
    if problem is None:
        return ids
    if problem.truncated:
        # Pillow would leave the missing rows at 0 and the reference would score them as void
        # without a word: a silent wrong number, refused here (SPEC, fastpq's decisions §3).
        raise DecodeError(f"{name} cannot be decoded: {problem.text}")
    return _read_ids_with_pillow(data, name, ids, problem=problem.text)


def pair_counts_bytes(gt_data, pred_data):
    """The pair histogram of two encoded COCO panoptic PNGs of one size, decoded straight into it.

    For the PNGs `read_ids` takes its fast path, the scanlines of both files are reconstructed
    row by row into the histogram (`fastpq.kernels.png.pair_counts_scanlines`), in one call that
    releases the GIL; no id map is written. The table is ``pair_counts(read_ids_bytes(gt_data),
    read_ids_bytes(pred_data))``.

    Parameters
    ----------
    gt_data, pred_data : bytes-like
        The encoded files.

    Returns
    -------
    tuple of ndarray of int64, or None
        ``(gt_ids, pred_ids, counts, gt_present, gt_area, pred_present, pred_area)``: the pair
        table sorted by (gt, pred) and each map's distinct ids with their pixel counts. None when
        either file is not an 8-bit RGB(A) PNG the fast path decodes, is damaged, or the two
        sizes differ; `read_ids_bytes` then decodes each file and names any problem.
    """
    gt = _parse_png(memoryview(gt_data).cast("B"), "")
    pred = _parse_png(memoryview(pred_data).cast("B"), "")
    if isinstance(gt, str) or isinstance(pred, str) or gt.shape != pred.shape:
        return None
    gt_scanlines = _whole_scanlines(gt, slot=0)
    pred_scanlines = _whole_scanlines(pred, slot=1) if gt_scanlines is not None else None
    if pred_scanlines is None:
        return None
    status, *tables = grow_and_retry(pair_counts_scanlines, gt_scanlines, gt.bytes_per_pixel,
                                     pred_scanlines, pred.bytes_per_pixel, gt.height, gt.width)
    return tuple(tables) if status == DONE else None


def _whole_scanlines(png, slot):
    """The inflated scanlines of a `_FastPng`, or None when the stream is damaged or short."""
    scanlines = _inflate(png.idat, png.scanline_bytes, slot)
    if isinstance(scanlines, str) or len(scanlines) != png.scanline_bytes:
        return None
    return scanlines


def read_shape(path):
    """The (height, width) of an image file, from the PNG header alone.

    Only the IHDR chunk is read, so this is cheap enough to size buffers for `read_ids`'s ``out``
    before decoding. Other formats are sized by Pillow from their header. The shape says nothing
    about whether `read_ids` will accept the file (a grayscale PNG has a shape too).

    Parameters
    ----------
    path : str or os.PathLike
        The image file.

    Returns
    -------
    tuple of int
        (height, width).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    fastpq.errors.DecodeError
        The file is not an image whose header Pillow can read.
    """
    name = os.fspath(path)
    with open(name, "rb") as file:
        head = file.read(24)
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) == 24:
        width, height = struct.unpack_from(">II", head, 16)
        return height, width
    Image = _import_pillow(name)
    try:
        with Image.open(name) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DecodeError(f"{name} is not an image Pillow can read ({error})") from error
    return height, width


class _FastPng(NamedTuple):
    """An 8-bit RGB(A) non-interlaced PNG, split into its header and its IDAT stream."""

    width: int
    height: int
    bytes_per_pixel: int
    idat: bytes | memoryview

    @property
    def shape(self):
        return self.height, self.width

    @property
    def scanline_bytes(self):
        """Size of the inflated IDAT stream: per row a filter byte and the samples."""
        return self.height * (1 + self.width * self.bytes_per_pixel)


def _parse_png(data, name):
    """Split a PNG into header and IDAT stream, or say why the fast path does not apply.

    Returns a `_FastPng`, or a string: the reason the file goes to Pillow. The reason becomes
    the error message if Pillow cannot read the file either.

    The chunk walk follows Pillow's reader where it matters for which files are accepted: chunk
    CRCs before the image data are checked, IDAT CRCs are not, the image data is the first run of
    consecutive IDAT chunks, and what follows it only has to be whole chunks (or end cleanly).
    """
    size = len(data)
    if data[:8] != PNG_SIGNATURE:
        return f"it is not a PNG file (it starts with {bytes(data[:8])!r})"
    pos = 8
    header = None
    idat = []
    while True:
        if pos + 8 > size:
            if idat:
                break  # image data complete, no IEND: Pillow reads such files
            return f"it is truncated: the file ends at byte {size} before any image data"
        length, chunk_type = struct.unpack_from(">I4s", data, pos)
        data_start = pos + 8
        data_end = data_start + length
        if not _CHUNK_TYPE.fullmatch(chunk_type):
            if idat:
                break
            return f"it is corrupt: bytes {pos}..{pos + 7} are not a chunk header"
        if chunk_type == b"IEND":
            break
        if data_end > size:
            return (
                f"it is truncated: the file ends inside the {chunk_type.decode()} chunk at byte "
                f"{pos} ({size - data_start} of its {length} bytes present)"
            )
        if chunk_type == b"IDAT":
            idat.append(data[data_start:data_end])
        elif idat:
            break  # the image data ends at the first chunk after the IDAT run
        elif zlib.crc32(data[pos + 4 : data_end]) != _read_crc(data, data_end):
            return f"it is corrupt: bad CRC in the {chunk_type.decode()} chunk at byte {pos}"
        elif header is None:
            if chunk_type != b"IHDR":
                return f"it is corrupt: the first chunk is {chunk_type.decode()}, not IHDR"
            if length != 13:
                return f"it is corrupt: its IHDR chunk holds {length} bytes, not 13"
            header = struct.unpack_from(">IIBBBBB", data, data_start)
        elif chunk_type == b"acTL":
            return "it is an animated PNG"
        pos = data_end + 4
    if header is None:
        return "it has no IHDR chunk"
    if not idat:
        return "it has no image data (no IDAT chunk)"
    width, height, bit_depth, colour_type, compression, filter_method, interlace = header
    bytes_per_pixel = _FAST_COLOUR_TYPES.get(colour_type)
    if bit_depth != 8 or bytes_per_pixel is None:
        kind = _COLOUR_TYPE_NAMES.get(colour_type, f"colour type {colour_type}")
        return f"it is a {bit_depth}-bit {kind} PNG"
    if interlace:
        return "it is an interlaced PNG"
    if compression or filter_method:
        return f"it declares compression method {compression}, filter method {filter_method}"
    if width == 0 or height == 0:
        return f"it declares an empty {width}x{height} image"
    if width * height > _PILLOW_PIXEL_LIMIT:
        return f"it is a {width}x{height} image, beyond Pillow's decompression-bomb limit"
    stream = idat[0] if len(idat) == 1 else b"".join(idat)
    return _FastPng(width, height, bytes_per_pixel, stream)


def _read_crc(data, pos):
    """The big-endian CRC stored at ``pos``, or -1 when the file ends before it."""
    if pos + 4 > len(data):
        return -1
    return struct.unpack_from(">I", data, pos)[0]


class _DataProblem(NamedTuple):
    """What is wrong with the image data of a `_FastPng`."""

    truncated: bool  # the data ends early (refused); else corrupt (Pillow decides)
    text: str  # in words, for the error message


def _inflate_and_unfilter(png, ids):
    """Decode a `_FastPng` into ``ids``; None on success, else a `_DataProblem`."""
    expected = png.scanline_bytes
    scanlines = _inflate(png.idat, expected)
    if isinstance(scanlines, str):
        return _DataProblem(False, f"its image data is corrupt: {scanlines}")
    if len(scanlines) != expected:
        return _DataProblem(True, f"its image data is truncated: it inflates to "
                                  f"{len(scanlines)} bytes, {png.height} rows of {png.width} "
                                  f"pixels need {expected}")
    bad_row = unfilter_ids(scanlines, png.bytes_per_pixel, ids)
    if bad_row >= 0:
        row_start = bad_row * (1 + png.width * png.bytes_per_pixel)
        return _DataProblem(False, f"its image data is corrupt: row {bad_row} has filter type "
                                   f"{scanlines[row_start]}, PNG filter types are 0 to 4")
    return None


def _inflate(stream, expected, slot=0):
    """Inflate a zlib stream of ``expected`` bytes (checksum verified) into this thread's buffer
    number ``slot``.

    Returns a uint8 array (shorter than ``expected`` when the stream ends early), or a string
    describing why inflating failed (including when the stream holds more than ``expected``).
    """
    too_long = f"the zlib stream holds more than the {expected} bytes of the image"
    if imagecodecs is not None and imagecodecs.DEFLATE.available:
        try:
            return imagecodecs.deflate_decode(stream, out=_scanline_buffer(expected, slot))
        except imagecodecs.DeflateError as error:
            if "INSUFFICIENT_SPACE" in str(error):
                return too_long
            return f"invalid zlib stream ({error})"
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(stream, expected + 1)
    except zlib.error as error:
        return f"invalid zlib stream ({error})"
    if len(raw) > expected:
        return too_long
    if len(raw) == expected and not inflater.eof:
        return "the zlib stream does not end after the image (or its checksum is missing)"
    return np.frombuffer(raw, np.uint8)


class IdBuffer:
    """Memory that successive decodes reuse, as ``read_ids(path, out=buffer)``: the ids of the
    last image read are a view of it, valid until the next read into the same buffer.

    Reading into fresh arrays costs a page fault per 4 kB on first touch (large NumPy
    arrays are mapped from the OS and returned to it when freed), which is as much as the decode
    itself for a panoptic PNG. One buffer per thread and per role (ground truth, prediction).
    """

    def __init__(self):
        self._memory = np.empty(0, np.uint32)

    def take(self, height: int, width: int) -> np.ndarray:
        """A (height, width) uint32 view, growing the memory when the image is larger."""
        if self._memory.size < height * width:
            self._memory = np.empty(height * width, np.uint32)
        return self._memory[: height * width].reshape(height, width)


_SCANLINES = threading.local()


def _scanline_buffer(size: int, slot: int) -> np.ndarray:
    """This thread's inflate output buffer number ``slot`` (0 or 1: two files decoded together);
    the scanlines never leave a decode."""
    memory = getattr(_SCANLINES, "memory", None)
    if memory is None:
        memory = _SCANLINES.memory = [np.empty(0, np.uint8), np.empty(0, np.uint8)]
    if memory[slot].size < size:
        memory[slot] = np.empty(size, np.uint8)
    return memory[slot][:size]


def _output(out, height, width, name):
    """``out`` checked against the image's shape, a view of an :class:`IdBuffer`, or a new
    (height, width) uint32 array."""
    if out is None:
        return np.empty((height, width), np.uint32)
    if isinstance(out, IdBuffer):
        return out.take(height, width)
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.uint32
        or out.shape != (height, width)
        or not out.flags.writeable
    ):
        found = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(
            f"out must be a writable uint32 array of shape {(height, width)} to hold the ids of "
            f"{name}; got {found}"
        )
    return out


def _import_pillow(name):
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            f"reading {name} needs Pillow, which is not installed: pip install fastpq[files]"
        ) from error
    return Image


def _read_ids_with_pillow(data, name, out, problem):
    """Decode with Pillow exactly as the reference does (SPEC §2.2), refusing what it crashes on.

    ``problem`` is why the fast path passed the file on; it is the error message when Pillow
    cannot read the file either.
    """
    Image = _import_pillow(name)
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            image_format = image.format or "image"
            pixels = np.array(image, dtype=np.uint32)
    except Image.UnidentifiedImageError as error:
        raise DecodeError(
            f"{name} cannot be decoded: {problem} (Pillow cannot identify it either)"
        ) from error
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        struct.error,
        Image.DecompressionBombError,
    ) as error:
        raise DecodeError(f"{name} cannot be decoded: {problem} (Pillow: {error})") from error
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        kind = _NOT_RGB_MODES.get(mode, f"{pixels.ndim}-D")
        raise DecodeError(
            f"{name} is a {kind} (mode {mode}) {image_format}; COCO panoptic PNGs encode "
            "segment ids as RGB (id = R + 256*G + 65536*B)"
        )
    ids = _output(out, pixels.shape[0], pixels.shape[1], name)
    # The reference's rgb2id on the uint32 array, in the same uint32 arithmetic.
    ids[...] = rgb_to_ids(pixels, np.uint32)
    return ids
