"""Typed errors of the gateway.

Every failure a caller may want to branch on has its own type.  Codec errors
separate *unsupported image* (the image is valid but this codec cannot carry it
losslessly: pass the original through) from *corrupt codestream* (the bytes are
bad).  Forwarding errors separate *transient* (retry later) from *permanent*
(dead letter).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error raised on purpose by the gateway."""


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the offending key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class CodecError(GatewayError):
    """Base class of codec errors."""


class UnsupportedImageError(CodecError):
    """The image is valid, but this codec cannot carry it losslessly."""


class CorruptCodestreamError(CodecError):
    """A codestream is truncated, corrupted or not of the expected format."""


class CodecNotFoundError(CodecError, KeyError):
    """No codec is registered for a transfer syntax UID or name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PixelDataError(GatewayError):
    """The dataset's pixel data or its describing attributes are invalid."""


class VerificationError(GatewayError):
    """A decoded image differs from the original."""


class SpoolError(GatewayError):
    """The spool could not durably store or read an instance."""


class ForwardError(GatewayError):
    """Base class of forwarding errors."""


class TransientForwardError(ForwardError):
    """A delivery failed in a way that may succeed later (retry with backoff)."""


class PermanentForwardError(ForwardError):
    """A delivery failed in a way that retrying will not fix (dead letter)."""


class UnsendableError(PermanentForwardError):
    """The instance cannot be sent as the destination wants it (unreadable, in none of its syntaxes), found
    before the destination was asked: a dead letter that says nothing of the destination's health."""


class NetworkError(GatewayError):
    """An association with a DICOM peer failed: connection, timeout or protocol."""


class AssociationRejectedError(NetworkError):
    """The peer answered the association request with A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result, self.source, self.reason = result, source, reason
        kind = "permanently" if result == 1 else "transiently"
        super().__init__(f"association rejected {kind} (result {result}, source {source}, reason {reason})")


class AssociationAbortedError(NetworkError):
    """The peer aborted the association (A-ABORT) or closed the connection."""


class PeerProtocolError(NetworkError):
    """The peer sent a PDU or DIMSE message that breaks PS3.7 / PS3.8."""


class UnsupportedCodestreamError(CorruptCodestreamError, UnsupportedImageError):
    """A well-formed codestream uses a feature our decoder does not implement.

    Example: a JPEG 2000 (1.2.840.10008.1.2.4.91) stream coded with the
    irreversible 9/7 wavelet.  It is both a decoding failure (callers that
    catch :class:`CorruptCodestreamError` see it) and an *unsupported image*:
    the pipeline passes such an image through.
    """
