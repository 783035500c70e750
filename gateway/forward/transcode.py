"""Re-encoding a processed object for a destination that refuses its stored syntax.

Kept apart from the senders: a sender only moves bytes; this module owns the
one place where an object is decoded and encoded again on its way out.  Pixel
data is re-encoded through the pipeline and so always verified; between the
uncompressed little endian syntaxes (implicit, explicit, deflated) only the
element encoding changes, each value keeping its bytes and getting the VR the
standard gives it (:mod:`gateway.pipeline.encoding`); so does a big endian
object without pixel data, its binary words swapped.  No value is parsed on
the way: pydicom's writer would decode and encode each one again, replacing
text not valid in its character set and quoting a value it finds malformed
in a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydicom import Dataset, dcmread
from pydicom.uid import UID

from gateway.dicom.filemeta import read_file_meta, stamp
from gateway.dicom.uids import (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
                                NATIVE_SYNTAXES)
from gateway.errors import PermanentForwardError, TransientForwardError, UnsendableError
from gateway.logs import get_logger
from gateway.pipeline import Outcome, recompress, to_little_endian
from gateway.pipeline.encoding import needs_reencoding, reencode
from gateway.spool import Job

__all__ = ["Ladder", "Transcode", "encode_for", "encoded", "stored_syntax"]

_log = get_logger("forward")

_T = TypeVar("_T")

# Re-encodes the object at a path from its stored syntax to a target one: None when it cannot.
Transcode = Callable[[Path, str, str], "Dataset | None"]

# Uncompressed and little endian: an object moves between these by its element encoding alone.
_LITTLE_ENDIAN_UNCOMPRESSED = NATIVE_SYNTAXES | {DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}
# Pixel Data, Float and Double Float Pixel Data: what only the pipeline converts.
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def encode_for(path: Path, stored: str, target: str, *, verify: bool = True,
               encode_options: Mapping[str, Mapping[str, Any]] | None = None,
               proven: Callable[[Outcome], None] | None = None) -> Dataset | None:
    """The object re-encoded (verified) in `target`, or None if it cannot be.

    Between the uncompressed little endian syntaxes only the element
    encoding changes, every value's bytes stay (:func:`reencode`); anything
    else goes through the pipeline, with the configured `encode_options` (see
    :func:`gateway.pipeline.recompress`), and `proven` is given the
    outcome of each new encoding (its verifying decoders).  Either way the
    dataset is marked as encoded the way `target` encodes and names `target`
    in its file meta, so that pydicom writes its raw elements as they are,
    and the gateway as the file's writer.
    """
    ds = dcmread(path)
    if stored in _LITTLE_ENDIAN_UNCOMPRESSED and target in _LITTLE_ENDIAN_UNCOMPRESSED:
        implicit = target == IMPLICIT_VR_LITTLE_ENDIAN
        if needs_reencoding(ds, implicit):
            reencode(ds, implicit=implicit)
        ds.file_meta.TransferSyntaxUID = UID(target)
        stamp(ds.file_meta)  # re-encoded here: the gateway wrote it (PS3.10 7.1)
        return ds
    if (stored == EXPLICIT_VR_BIG_ENDIAN and target in _LITTLE_ENDIAN_UNCOMPRESSED
            and not any(tag in ds for tag in _PIXEL_TAGS)):
        # No pixels for the pipeline to carry (an SR, a presentation state): the words of binary values
        # (LUT, overlay and icon data) are swapped here, numbers convert as they are written.
        try:
            to_little_endian(ds)
        except Exception as exc:  # noqa: BLE001 - pydicom parses every raw element here; bad values raise anything
            _log.warning("%s cannot be converted from big endian: %s: %s", path.name, type(exc).__name__, exc)
            return None
        ds.file_meta.TransferSyntaxUID = UID(target)
        stamp(ds.file_meta)  # re-encoded here: the gateway wrote it (PS3.10 7.1)
        return ds
    try:
        outcome = recompress(ds, target, verify=verify, encode_options=encode_options)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - includes a Rust decoder's PanicException
        _log.warning("re-encoding %s to %s failed: %s: %s", path.name, target, type(exc).__name__, exc)
        return None
    if str(outcome.transfer_syntax) != target:
        _log.warning("%s cannot be re-encoded in %s: %s", path.name, UID(target).name, outcome.reason)
        return None
    if proven is not None and outcome.recompressed:
        proven(outcome)
    return outcome.dataset


def encoded(transcode: Transcode, path: Path, stored: str, target: str,
            write: Callable[[Dataset], _T]) -> _T:
    """`write` (a sender's serialiser) applied to the object re-encoded in `target` by `transcode`.

    A sender tries the syntaxes of its ladder in turn with this; whatever
    keeps one syntax from being written (the transcoder's None, or an
    exception while re-encoding or serialising) says only that the object
    cannot go in that syntax, so the sender goes on with the next.

    Raises
    ------
    PermanentForwardError
        The object cannot be encoded in `target`; the message says why.
    TransientForwardError
        The processed object cannot be read (the disk, not the object).
    """
    name = UID(target).name
    try:
        dataset = transcode(path, stored, target)
        data = None if dataset is None else write(dataset)
    except OSError as exc:
        raise TransientForwardError(f"cannot read processed object {path.name}: {exc}") from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a decoder's panic or a value the writer refuses: this syntax only
        _log.warning("encoding %s in %s failed: %s: %s", path.name, name, type(exc).__name__, exc)
        raise PermanentForwardError(f"{name}: {type(exc).__name__}: {exc}") from exc
    if data is None:
        raise PermanentForwardError(f"{name}: cannot be re-encoded from {UID(stored).name} (see the log)")
    return data


def stored_syntax(path: Path) -> tuple[int, str]:
    """Where the data set of a processed object starts, and the syntax it is stored in.

    Raises
    ------
    UnsendableError
        The object is not a DICOM file.
    TransientForwardError
        The object cannot be read (the disk, not the object).
    """
    try:
        return read_file_meta(path)
    except ValueError as exc:
        raise UnsendableError(f"processed object {path.name} is not a DICOM file: {exc}") from exc
    except OSError as exc:
        raise TransientForwardError(f"cannot read processed object {path.name}: {exc}") from exc


class Ladder(Generic[_T]):
    """A sender's way down its ladder of syntaxes, and the size of what it re-encoded.

    :meth:`choose` gives the first syntax of a ladder that the object is
    stored in (sent as it is) or can be re-encoded to (serialised by the
    sender's `write`); :meth:`sent_bytes` then gives, once, the size of a
    re-encoded instance, so that a delivery records the bytes that went out.
    """

    def __init__(self, transcode: Transcode, write: Callable[[Dataset], _T]) -> None:
        self.transcode = transcode
        self._write = write
        self._sizes: dict[str, int] = {}  # job key -> bytes of the instance re-encoded for the destination

    def choose(self, job: Job, path: Path, stored: str, ladder: Iterable[str], failure: str) -> tuple[str, _T | None]:
        """The first syntax of `ladder` the object can go in, with its bytes (None: as stored).

        Raises
        ------
        UnsendableError
            No syntax of the ladder: `failure`, then why each one failed.
        TransientForwardError
            The processed object cannot be read.
        """
        refusals: list[str] = []  # why each syntax could not be written
        for syntax in ladder:
            if syntax == stored:
                return syntax, None
            try:
                data = encoded(self.transcode, path, stored, syntax, self._write)
            except PermanentForwardError as exc:  # not in this syntax: the next one
                refusals.append(str(exc))
                continue
            self._sizes[job.key] = len(data)  # type: ignore[arg-type]  # bytes or memoryview
            return syntax, data
        why = f": {'; '.join(refusals)}" if refusals else ""
        raise UnsendableError(f"{failure}{why}")

    def sent_bytes(self, job: Job) -> int | None:
        """The size of what was sent for `job` when it was re-encoded, else None (the stored object's)."""
        return self._sizes.pop(job.key, None)

    def forget(self) -> None:
        """A new batch: sizes of instances not asked about are dropped."""
        self._sizes = {}
