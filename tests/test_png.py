"""fastpq.io.png against the reference decode, ``rgb2id(np.array(Image.open(f), dtype=np.uint32))``.

Every image is compared with the reference run on the same bytes in the same test. Pillow does not
let a caller choose PNG filters, so a small encoder here writes PNGs with each filter type (and
mixed per row), chunked IDAT streams, ancillary chunks, 16-bit and interlaced images.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpq.errors import DecodeError
from fastpq.kernels.png import unfilter_ids
from fastpq.io import png as fastpng
from fastpq.io.png import read_ids, read_ids_bytes, read_shape

Image = pytest.importorskip("PIL.Image")

SAMPLE_PNGS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"
) / "panoptic_examples"


# --- the reference -------------------------------------------------------------------------------


def reference_ids(data):
    """panopticapi's decode (SPEC §2.2) of an encoded image."""
    utils = pytest.importorskip("panopticapi.utils")
    return utils.rgb2id(np.array(Image.open(io.BytesIO(data)), dtype=np.uint32))


def assert_reference_ids(data, expected=None):
    """fastpq decodes ``data`` to the reference's ids (and to ``expected`` when given)."""
    reference = reference_ids(data)
    got = read_ids_bytes(data, name="case.png")
    assert got.dtype == np.uint32
    assert got.shape == reference.shape
    np.testing.assert_array_equal(got, reference)
    if expected is not None:
        np.testing.assert_array_equal(got, expected)


# --- test images ---------------------------------------------------------------------------------


def to_rgb(ids):
    """The COCO panoptic colour of each id (panopticapi's id2rgb)."""
    return np.stack([ids & 0xFF, (ids >> 8) & 0xFF, (ids >> 16) & 0xFF], axis=-1).astype(np.uint8)


