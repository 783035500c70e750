"""Re-encoding a processed object for a destination that refuses its stored syntax.

Kept apart from the senders: a sender only moves bytes; this module owns the
one place where an object is decoded and encoded again on its way out.  Pixel
data is re-encoded through the pipeline and so always verified; between the
uncompressed little endian syntaxes (implicit, explicit, deflated) only the
element encoding changes, which pydicom's writer converts from the encoding
the object was read in (raw elements decoded, ambiguous VRs resolved); so
does a big endian object without pixel data, its binary words swapped first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydicom import Dataset, dcmread
from pydicom.uid import UID

from gateway.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, NATIVE_SYNTAXES
from gateway.errors import PermanentForwardError, TransientForwardError
from gateway.logs import get_logger
from gateway.pipeline import Outcome, recompress, to_little_endian

__all__ = ["encode_for", "encoded"]

_log = get_logger("forward")

_T = TypeVar("_T")

# Uncompressed and little endian: an object moves between these by its element encoding alone.
_LITTLE_ENDIAN_UNCOMPRESSED = NATIVE_SYNTAXES | {DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}
# Pixel Data, Float and Double Float Pixel Data: what only the pipeline converts.
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def encode_for(path: Path, stored: str, target: str, *, verify: bool = True,
               encode_options: Mapping[str, Mapping[str, Any]] | None = None,
               proven: Callable[[Outcome], None] | None = None) -> Dataset | None:
    """The object re-encoded (verified) in `target`, or None if it cannot be.

    Between the uncompressed little endian syntaxes only the element
    encoding changes, the pixel bytes stay; anything else goes through the
    pipeline, with the configured `encode_options` (see
    :func:`gateway.pipeline.recompress`), and `proven` is given the
    outcome of each new encoding (its verifying decoders).  Either way the dataset keeps the
    encoding it was read in as its *original* one and names `target` in its
    file meta: writing it converts every element, since pydicom writes a raw
    element as it is only when the two encodings agree.
    """
    ds = dcmread(path)
    if stored in _LITTLE_ENDIAN_UNCOMPRESSED and target in _LITTLE_ENDIAN_UNCOMPRESSED:
        ds.file_meta.TransferSyntaxUID = UID(target)
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


def encoded(transcode: Callable[[Path, str, str], Dataset | None], path: Path, stored: str, target: str,
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
