"""Forward: deliver processed instances to each destination, durably and at least once.

The modules: :mod:`~gateway.forward.loop` (one forwarder thread per
destination and association: due jobs, retry with backoff, dead letters),
:mod:`~gateway.forward.base` (the sender protocol), one sender per destination
kind that only moves bytes and reports a typed outcome
(:mod:`~gateway.forward.folder`, :mod:`~gateway.forward.dicom`), and
:mod:`~gateway.forward.transcode` (re-encoding an object, verified, for a
destination that refuses its stored syntax).
"""

from gateway.config import Destination
from gateway.forward.base import Sender
from gateway.forward.dicom import DicomSender, classify_status, ladder_for
from gateway.forward.folder import FolderSender
from gateway.forward.loop import Forwarder
from gateway.forward.transcode import encode_for

__all__ = ["Sender", "FolderSender", "DicomSender", "Forwarder", "make_sender", "classify_status", "ladder_for"]


def make_sender(destination: Destination, calling_ae: str, verify: bool) -> Sender:
    """The sender for a destination's kind."""
    if destination.kind == "folder":
        return FolderSender(destination)
    return DicomSender(destination, calling_ae=calling_ae,
                       transcode=lambda path, stored, target: encode_for(path, stored, target, verify=verify))