def panoptic_ids(height, width, seed):
    """A seeded map of a few large regions and elliptic blobs, ids anywhere in [0, 2**24)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    ids = np.zeros((height, width), np.uint32)
    for boundary in np.sort(rng.integers(0, height, 3)):
        ids[yy >= boundary + 3 * np.sin(xx / 5.0)] = rng.integers(1, 1 << 24)
    for _ in range(6):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(1, height // 3 + 2), rng.integers(1, width // 3 + 2)
        ids[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.integers(0, 1 << 24)
    return ids


def random_ids(height, width, seed):
    """Uniform ids over the whole encoding range, 0 and 2**24 - 1 included."""
    ids = np.random.default_rng(seed).integers(0, 1 << 24, (height, width), dtype=np.uint32)
    ids.flat[0] = 0
    ids.flat[-1] = (1 << 24) - 1
    return ids


def with_alpha(rgb, seed=0):
    alpha = np.random.default_rng(seed).integers(0, 256, rgb.shape[:2] + (1,), dtype=np.uint8)
    return np.concatenate([rgb, alpha], axis=-1)


def pillow_png(pixels, **save_options):
    return pillow_png_of(Image.fromarray(pixels), **save_options)


def pillow_png_of(image, **save_options):
    out = io.BytesIO()
    image.save(out, format="PNG", **save_options)
    return out.getvalue()


# --- a PNG encoder with a chosen filter per row (tests only) -------------------------------------

COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type
#: Adam7 passes as (x0, y0, dx, dy).
ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def chunk(kind, payload=b""):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def paeth(a, b, c):
    a, b, c = (v.astype(np.int16) for v in (a, b, c))
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)


def filter_scanlines(rows, bytes_per_pixel, filters):
    """PNG-filter byte rows (h, n) with one filter type per row; returns the scanline bytes."""
    left = np.zeros_like(rows)
    left[:, bytes_per_pixel:] = rows[:, :-bytes_per_pixel]
    up = np.zeros_like(rows)
    up[1:] = rows[:-1]
    up_left = np.zeros_like(rows)
    up_left[1:, bytes_per_pixel:] = rows[:-1, :-bytes_per_pixel]
    predictors = (
        np.zeros_like(rows),
        left,
        up,
        ((left.astype(np.uint16) + up) // 2).astype(np.uint8),
        paeth(left, up, up_left),
    )
    filters = np.asarray(filters, np.uint8)
    out = np.empty((rows.shape[0], 1 + rows.shape[1]), np.uint8)
    out[:, 0] = filters
    for filter_type, predictor in enumerate(predictors):
        chosen = filters == filter_type
        out[chosen, 1:] = rows[chosen] - predictor[chosen]
    return out.tobytes()


def encode_png(pixels, filters, *, interlace=False, idat_size=None, before=(), after=()):
    """A PNG of ``pixels`` (h, w, channels), uint8 or big-endian-written uint16.

    ``filters`` is one filter type for all rows or a sequence per row (per pass row when
    interlaced, cycled). ``idat_size`` splits the zlib stream into IDAT chunks of that many bytes;
    ``before``/``after`` are extra (type, payload) chunks around the image data.
    """
    height, width, channels = pixels.shape
    bit_depth = 8 * pixels.dtype.itemsize
    bytes_per_pixel = channels * pixels.dtype.itemsize
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    scanlines = b""
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        rows = sub.astype(sub.dtype.newbyteorder(">")).view(np.uint8).reshape(sub.shape[0], -1)
        row_filters = np.resize(np.asarray(filters, np.uint8), sub.shape[0])
        scanlines += filter_scanlines(rows, bytes_per_pixel, row_filters)
    header = ihdr(width, height, bit_depth, COLOUR_TYPES[channels], interlace=int(interlace))
    return assemble_png(header, scanlines, idat_size=idat_size, before=before, after=after)


def ihdr(width, height, bit_depth=8, colour_type=2, *, filter_method=0, interlace=0):
    """The 13 bytes of an IHDR chunk (compression method 0)."""
    fields = (width, height, bit_depth, colour_type, 0, filter_method, interlace)
    return struct.pack(">IIBBBBB", *fields)


#: Where the image data starts in `assemble_png`'s files: signature and the 25-byte IHDR chunk.
IHDR_END = 8 + 12 + 13


def assemble_png(header, scanlines, *, idat_size=None, before=(), after=()):
    """Signature, IHDR, ``before`` chunks, the deflated scanlines as IDAT, ``after``, IEND."""
    stream = zlib.compress(scanlines, 9)
    size = idat_size or max(len(stream), 1)
    parts = [fastpng.PNG_SIGNATURE, chunk(b"IHDR", header)]
    parts += [chunk(kind, payload) for kind, payload in before]
    parts += [chunk(b"IDAT", stream[i : i + size]) for i in range(0, len(stream), size)]
    parts += [chunk(kind, payload) for kind, payload in after]
    parts.append(chunk(b"IEND"))
    return b"".join(parts)


def rgb_png(ids, filters=4, **options):
    return encode_png(to_rgb(ids), filters, **options)


# --- the fast path: 8-bit RGB and RGBA -----------------------------------------------------------


@pytest.mark.parametrize("compress_level", range(10))
@pytest.mark.parametrize("alpha", [False, True], ids=["RGB", "RGBA"])
def test_pillow_written_png_each_compress_level(compress_level, alpha):
    ids = panoptic_ids(37, 53, seed=compress_level)
    pixels = with_alpha(to_rgb(ids)) if alpha else to_rgb(ids)
    assert_reference_ids(pillow_png(pixels, compress_level=compress_level), ids)


def test_pillow_written_png_optimize():
    ids = panoptic_ids(40, 61, seed=1)
    assert_reference_ids(pillow_png(to_rgb(ids), optimize=True), ids)


@pytest.mark.parametrize("filter_type", range(5), ids=["none", "sub", "up", "average", "paeth"])
@pytest.mark.parametrize("alpha", [False, True], ids=["RGB", "RGBA"])
@pytest.mark.parametrize("make_ids", [panoptic_ids, random_ids], ids=["regions", "random"])
def test_each_filter_type(filter_type, alpha, make_ids):
    ids = make_ids(23, 41, seed=filter_type)
    pixels = with_alpha(to_rgb(ids)) if alpha else to_rgb(ids)
    assert_reference_ids(encode_png(pixels, filter_type), ids)


@pytest.mark.parametrize("alpha", [False, True], ids=["RGB", "RGBA"])
@pytest.mark.parametrize("make_ids", [panoptic_ids, random_ids], ids=["regions", "random"])
def test_mixed_filters_per_row(alpha, make_ids):
    ids = make_ids(64, 29, seed=7)
    filters = np.random.default_rng(7).integers(0, 5, 64)
    pixels = with_alpha(to_rgb(ids)) if alpha else to_rgb(ids)
    assert_reference_ids(encode_png(pixels, filters), ids)


def test_paeth_ties_and_wraparound():
    # Neighbours at 0/255 make a + b - c leave [0, 255] and tie distances; every predictor branch.
    values = np.array([0, 1, 127, 128, 254, 255], np.uint8)
    rng = np.random.default_rng(3)
    pixels = values[rng.integers(0, len(values), (40, 40, 3))]
    wide = pixels.astype(np.uint32)
    ids = wide[..., 0] + 256 * wide[..., 1] + 65536 * wide[..., 2]
    for filter_type in range(5):
        assert_reference_ids(encode_png(pixels, filter_type), ids)


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 17), (17, 1), (2, 2), (3, 5), (5, 3), (7, 13), (2, 1023), (9, 4)]
)
@pytest.mark.parametrize("alpha", [False, True], ids=["RGB", "RGBA"])
def test_shapes(shape, alpha):
    ids = random_ids(*shape, seed=sum(shape))
    pixels = with_alpha(to_rgb(ids)) if alpha else to_rgb(ids)
    filters = np.arange(shape[0]) % 5
    assert_reference_ids(encode_png(pixels, filters), ids)


def test_pillow_written_shapes():
    for shape in [(1, 1), (1, 9), (9, 1), (4, 7)]:
        ids = random_ids(*shape, seed=1)
        assert_reference_ids(pillow_png(to_rgb(ids)), ids)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    alpha=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_images_any_filters(height, width, alpha, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 1 << 24, (height, width), dtype=np.uint32)
    pixels = with_alpha(to_rgb(ids), seed) if alpha else to_rgb(ids)
    assert_reference_ids(encode_png(pixels, rng.integers(0, 5, height)), ids)


def test_idat_split_into_many_chunks():
    ids = panoptic_ids(30, 30, seed=2)
    assert_reference_ids(rgb_png(ids, idat_size=7), ids)
    assert_reference_ids(rgb_png(ids, idat_size=1), ids)


def test_empty_idat_chunks_are_skipped():
    ids = panoptic_ids(8, 9, seed=2)
    data = rgb_png(ids, before=[(b"tEXt", b"k\x00v")])
    first_idat = data.index(b"IDAT") - 4
    data = data[:first_idat] + chunk(b"IDAT") + data[first_idat:]
    assert_reference_ids(data, ids)


def test_ancillary_chunks_are_ignored():
    ids = panoptic_ids(12, 15, seed=4)
    before = [(b"gAMA", struct.pack(">I", 45455)), (b"pHYs", struct.pack(">IIB", 1, 1, 0))]
    after = [(b"tEXt", b"Comment\x00written by a test"), (b"prVt", b"\x01\x02")]
    assert_reference_ids(rgb_png(ids, before=before, after=after), ids)


def test_rgb_with_trns_chunk():
    ids = panoptic_ids(10, 10, seed=5)
    assert_reference_ids(rgb_png(ids, before=[(b"tRNS", b"\x00\x00\x00\x00\x00\x00")]), ids)


def test_rgba_alpha_is_dropped():
    # SPEC §2.2: the reference silently drops alpha; a fully transparent pixel keeps its id.
    ids = random_ids(6, 6, seed=6)
    pixels = with_alpha(to_rgb(ids))
    pixels[..., 3] = 0
    assert_reference_ids(pillow_png(pixels), ids)


@pytest.mark.skipif(not SAMPLE_PNGS.is_dir(), reason="the shared COCO panoptic sample is absent")
def test_coco_panoptic_sample():
    files = sorted(SAMPLE_PNGS.glob("*.png"))
    assert files
    for file in files:
        expected = reference_ids(file.read_bytes())
        np.testing.assert_array_equal(read_ids(file), expected)
        assert read_shape(file) == expected.shape


def test_inflate_without_imagecodecs(monkeypatch):
    # Without imagecodecs the standard library's zlib inflates; same ids, same refusals.
    monkeypatch.setattr(fastpng, "imagecodecs", None)
    ids = panoptic_ids(33, 47, seed=8)
    assert_reference_ids(rgb_png(ids, filters=np.arange(33) % 5), ids)
    data = bytearray(rgb_png(ids))
    data[data.index(b"IDAT") + 30] ^= 0xFF
    with pytest.raises(DecodeError, match="bad.png"):
        read_ids_bytes(bytes(data), name="bad.png")


# --- the output buffer ---------------------------------------------------------------------------


def test_decode_into_out(tmp_path):
    ids = panoptic_ids(20, 30, seed=9)
    path = tmp_path / "a.png"
    path.write_bytes(rgb_png(ids))
    out = np.full((20, 30), 7, np.uint32)
    assert read_ids(path, out=out) is out
    np.testing.assert_array_equal(out, ids)


def test_decode_into_slice_of_padded_batch(tmp_path):
    batch = np.zeros((2, 25, 40), np.uint32)
    expected = []
    for index, (height, width) in enumerate([(20, 30), (25, 40)]):
        ids = panoptic_ids(height, width, seed=index)
        path = tmp_path / f"{index}.png"
        path.write_bytes(rgb_png(ids, filters=np.arange(height) % 5))
        read_ids(path, out=batch[index, :height, :width])
        expected.append(ids)
    np.testing.assert_array_equal(batch[0, :20, :30], expected[0])
    assert not batch[0, 20:].any() and not batch[0, :, 30:].any()
    np.testing.assert_array_equal(batch[1], expected[1])


def test_decode_into_out_through_pillow():
    ids = panoptic_ids(9, 11, seed=10)
    data = encode_png(to_rgb(ids).astype(np.uint16) * 257, 1)  # 16-bit: the Pillow path
    out = np.empty((9, 11), np.uint32)
    assert read_ids_bytes(data, out=out) is out
    np.testing.assert_array_equal(out, ids)


@pytest.mark.parametrize(
    "out",
    [
        np.empty((20, 31), np.uint32),
        np.empty((20, 30), np.int64),
        np.empty((20, 30, 1), np.uint32),
    ],
    ids=["shape", "dtype", "ndim"],
)
def test_out_of_wrong_shape_or_dtype(out):
    data = rgb_png(panoptic_ids(20, 30, seed=11))
    with pytest.raises(ValueError, match=r"uint32 array of shape \(20, 30\).*x\.png"):
        read_ids_bytes(data, name="x.png", out=out)


def test_read_only_out_is_refused():
    out = np.empty((4, 4), np.uint32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        read_ids_bytes(rgb_png(random_ids(4, 4, seed=0)), out=out)


# --- read_shape ----------------------------------------------------------------------------------


def test_read_shape(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(rgb_png(panoptic_ids(17, 23, seed=12)))
    assert read_shape(path) == (17, 23)
    bmp = tmp_path / "b.bmp"
    Image.fromarray(np.zeros((5, 8, 3), np.uint8)).save(bmp)
    assert read_shape(bmp) == (5, 8)


def test_read_shape_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_shape(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_bytes(b"not an image at all")
    with pytest.raises(DecodeError, match="notes.png"):
        read_shape(text)


# --- the Pillow path: what the reference reads through other modes ------------------------------


def test_16_bit_rgb_and_rgba():
    # Pillow reads 16-bit colour PNGs as 8-bit RGB(A), keeping the high byte of each sample.
    ids = random_ids(7, 9, seed=13)
    high = to_rgb(ids).astype(np.uint16) * 256
    wide = high + np.random.default_rng(13).integers(0, 256, high.shape).astype(np.uint16)
    assert_reference_ids(encode_png(wide, 4), ids)
    assert_reference_ids(encode_png(np.concatenate([wide, wide[..., :1]], axis=-1), 2), ids)


def test_16_bit_grayscale_with_alpha():
    # Pillow reads it as RGBA with R = G = B, so the reference gets ids, not an error.
    pixels = np.random.default_rng(14).integers(0, 65536, (6, 5, 2)).astype(np.uint16)
    assert_reference_ids(encode_png(pixels, 3))


@pytest.mark.parametrize("alpha", [False, True], ids=["RGB", "RGBA"])
def test_interlaced(alpha):
    ids = random_ids(19, 13, seed=15)
    pixels = with_alpha(to_rgb(ids)) if alpha else to_rgb(ids)
    assert_reference_ids(encode_png(pixels, [1, 2, 3, 4, 0], interlace=True), ids)


def test_other_image_formats_read_like_the_reference():
    ids = random_ids(6, 7, seed=16)
    for image_format in ["BMP", "TIFF"]:
        out = io.BytesIO()
        Image.fromarray(to_rgb(ids)).save(out, format=image_format)
        assert_reference_ids(out.getvalue(), ids)


def two_d_image(mode):
    gray = np.random.default_rng(17).integers(0, 256, (6, 8)).astype(np.uint8)
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)
    return Image.fromarray(gray).convert(mode)


@pytest.mark.parametrize(
    "mode, kind",
    [
        ("L", "grayscale"),
        ("P", "palette"),
        ("1", "1-bit"),
        ("I;16", "16-bit grayscale"),
        ("LA", "grayscale\\+alpha"),
    ],
)
def test_non_rgb_modes_are_refused_where_the_reference_crashes(mode, kind):
    encoded = pillow_png_of(two_d_image(mode))
    assert Image.open(io.BytesIO(encoded)).mode == mode
    with pytest.raises((TypeError, IndexError)):
        reference_ids(encoded)
    with pytest.raises(DecodeError, match=rf"gray\.png is a {kind} \(mode {mode}\) PNG.*RGB"):
        read_ids_bytes(encoded, name="gray.png")


def test_grayscale_error_is_a_value_error():
    encoded = pillow_png_of(Image.fromarray(np.zeros((3, 3), np.uint8)))
    with pytest.raises(ValueError):
        read_ids_bytes(encoded)


# --- damaged files -------------------------------------------------------------------------------


def sample_png():
    return rgb_png(panoptic_ids(24, 32, seed=18), filters=np.arange(24) % 5)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "000042.png"
    with pytest.raises(FileNotFoundError, match="000042.png"):
        read_ids(path)


@pytest.mark.parametrize(
    "contents, message",
    [
        (b"", "not a PNG file"),
        (b"hello, world: definitely not an image", "not a PNG file"),
        (fastpng.PNG_SIGNATURE, "truncated"),
    ],
    ids=["empty", "text", "signature only"],
)
def test_not_a_png(tmp_path, contents, message):
    path = tmp_path / "fake.png"
    path.write_bytes(contents)
    with pytest.raises(DecodeError, match=rf"{path.name} cannot be decoded: .*{message}"):
        read_ids(path)


@pytest.mark.parametrize("cut", [20, 37, 45, 60, -40, -30])
def test_truncated_file(tmp_path, cut):
    data = sample_png()
    path = tmp_path / "cut.png"
    path.write_bytes(data[:cut])
    with pytest.raises(Exception):
        reference_ids(data[:cut])
    with pytest.raises(DecodeError, match=r"cut\.png cannot be decoded: .*truncated"):
        read_ids(path)


def test_corrupt_image_data():
    data = bytearray(sample_png())
    data[data.index(b"IDAT") + 20] ^= 0xFF
    with pytest.raises(Exception):
        reference_ids(bytes(data))
    with pytest.raises(DecodeError, match=r"bad\.png cannot be decoded: .*image data is corrupt"):
        read_ids_bytes(bytes(data), name="bad.png")


def test_bad_filter_type():
    rows = to_rgb(panoptic_ids(6, 6, seed=20)).reshape(6, 18)
    scanlines = bytearray(filter_scanlines(rows, 3, [1] * 6))
    scanlines[3 * (1 + 18)] = 7  # the filter byte of row 3
    data = assemble_png(ihdr(6, 6), bytes(scanlines))
    with pytest.raises(Exception):
        reference_ids(data)
    with pytest.raises(DecodeError, match="row 3 has filter type 7"):
        read_ids_bytes(data)


def test_bad_header_crc():
    data = bytearray(sample_png())
    data[IHDR_END - 1] ^= 0x01  # the IHDR CRC
    with pytest.raises(Exception):
        reference_ids(bytes(data))
    with pytest.raises(DecodeError, match="bad CRC in the IHDR chunk"):
        read_ids_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        "no IEND",
        "IEND CRC cut",
        "IDAT CRC wrong",
        "zlib checksum cut",
        "garbage after the image data",
    ],
)
def test_damage_the_reference_tolerates(damage):
    # Pillow reads these; so does the reference, so fastpq must return the same ids.
    ids = panoptic_ids(16, 16, seed=21)
    data = bytearray(rgb_png(ids))
    if damage == "no IEND":
        data = data[:-12]
    elif damage == "IEND CRC cut":
        data = data[:-2]
    elif damage == "IDAT CRC wrong":
        data[-13] ^= 0xFF
    elif damage == "zlib checksum cut":
        data = data[:-18]
    else:
        data = data[:-12] + b"\x00\x00\x00\x00\xff\xfe!!garbage"
    assert_reference_ids(bytes(data), ids)


ONE_PIXEL = b"\x00\x01\x02\x03"  # the scanline of a 1x1 RGB image
GAMMA_FIRST = fastpng.PNG_SIGNATURE + chunk(b"gAMA", b"\x00\x00\xb1\x8f") + chunk(b"IEND")
NO_IDAT = fastpng.PNG_SIGNATURE + chunk(b"IHDR", ihdr(1, 1)) + chunk(b"IEND")
LONG_IHDR = fastpng.PNG_SIGNATURE + chunk(b"IHDR", ihdr(1, 1) + b"\x00") + chunk(b"IEND")
BAD_CHUNK_TYPE = fastpng.PNG_SIGNATURE + b"\x00\x00\x00\x0d\x01\x02\x03\x04" + bytes(17)


@pytest.mark.parametrize(
    "data, message",
    [
        (GAMMA_FIRST, "first chunk is gAMA"),
        (NO_IDAT, "no image data"),
        (LONG_IHDR, "IHDR chunk holds 14 bytes"),
        (assemble_png(ihdr(1, 1, filter_method=1), ONE_PIXEL), "filter method 1"),
        (assemble_png(ihdr(20000, 20000), ONE_PIXEL), "decompression-bomb limit"),
        (assemble_png(ihdr(0, 3), ONE_PIXEL), "empty 0x3 image"),
        (BAD_CHUNK_TYPE, "not a chunk header"),
    ],
    ids=[
        "no IHDR first",
        "no IDAT",
        "long IHDR",
        "filter method",
        "too large",
        "empty",
        "bad chunk type",
    ],
)
def test_malformed_headers(data, message):
    with pytest.raises(Exception):
        reference_ids(data)
    with pytest.raises(DecodeError, match=rf"h\.png cannot be decoded: .*{message}"):
        read_ids_bytes(data, name="h.png")


def test_animated_png_reads_its_first_frame():
    first, second = panoptic_ids(8, 8, seed=23), panoptic_ids(8, 8, seed=24)
    frames = [Image.fromarray(to_rgb(ids)) for ids in (first, second)]
    out = io.BytesIO()
    frames[0].save(out, format="PNG", save_all=True, append_images=frames[1:])
    assert b"acTL" in out.getvalue()
    assert_reference_ids(out.getvalue(), first)


def test_truncated_chunk_after_the_image_data():
    # A chunk header after IDAT whose data runs past the end: Pillow (so the reference) fails.
    data = sample_png()[:-12] + struct.pack(">I", 1000) + b"tEXt" + b"cut short"
    with pytest.raises(OSError):
        reference_ids(data)
    with pytest.raises(DecodeError, match="truncated: the file ends inside the tEXt chunk"):
        read_ids_bytes(data)


def test_image_data_ending_early_is_refused():
    # The reference's Pillow stops at the end of the zlib stream and leaves the missing rows 0,
    # a silent void band; fastpq refuses the file instead of scoring a wrong number.
    ids = panoptic_ids(10, 10, seed=19)
    data = rgb_png(ids)[:IHDR_END] + rgb_png(ids[:9])[IHDR_END:]
    with pytest.raises(DecodeError, match=r"x.png cannot be decoded: its image data is truncated"):
        read_ids_bytes(data, name="x.png")


def test_extra_image_data_goes_to_pillow():
    # More scanlines than the header declares: Pillow stops at the last row, so the reference
    # reads the image; the fast path's exact-size inflate refuses and hands it over.
    ids = panoptic_ids(12, 10, seed=22)
    data = rgb_png(ids)[:IHDR_END] + rgb_png(np.vstack([ids, ids[:3]]))[IHDR_END:]
    assert_reference_ids(data, ids)


# --- the kernel ----------------------------------------------------------------------------------


def test_kernel_reports_first_bad_row():
    scanlines = np.zeros(3 * (1 + 2 * 3), np.uint8)
    scanlines[1 * 7] = 5
    scanlines[2 * 7] = 9
    ids = np.full((3, 2), 99, np.uint32)
    assert unfilter_ids(scanlines, 3, ids) == 1
    assert (ids[0] == 0).all() and (ids[1:] == 99).all()


def test_threads_decode_independently(tmp_path):
    images = [panoptic_ids(40, 50, seed=seed) for seed in range(8)]
    paths = []
    for index, ids in enumerate(images):
        paths.append(tmp_path / f"{index}.png")
        paths[-1].write_bytes(rgb_png(ids, filters=np.arange(40) % 5))
    results = [None] * len(paths)

    def decode(index):
        for _ in range(5):
            results[index] = read_ids(paths[index])

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, ids in zip(results, images):
        np.testing.assert_array_equal(got, ids)


def test_id_buffer_reused_and_grown_across_sizes():
    buffer = fastpng.IdBuffer()
    seen = []
    for k, (height, width) in enumerate([(5, 7), (3, 4), (9, 11), (2, 2)]):
        ids = panoptic_ids(height, width, seed=k)
        got = read_ids_bytes(pillow_png(to_rgb(ids)), out=buffer)
        np.testing.assert_array_equal(got, ids)
        assert got.shape == (height, width) and got.flags.c_contiguous
        seen.append(got.base if got.base is not None else got)
    assert seen[0] is seen[1]  # the smaller image reuses the memory of the first
    assert seen[2] is seen[3]  # which grew for the larger one and is reused again


# --- two PNGs decoded straight into the pair histogram -------------------------------------------


def reference_pair_tables(gt_data, pred_data):
    """The pair table of the reference's decodes, with each side's marginals."""
    from fastpq.kernels.pairs import marginals, pair_counts

    g, p, c = pair_counts(reference_ids(gt_data), reference_ids(pred_data))
    return (g, p, c, *marginals(g, c), *marginals(p, c))


def assert_pair_tables(gt_data, pred_data):
    got = fastpng.pair_counts_bytes(gt_data, pred_data)
    assert got is not None
    for got_array, expected in zip(got, reference_pair_tables(gt_data, pred_data), strict=True):
        assert got_array.dtype == np.int64
        np.testing.assert_array_equal(got_array, expected)


@pytest.mark.parametrize("gt_filter", range(5), ids=["none", "sub", "up", "average", "paeth"])
@pytest.mark.parametrize("alphas", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["RGB-RGB", "RGB-RGBA", "RGBA-RGB", "RGBA-RGBA"])
def test_pair_histogram_each_filter_type(gt_filter, alphas):
    gt_ids = panoptic_ids(29, 37, seed=gt_filter)
    pred_ids = panoptic_ids(29, 37, seed=10 + gt_filter)
    pred_ids[::4] = gt_ids[::4]  # some rows where the prediction agrees
    gt_pixels = with_alpha(to_rgb(gt_ids), 1) if alphas[0] else to_rgb(gt_ids)
    pred_pixels = with_alpha(to_rgb(pred_ids), 2) if alphas[1] else to_rgb(pred_ids)
    pred_filters = np.random.default_rng(gt_filter).integers(0, 5, 29)
    assert_pair_tables(encode_png(gt_pixels, gt_filter), encode_png(pred_pixels, pred_filters))


def test_pair_histogram_of_pillow_written_pngs():
    gt_ids, pred_ids = panoptic_ids(120, 90, seed=3), panoptic_ids(120, 90, seed=4)
    assert_pair_tables(pillow_png(to_rgb(gt_ids)), pillow_png(to_rgb(pred_ids)))
    assert_pair_tables(pillow_png(to_rgb(gt_ids)), pillow_png(to_rgb(gt_ids)))


def test_pair_histogram_grows_its_table():
    # 64 x 64 random pairs: far more than the initial table holds.
    gt_ids, pred_ids = random_ids(64, 64, seed=5), random_ids(64, 64, seed=6)
    assert_pair_tables(rgb_png(gt_ids, filters=1), rgb_png(pred_ids, filters=2))


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 10),
    width=st.integers(1, 10),
    alphas=st.tuples(st.booleans(), st.booleans()),
    seed=st.integers(0, 2**32 - 1),
)
def test_pair_histogram_random_images_any_filters(height, width, alphas, seed):
    rng = np.random.default_rng(seed)
    maps = []
    for alpha in alphas:
        ids = rng.integers(0, 4, (height, width), dtype=np.uint32) * 0x10101
        pixels = with_alpha(to_rgb(ids), seed) if alpha else to_rgb(ids)
        maps.append(encode_png(pixels, rng.integers(0, 5, height)))
    assert_pair_tables(*maps)


def test_pair_histogram_leaves_other_files_to_the_one_map_decoder():
    ids = panoptic_ids(12, 14, seed=7)
    good = rgb_png(ids)
    rows = to_rgb(ids).reshape(12, 42)
    scanlines = bytearray(filter_scanlines(rows, 3, [2] * 12))
    scanlines[5 * (1 + 42)] = 7  # the filter byte of row 5
    bad_filter = assemble_png(ihdr(14, 12), bytes(scanlines))
    palette = pillow_png_of(Image.fromarray(to_rgb(ids)).convert("P"))
    truncated_data = rgb_png(ids)
    start = truncated_data.index(b"IDAT") + 4
    truncated_data = (truncated_data[: start - 8] + struct.pack(">I", 10) + b"IDAT"
                      + truncated_data[start : start + 10] + b"\0\0\0\0" + chunk(b"IEND"))
    for gt_data, pred_data in [
        (good, rgb_png(panoptic_ids(12, 15, seed=7))),  # another size
        (good, bad_filter), (bad_filter, good),
        (good, palette), (palette, good),
        (good, truncated_data), (b"not a png", good),
    ]:
        assert fastpng.pair_counts_bytes(gt_data, pred_data) is None


def test_pair_histogram_kernel_reports_the_bad_row_and_side():
    from fastpq.kernels.png import pair_counts_scanlines

    good = np.zeros(4 * (1 + 2 * 3), np.uint8)
    bad = good.copy()
    bad[2 * 7] = 5  # row 2
    assert pair_counts_scanlines(bad, 3, good, 3, 4, 2, 16)[0] == -1 - 2
    assert pair_counts_scanlines(good, 3, bad, 3, 4, 2, 16)[0] == -1 - 4 - 2
    status, g, p, c, *_ = pair_counts_scanlines(good, 3, good, 3, 4, 2, 16)
    assert status == 1 and g.tolist() == [0] and p.tolist() == [0] and c.tolist() == [8]


def test_pair_histogram_without_imagecodecs(monkeypatch):
    monkeypatch.setattr(fastpng, "imagecodecs", None)
    gt_ids, pred_ids = panoptic_ids(31, 26, seed=11), panoptic_ids(31, 26, seed=12)
    assert_pair_tables(rgb_png(gt_ids, filters=np.arange(31) % 5), pillow_png(to_rgb(pred_ids)))
