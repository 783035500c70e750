"""Transfer syntaxes the gateway knows, standard and ours, as one table.

Whether a syntax encapsulates its pixel data, uses explicit VR or little
endian byte order is answered here, never by asking pydicom about a UID it
may not know: pydicom only knows the standard syntaxes and those a program
registered with it, so the same question would get different answers in the
service, its worker processes and the command line.

The standard entries are those of PS3.6 Table A-1 (Transfer Syntax UIDs);
``lossless`` says whether the syntax can only hold the exact original values
(True), may hold altered ones (False: lossy or possibly lossy), or carries no
still image (None).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "TransferSyntax",
    "TRANSFER_SYNTAXES",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "EXPLICIT_VR_BIG_ENDIAN",
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "RLE_LOSSLESS",
    "JPEG_LOSSLESS",
    "JPEG_LOSSLESS_SV1",
    "JPEG_LS_LOSSLESS",
    "JPEG_2000_LOSSLESS",
    "JPEG_2000",
    "HTJ2K_LOSSLESS",
    "HTJ2K_LOSSLESS_RPCL",
    "HTJ2K",
    "GATEWAY_LOSSLESS_V1",
    "NATIVE_SYNTAXES",
    "lookup",
    "is_known",
    "is_encapsulated",
    "is_explicit_little_endian",
    "is_lossless",
]


@dataclass(frozen=True, slots=True)
class TransferSyntax:
    """One transfer syntax and how a dataset in it is encoded."""

    uid: str
    keyword: str
    name: str
    encapsulated: bool  # Pixel Data, if any, not native values: fragments (PS3.5 A.4) or elsewhere
    implicit_vr: bool = False
    little_endian: bool = True
    deflated: bool = False  # the whole dataset after the file meta is deflated
    lossless: bool | None = True  # see the module docstring
    private: bool = False  # ours: only this package reads it


IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
GATEWAY_LOSSLESS_V1 = "2.25.98736700971092333592611877631001549337"

_T = TransferSyntax
_ENTRIES = (
    _T(IMPLICIT_VR_LITTLE_ENDIAN, "ImplicitVRLittleEndian", "Implicit VR Little Endian", False, implicit_vr=True),
    _T(EXPLICIT_VR_LITTLE_ENDIAN, "ExplicitVRLittleEndian", "Explicit VR Little Endian", False),
    _T("1.2.840.10008.1.2.1.98", "EncapsulatedUncompressedExplicitVRLittleEndian",
       "Encapsulated Uncompressed Explicit VR Little Endian", True),
    _T(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "DeflatedExplicitVRLittleEndian",
       "Deflated Explicit VR Little Endian", False, deflated=True),
    _T(EXPLICIT_VR_BIG_ENDIAN, "ExplicitVRBigEndian", "Explicit VR Big Endian", False, little_endian=False),
    _T("1.2.840.10008.1.2.4.50", "JPEGBaseline8Bit", "JPEG Baseline (Process 1)", True, lossless=False),
    _T("1.2.840.10008.1.2.4.51", "JPEGExtended12Bit", "JPEG Extended (Process 2 & 4)", True, lossless=False),
    _T(JPEG_LOSSLESS, "JPEGLossless", "JPEG Lossless, Non-Hierarchical (Process 14)", True),
    _T(JPEG_LOSSLESS_SV1, "JPEGLosslessSV1", "JPEG Lossless, First-Order Prediction (Process 14 SV1)", True),
    _T(JPEG_LS_LOSSLESS, "JPEGLSLossless", "JPEG-LS Lossless Image Compression", True),
    _T("1.2.840.10008.1.2.4.81", "JPEGLSNearLossless", "JPEG-LS Lossy (Near-Lossless) Image Compression",
       True, lossless=False),
    _T(JPEG_2000_LOSSLESS, "JPEG2000Lossless", "JPEG 2000 Image Compression (Lossless Only)", True),
    _T(JPEG_2000, "JPEG2000", "JPEG 2000 Image Compression", True, lossless=False),
    _T("1.2.840.10008.1.2.4.92", "JPEG2000MCLossless",
       "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)", True),
    _T("1.2.840.10008.1.2.4.93", "JPEG2000MC", "JPEG 2000 Part 2 Multi-component Image Compression",
       True, lossless=False),
    _T("1.2.840.10008.1.2.4.94", "JPIPReferenced", "JPIP Referenced", True, lossless=None),
    _T("1.2.840.10008.1.2.4.95", "JPIPReferencedDeflate", "JPIP Referenced Deflate", True, deflated=True,
       lossless=None),
    _T("1.2.840.10008.1.2.4.100", "MPEG2MPML", "MPEG2 Main Profile / Main Level", True, lossless=None),
    _T("1.2.840.10008.1.2.4.101", "MPEG2MPHL", "MPEG2 Main Profile / High Level", True, lossless=None),
    _T("1.2.840.10008.1.2.4.102", "MPEG4HP41", "MPEG-4 AVC/H.264 High Profile / Level 4.1", True, lossless=None),
    _T("1.2.840.10008.1.2.4.103", "MPEG4HP41BD", "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
       True, lossless=None),
    _T("1.2.840.10008.1.2.4.104", "MPEG4HP422D", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
       True, lossless=None),
    _T("1.2.840.10008.1.2.4.105", "MPEG4HP423D", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
       True, lossless=None),
    _T("1.2.840.10008.1.2.4.106", "MPEG4HP42STEREO", "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
       True, lossless=None),
    _T("1.2.840.10008.1.2.4.100.1", "MPEG2MPMLF", "Fragmentable MPEG2 Main Profile / Main Level", True,
       lossless=None),
    _T("1.2.840.10008.1.2.4.101.1", "MPEG2MPHLF", "Fragmentable MPEG2 Main Profile / High Level", True,
       lossless=None),
    _T("1.2.840.10008.1.2.4.102.1", "MPEG4HP41F", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1",
       True, lossless=None),
    _T("1.2.840.10008.1.2.4.103.1", "MPEG4HP41BDF",
       "Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1", True, lossless=None),
    _T("1.2.840.10008.1.2.4.104.1", "MPEG4HP422DF",
       "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video", True, lossless=None),
    _T("1.2.840.10008.1.2.4.105.1", "MPEG4HP423DF",
       "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video", True, lossless=None),
    _T("1.2.840.10008.1.2.4.106.1", "MPEG4HP42STEREOF",
       "Fragmentable MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2", True, lossless=None),
    _T("1.2.840.10008.1.2.4.107", "HEVCMP51", "HEVC/H.265 Main Profile / Level 5.1", True, lossless=None),
    _T("1.2.840.10008.1.2.4.108", "HEVCM10P51", "HEVC/H.265 Main 10 Profile / Level 5.1", True, lossless=None),
    _T("1.2.840.10008.1.2.4.110", "JPEGXLLossless", "JPEG XL Lossless", True),
    _T("1.2.840.10008.1.2.4.111", "JPEGXLJPEGRecompression", "JPEG XL JPEG Recompression", True,
       lossless=False),
    _T("1.2.840.10008.1.2.4.112", "JPEGXL", "JPEG XL", True, lossless=False),
    _T(HTJ2K_LOSSLESS, "HTJ2KLossless", "High-Throughput JPEG 2000 Image Compression (Lossless Only)", True),
    _T(HTJ2K_LOSSLESS_RPCL, "HTJ2KLosslessRPCL",
       "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)", True),
    _T(HTJ2K, "HTJ2K", "High-Throughput JPEG 2000 Image Compression", True, lossless=False),
    _T("1.2.840.10008.1.2.4.204", "JPIPHTJ2KReferenced", "JPIP HTJ2K Referenced", True, lossless=None),
    _T("1.2.840.10008.1.2.4.205", "JPIPHTJ2KReferencedDeflate", "JPIP HTJ2K Referenced Deflate", True,
       deflated=True, lossless=None),
    _T(RLE_LOSSLESS, "RLELossless", "RLE Lossless", True),
    _T("1.2.840.10008.1.2.7.1", "SMPTEST211020UncompressedProgressiveActiveVideo",
       "SMPTE ST 2110-20 Uncompressed Progressive Active Video", True, lossless=None),
    _T("1.2.840.10008.1.2.7.2", "SMPTEST211020UncompressedInterlacedActiveVideo",
       "SMPTE ST 2110-20 Uncompressed Interlaced Active Video", True, lossless=None),
    _T("1.2.840.10008.1.2.7.3", "SMPTEST211030PCMDigitalAudio", "SMPTE ST 2110-30 PCM Digital Audio",
       True, lossless=None),
    _T("1.2.840.10008.1.2.8.1", "DeflatedImageFrameCompression", "Deflated Image Frame Compression", True),
    _T(GATEWAY_LOSSLESS_V1, "GatewayLosslessV1", "Gateway Lossless V1 (private)", True, private=True),
)

TRANSFER_SYNTAXES: dict[str, TransferSyntax] = {entry.uid: entry for entry in _ENTRIES}
"""Every transfer syntax the gateway knows, by UID."""

_BY_KEYWORD = {entry.keyword: entry for entry in _ENTRIES}

NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN})
"""Little endian syntaxes with uncompressed Pixel Data: what a decode to native writes."""


def lookup(uid_or_keyword: str) -> TransferSyntax | None:
    """The table's entry for a UID or keyword, or None for a syntax we do not know."""
    return TRANSFER_SYNTAXES.get(uid_or_keyword) or _BY_KEYWORD.get(uid_or_keyword)


def is_known(uid: str) -> bool:
    """True for a transfer syntax in the table."""
    return uid in TRANSFER_SYNTAXES


def is_encapsulated(uid: str) -> bool:
    """True when datasets in `uid` carry Pixel Data in fragments.

    An unknown UID counts as encapsulated: its pixel data cannot be read as
    native values, so nothing may treat it as such.
    """
    entry = TRANSFER_SYNTAXES.get(uid)
    return True if entry is None else entry.encapsulated


def is_explicit_little_endian(uid: str) -> bool:
    """True when the dataset after the file meta is plain explicit VR little endian bytes.

    That holds for Explicit VR Little Endian and every encapsulated syntax
    (standard or ours); not for implicit VR, big endian, deflated or unknown ones.
    """
    entry = TRANSFER_SYNTAXES.get(uid)
    return entry is not None and not (entry.implicit_vr or entry.deflated or not entry.little_endian)


def is_lossless(uid: str) -> bool:
    """True when pixel data in `uid` can only hold the exact original values."""
    entry = TRANSFER_SYNTAXES.get(uid)
    return entry is not None and entry.lossless is True
