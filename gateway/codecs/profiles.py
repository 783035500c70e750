"""Which images each standard transfer syntax may carry: one table (PS3.5 section 8.2).

For each syntax, per Photometric Interpretation: Samples per Pixel, the
Pixel Representations allowed, the Bits Allocated allowed and the range of
Bits Stored.  These are the encoding profiles of PS3.5 8.2.1 (JPEG), 8.2.2
(RLE) and 8.2.3 (JPEG-LS), the same that pydicom's ``ENCODING_PROFILES``
states; a codec's ``supports`` checks its syntax here, then its own limits
(a JPEG frame header holds at most 65535 rows).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.codecs.base import FrameInfo
from gateway.dicom.uids import (
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    lookup,
)

__all__ = ["Profile", "ENCODING_PROFILES", "check_profile"]


@dataclass(frozen=True, slots=True)
class Profile:
    samples: int
    representations: tuple[int, ...]  # 0 unsigned, 1 signed
    allocations: tuple[int, ...]
    stored: tuple[int, int]  # smallest and largest Bits Stored


_JPEG = {  # PS3.5 8.2.1 (Table 8.2.1-2); T.81 H.1.1 gives lossless JPEG a precision of 2..16 bits
    "MONOCHROME1": Profile(1, (0, 1), (8, 16), (2, 16)),
    "MONOCHROME2": Profile(1, (0, 1), (8, 16), (2, 16)),
    "PALETTE COLOR": Profile(1, (0,), (8, 16), (2, 16)),
    "RGB": Profile(3, (0,), (8, 16), (2, 16)),
    "YBR_FULL": Profile(3, (0,), (8, 16), (2, 16)),
}

_JPEG2000_LOSSLESS = {  # PS3.5 8.2.4 (Table 8.2.4-1), reversible; precision here 2..16 bits (T.800 allows 1..38)
    "MONOCHROME1": Profile(1, (0, 1), (8, 16), (2, 16)),
    "MONOCHROME2": Profile(1, (0, 1), (8, 16), (2, 16)),
    "PALETTE COLOR": Profile(1, (0,), (8, 16), (2, 16)),
    "RGB": Profile(3, (0,), (8, 16), (2, 16)),  # coded with the reversible colour transform
    "YBR_RCT": Profile(3, (0,), (8, 16), (2, 16)),
    "YBR_FULL": Profile(3, (0,), (8, 16), (2, 16)),  # coded without a colour transform
}

ENCODING_PROFILES: dict[str, dict[str, Profile]] = {
    RLE_LOSSLESS: {  # PS3.5 8.2.2; 32-bit samples fit Annex G's 15 segments for one and three samples
        "MONOCHROME1": Profile(1, (0, 1), (8, 16, 32), (1, 32)),
        "MONOCHROME2": Profile(1, (0, 1), (8, 16, 32), (1, 32)),
        "PALETTE COLOR": Profile(1, (0,), (8, 16), (1, 16)),
        "RGB": Profile(3, (0,), (8, 16, 32), (1, 32)),
        "YBR_FULL": Profile(3, (0,), (8,), (1, 8)),
    },
    JPEG_LOSSLESS: _JPEG,
    JPEG_LOSSLESS_SV1: _JPEG,
    HTJ2K_LOSSLESS: _JPEG2000_LOSSLESS,  # PS3.5 8.2.7: the JPEG 2000 profiles
    HTJ2K_LOSSLESS_RPCL: _JPEG2000_LOSSLESS,
    JPEG_LS_LOSSLESS: {  # PS3.5 8.2.3 (Table 8.2.3-1); T.87 precision 2..16 bits
        "MONOCHROME1": Profile(1, (0, 1), (8, 16), (2, 16)),
        "MONOCHROME2": Profile(1, (0, 1), (8, 16), (2, 16)),
        "PALETTE COLOR": Profile(1, (0,), (8, 16), (2, 16)),
        "RGB": Profile(3, (0,), (8, 16), (2, 16)),
        "YBR_FULL": Profile(3, (0,), (8,), (2, 8)),
    },
}


def check_profile(uid: str, info: FrameInfo) -> str | None:
    """None when `info` fits an encoding profile of `uid`, else why not (quoting the tag)."""
    entry = lookup(uid)
    name = entry.name if entry is not None else uid
    profiles = ENCODING_PROFILES.get(uid)
    if profiles is None:
        return f"no encoding profiles are known for {name}"
    photometric = info.photometric_interpretation
    profile = profiles.get(photometric)
    if profile is None:
        return f"(0028,0004) 'Photometric Interpretation' {photometric} is not allowed with {name}"
    if info.samples_per_pixel != profile.samples:
        return f"(0028,0002) 'Samples per Pixel' {info.samples_per_pixel} does not suit {photometric} in {name}"
    if info.pixel_representation not in profile.representations:
        return f"(0028,0103) signed {photometric} is not allowed with {name}"
    if info.bits_allocated not in profile.allocations:
        return f"(0028,0100) 'Bits Allocated' {info.bits_allocated} is not allowed with {name} {photometric}"
    low, high = profile.stored
    if not low <= info.bits_stored <= high:
        return f"(0028,0101) 'Bits Stored' {info.bits_stored} is outside {low}..{high} for {name} {photometric}"
    return None
