"""fastpq's exception hierarchy.

Every refusal is a sentence that names the image (index and id), the file where there is one, and
the segment id, so users can fix their data without a debugger. The classes subclass the built-in
types users already catch (``ValueError``, ``KeyError``).
"""

from __future__ import annotations


class InputError(ValueError):
    """Input that fastpq refuses: malformed maps, segment tables or categories."""


class SegmentError(InputError):
    """A segment table and its label map disagree (ids, categories, duplicates)."""


class DecodeError(InputError):
    """A label-map file that cannot be read or decoded."""


class SuspectDataWarning(UserWarning):
    """Data the reference accepts silently but that is probably wrong (stale GT areas, GT ids
    missing from the JSON). fastpq reproduces the reference's numbers and names image and segment."""


def where(image_index=None, image_id=None, file=None) -> str:
    """'image 3 (id 42, file x.png)' — the location prefix of error messages."""
    parts = []
    if image_id is not None:
        parts.append(f"id {image_id!r}")
    if file is not None:
        parts.append(f"file {file}")
    head = f"image {image_index}" if image_index is not None else "image"
    return f"{head} ({', '.join(parts)})" if parts else head
