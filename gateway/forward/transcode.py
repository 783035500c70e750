"""Re-encoding a processed object for a destination that refuses its stored syntax.

Kept apart from the senders: a sender only moves bytes; this module owns the
one place where an object is decoded and encoded again on its way out, always
through the pipeline and so always verified.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import UID

from gateway.dicom.uids import IMPLICIT_VR_LITTLE_ENDIAN, NATIVE_SYNTAXES
from gateway.logs import get_logger
from gateway.pipeline import recompress

__all__ = ["encode_for"]

_log = get_logger("forward")


def encode_for(path: Path, stored: str, target: str, *, verify: bool = True,
               encode_options: Mapping[str, Mapping[str, Any]] | None = None) -> Dataset | None:
    """The object re-encoded (verified) in `target`, or None if it cannot be.

    Between the two little endian syntaxes only the element encoding
    changes, the pixel bytes stay; anything else goes through the pipeline,
    with the configured `encode_options` (see :func:`gateway.pipeline.recompress`).
    """
    ds = dcmread(path)
    if stored in NATIVE_SYNTAXES and target in NATIVE_SYNTAXES:
        ds.file_meta.TransferSyntaxUID = UID(target)
        ds.set_original_encoding(target == IMPLICIT_VR_LITTLE_ENDIAN, True, ds.original_character_set)
        return ds
    try:
        outcome = recompress(ds, target, verify=verify, encode_options=encode_options)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - includes a Rust decoder's PanicException
        _log.warning("re-encoding %s to %s failed: %s: %s", path.name, target, type(exc).__name__, exc)
        return None
    if str(outcome.transfer_syntax) != target:
        return None
    new = outcome.dataset
    new.set_original_encoding(target == IMPLICIT_VR_LITTLE_ENDIAN, True, new.original_character_set)
    return new
