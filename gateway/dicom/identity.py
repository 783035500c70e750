"""The one identity of an instance, from receive to forward."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["Identity"]

_TAGS = (("sop_class_uid", 0x00080016), ("sop_instance_uid", 0x00080018), ("study_uid", 0x0020000D),
         ("series_uid", 0x0020000E), ("modality", 0x00080060))


@dataclass(frozen=True, slots=True)
class Identity:
    """The identifying values of an instance (empty string when absent).

    The receiver takes them from the received file, the worker carries them
    into every delivery job, the forwarders address instances by them.
    `transfer_syntax` is the syntax of the file at hand: as received at
    first, then that of the processed object the jobs deliver.
    """

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    transfer_syntax: str = ""

    def with_syntax(self, uid: str) -> Identity:
        """The same instance in another transfer syntax."""
        return replace(self, transfer_syntax=uid)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def of_dataset(cls, ds: Any, transfer_syntax: str) -> Identity:
        """From a pydicom dataset, each value as its file holds it, as the receiver's header walk reads it.

        Read through pydicom, a value it finds malformed (a UID with a leading
        zero in a component, which older modalities write) is converted with
        a warning quoting it, and Python keeps each distinct warning text in
        the warning module's registry for good: one entry more, and one log
        line, for each such instance, study and series.
        """
        values = {}
        for name, tag in _TAGS:
            element = ds.get_item(tag)
            value = None if element is None else element.value
            if isinstance(value, (bytes, bytearray)):
                values[name] = bytes(value).rstrip(b"\x00 ").decode("ascii", "replace").strip()
            else:
                values[name] = "" if value is None else str(value)
        return cls(transfer_syntax=transfer_syntax, **values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Identity:
        """From :meth:`as_dict`'s form; unknown keys are ignored, missing ones empty."""
        names = cls.__dataclass_fields__
        return cls(**{key: str(value) for key, value in data.items() if key in names and value is not None})
