"""Array adapters shared by every front door: torch/CuPy detection, host copies, the integer check,
COCO RGB -> ids.

Each helper exists once; the host path (:mod:`fastpq.core.inputs`), the evaluator and the GPU path
(:mod:`fastpq.gpu`) call these. torch and CuPy are never imported here unless a map is theirs.
"""

from __future__ import annotations

import sys

import numpy as np

from fastpq.errors import InputError


def is_torch_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor (torch is never imported here: a tensor implies it is)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def on_device(x) -> bool:
    """Whether a label map lives in GPU memory: a CUDA torch tensor, a CuPy array, or any object
    with ``__cuda_array_interface__``. The one test that separates the host and device paths."""
    if is_torch_tensor(x):
        return x.is_cuda
    return hasattr(x, "__cuda_array_interface__")


def to_host(x, *, what: str, image_index=None, image_id=None):
    """A host copy of a label map in GPU memory (:func:`on_device`).

    CUDA torch tensors become CPU tensors (``.cpu()``), CuPy arrays and other objects with
    ``__cuda_array_interface__`` NumPy arrays (through CuPy). The copy waits for the device: one
    host-device synchronisation per call.

    Parameters
    ----------
    x : GPU array
    what : str
        'ground-truth' or 'predicted', for messages.
    image_index, image_id : optional
        Where the map comes from, for messages (:func:`fastpq.errors.format_location`).

    Raises
    ------
    InputError
        The copy failed, or needs CuPy and CuPy is not installed.
    """
    if is_torch_tensor(x):
        return x.detach().cpu()
    try:
        import cupy
    except ImportError:
        raise InputError(f"the {what} map is in GPU memory (a {type(x).__name__}); copying it to "
                         "the host needs CuPy: pip install fastpq[gpu]",
                         image_index=image_index, image_id=image_id) from None
    try:
        return cupy.asnumpy(x if isinstance(x, cupy.ndarray) else cupy.asarray(x))
    except Exception as e:
        raise InputError(f"the {what} map is in GPU memory and could not be copied to the host: "
                         f"{e}", image_index=image_index, image_id=image_id) from None


def as_array(x, *, what: str, image_index=None, image_id=None) -> np.ndarray:
    """A host NumPy view of a label map, without a copy for host maps.

    NumPy arrays pass through; torch CPU tensors become their ``.numpy()`` view (any strides);
    maps in GPU memory (:func:`on_device`) are copied to the host first (:func:`to_host`, a
    synchronisation); other array-likes go through ``np.asarray``. The dtype is not checked here
    (:func:`check_integer_map` does).

    Raises
    ------
    InputError
        A GPU map that cannot be copied, or a tensor without a NumPy view (bfloat16, sparse,
        meta).
    """
    if isinstance(x, np.ndarray):
        return x
    if on_device(x):
        x = to_host(x, what=what, image_index=image_index, image_id=image_id)
        if isinstance(x, np.ndarray):
            return x
    if is_torch_tensor(x):
        try:
            return x.detach().numpy()
        except (TypeError, RuntimeError) as e:
            raise InputError(f"the {what} map, a {x.dtype} tensor ({x.layout}, on {x.device}), "
                             f"has no NumPy view: {e}", image_index=image_index,
                             image_id=image_id) from None
    try:
        return np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise InputError(f"the {what} map cannot be read as an array: {e}",
                         image_index=image_index, image_id=image_id) from None


def check_integer_map(array, what: str, *, image_index=None, image_id=None) -> None:
    """Refuse a label map whose dtype is not an integer type (bool included).

    Reads ``array.dtype`` only, so NumPy and CuPy arrays and torch tensors' NumPy views are
    checked alike, without touching device memory.

    Parameters
    ----------
    array : array with a NumPy ``dtype``
    what : str
        'ground-truth' or 'predicted', for the message.
    image_index, image_id : optional
        Where the map comes from (:func:`fastpq.errors.format_location`).

    Raises
    ------
    InputError
        A float, complex, bool or object dtype.
    """
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "iu":
        raise InputError(f"the {what} map has dtype {dtype}; label maps must hold integer ids "
                         "(cast float maps explicitly if their values are whole numbers)",
                         image_index=image_index, image_id=image_id)


def is_rgb_map(array) -> bool:
    """Whether a label map is in the COCO PNG layout: (..., H, W, 3 or 4) uint8."""
    return array.ndim >= 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8


def rgb_to_ids(rgb, dtype=np.uint32):
    """COCO panoptic RGB -> segment ids, ``id = R + 256 G + 65536 B`` (SPEC §1.1).

    Parameters
    ----------
    rgb : NumPy or CuPy array, shape (..., 3) or (..., 4)
        Channel values; a fourth (alpha) channel is ignored, as the reference ignores it.
    dtype : integer dtype, default uint32
        Of the ids, and of the arithmetic (the reference's ``rgb2id`` on a uint32 array computes
        in uint32, wrapping as uint32 does).

    Returns
    -------
    array of ``dtype``, shape ``rgb.shape[:-1]``, in ``rgb``'s array module.
    """
    wide = rgb[..., :3].astype(dtype)
    return wide[..., 0] + (wide[..., 1] << 8) + (wide[..., 2] << 16)
