"""fastpq's exception hierarchy and its one location format.

Every refusal is a sentence that names where it happened, so users can fix their data without a
debugger. Where is kept as fields (file, image index, image id, segment id, the update of a
streaming metric) on the exception, and :func:`format_location` turns them into the one prefix
that every message starts with: ``image 3 (id 42, file x.png): ...``. Callers that know more about
the location than the code that raised (the evaluator knows the image id of a batch position)
rebuild the error from its fields with :meth:`FastPQError.relocated`; nothing parses message
text.

The classes subclass the built-in types users already catch (``ValueError``,
``FileNotFoundError``). The errors of the reference's ``pq_compute`` that fastpq reproduces keep
the reference's built-in types (``KeyError``, ``Exception``) and texts exactly
(:func:`reference_error`), with the location fields set as attributes.

Suspect data (accepted, as the reference accepts it, but probably wrong) is not raised: it is a
:class:`SuspectNote` value that the entry point turns into a :class:`SuspectDataWarning`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

#: The location fields every fastpq error and note carries (None: not known or not relevant).
LOCATION_FIELDS = ("image_index", "image_id", "file", "segment_id", "update")


def format_location(image_index=None, image_id=None, file=None, update=None) -> str:
    """The location prefix of every message: ``'image 3 (id 42, file x.png)'``.

    Parameters
    ----------
    image_index : int, optional
        Position of the image in the call (or in the update, with ``update``).
    image_id : optional
        The user's image id (``image_id`` of a COCO annotation, ``image_ids=`` of
        :func:`fastpq.evaluate`); shown with ``repr``.
    file : str or os.PathLike, optional
        The file the problem was found in.
    update : int, optional
        Number of the streaming metric's ``update()`` call the image came in (counted from 0
        since the metric was created or reset).

    Returns
    -------
    str
        The file alone when no image field is known (a whole-file problem: ``'gt.json'``),
        ``'image'`` alone when nothing is known; never ends with a colon.
    """
    if image_index is None and image_id is None and update is None and file is not None:
        return os.fspath(file)
    head = "image" if image_index is None else f"image {image_index}"
    if update is not None:
        head += f" of update {update}"
    details = []
    if image_id is not None:
        details.append(f"id {image_id!r}")
    if file is not None:
        details.append(f"file {os.fspath(file)}")
    if update is not None:
        details.append("updates counted from 0 since the metric was created or reset")
    return f"{head} ({', '.join(details)})" if details else head


def _located(message: str, location: dict) -> str:
    """``message`` behind its location prefix, or alone when no image field is known."""
    if all(location.get(name) is None for name in ("image_index", "image_id", "file", "update")):
        return message
    where = format_location(location.get("image_index"), location.get("image_id"),
                            location.get("file"), location.get("update"))
    return f"{where}: {message}"


class FastPQError(Exception):
    """Base of fastpq's errors: a message and where it happened, as fields.

    Parameters
    ----------
    message : str
        What is wrong, without the location (a sentence; ``'the predicted map has dtype
        float32; ...'``).
    image_index, image_id, file, segment_id, update : optional
        Where (see :func:`format_location`); ``segment_id`` is the offending segment's id, which
        the message also names.

    Attributes
    ----------
    message : str
        As given.
    image_index, image_id, file, segment_id, update
        As given (None when not known).

    Notes
    -----
    ``str(error)`` and ``error.args[0]`` are the full sentence: the location prefix, a colon,
    the message. Errors pickle with their fields (Dask workers send them to the client).
    """

    def __init__(self, message: str, *, image_index=None, image_id=None, file=None,
                 segment_id=None, update=None):
        self.message = message
        self.image_index = image_index
        self.image_id = image_id
        self.file = None if file is None else os.fspath(file)
        self.segment_id = segment_id
        self.update = update
        super().__init__(self._text())

    def _text(self) -> str:
        return _located(self.message, self.location)

    @property
    def location(self) -> dict:
        """The location fields, ``{name: value}`` for every name of :data:`LOCATION_FIELDS`."""
        return {name: getattr(self, name) for name in LOCATION_FIELDS}

    def relocated(self, **location) -> "FastPQError":
        """The same error (same class, same message) with some location fields replaced.

        Parameters
        ----------
        **location
            New values for fields of :data:`LOCATION_FIELDS`.

        Raises
        ------
        TypeError
            A name that is not a location field.
        """
        unknown = set(location) - set(LOCATION_FIELDS)
        if unknown:
            raise TypeError(f"not location fields: {sorted(unknown)}")
        return type(self)(self.message, **{**self.location, **location})

    def __str__(self) -> str:
        return self.args[0] if self.args else ""

    def __reduce__(self):
        return _rebuild_error, (type(self), self.message, self.location)


def _rebuild_error(kind, message, location):
    """Unpickle a :class:`FastPQError` from its class, message and location fields."""
    return kind(message, **location)


class InputError(FastPQError, ValueError):
    """Input that fastpq refuses: malformed maps, segment tables or categories."""


class SegmentError(InputError):
    """A segment table and its label map disagree (ids, categories, duplicates)."""


class DecodeError(InputError):
    """A label-map file that cannot be read or decoded."""


class MissingFileError(FastPQError, FileNotFoundError):
    """A label-map file that does not exist (a ``FileNotFoundError``, as in the reference)."""


def reference_error(kind: type, text: str, **location) -> BaseException:
    """An exception of the reference's ``pq_compute``: its built-in type (``KeyError``,
    ``Exception``) and its text exactly, followed by the file in brackets (``'... [path]'``) when
    ``location`` names one, so that code catching or matching the reference's errors keeps
    working. The location fields (:data:`LOCATION_FIELDS`) are set as attributes.
    """
    file = location.get("file")
    error = kind(text if file is None else f"{text} [{os.fspath(file)}]")
    for name in LOCATION_FIELDS:
        setattr(error, name, location.get(name))
    return error


class SuspectDataWarning(UserWarning):
    """Data the reference accepts silently but that is probably wrong (stale GT areas, GT ids
    missing from the JSON). fastpq reproduces the reference's numbers and names image and segment.

    Made from a :class:`SuspectNote` (``warnings.warn(note, SuspectDataWarning)``), it keeps the
    note in :attr:`note`; its text is the note's.
    """

    def __init__(self, note):
        self.note = note if isinstance(note, SuspectNote) else None
        super().__init__(str(note))


@dataclass(frozen=True)
class SuspectNote:
    """A note about suspect data, a value returned by the code that found it.

    The entry point turns it into a :class:`SuspectDataWarning`; ``str(note)`` is the warning's
    text, located like an error's (:func:`format_location`).

    Attributes
    ----------
    message : str
        What is suspect and what fastpq did about it.
    image_index, image_id, file, segment_id, update
        Where, as in :class:`FastPQError`.
    """

    message: str
    image_index: int | None = None
    image_id: object = None
    file: str | None = None
    segment_id: int | None = None
    update: int | None = None

    @property
    def location(self) -> dict:
        """The location fields, as :attr:`FastPQError.location`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "message"}

    def relocated(self, **location) -> "SuspectNote":
        """The same note with some location fields replaced."""
        return replace(self, **location)

    def __str__(self) -> str:
        return _located(self.message, self.location)
