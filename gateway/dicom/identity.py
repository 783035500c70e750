"""The one identity of an instance, from receive to forward."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["Identity"]


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
    def from_dict(cls, data: dict[str, Any]) -> Identity:
        """From :meth:`as_dict`'s form; unknown keys are ignored, missing ones empty."""
        names = cls.__dataclass_fields__
        return cls(**{key: str(value) for key, value in data.items() if key in names and value is not None})
