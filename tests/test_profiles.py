"""Which images each codec must carry: an explicit table, never derived from ``supports()``.

The standard syntaxes' rows follow the encoding profiles of PS3.5 section 8.2
(the same as pydicom's ``ENCODING_PROFILES``): photometric interpretation,
samples, pixel representation, bits allocated and a precision of 2..16 bits
for the JPEG family.  Our private syntax carries up to 16 bits stored in 8,
16 or 32-bit containers, any photometric interpretation.  A codec that
refuses more than its row allows fails here, instead of turning the other
tests' expectations into skips.  A codec added to the registry must add its
row.
"""

from __future__ import annotations

import pytest

from gateway.codecs import all_codecs
from gateway.codecs.base import FrameInfo
from tests.images import REFERENCE_IMAGES

# (bits allocated, bits stored, samples, pixel representation, photometric)
CASES = [
    (16, 1, 1, 0, "MONOCHROME2"),
    (16, 2, 1, 0, "MONOCHROME2"),
    (32, 32, 1, 0, "MONOCHROME2"),
    (32, 16, 1, 1, "MONOCHROME2"),
    (32, 17, 1, 0, "MONOCHROME2"),
    (16, 16, 3, 1, "RGB"),
    (16, 16, 3, 0, "RGB"),
    (8, 8, 3, 0, "YBR_FULL"),
    (16, 16, 3, 0, "YBR_FULL"),
    (8, 8, 1, 0, "PALETTE COLOR"),
    (16, 16, 1, 1, "PALETTE COLOR"),
    (8, 8, 3, 0, "YBR_RCT"),
    (16, 12, 1, 1, "MONOCHROME1"),
]

# One character per case above: Y carried, - refused.
EXPECTED = {
    "rle":               "YYYYY-YY-Y--Y",
    "jpeg-lossless":     "-Y----YYYY--Y",
    "jpeg-lossless-p14": "-Y----YYYY--Y",
    "jpeg-ls":           "-Y----YY-Y--Y",
    "gwl":               "YY-Y-YYYYYYYY",
    "jpeg2000":          "-Y----YYYY-YY",  # PS3.5 8.2.4: YBR_RCT too; T.800 precision here 2..16
    "htj2k":             "-Y----YYYY-YY",  # PS3.5 8.2.7: the JPEG 2000 profiles
    "htj2k-rpcl":        "-Y----YYYY-YY",
}


def _codecs() -> list:
    return [pytest.param(codec, id=codec.name) for codec in all_codecs()]


@pytest.mark.parametrize("codec", _codecs())
def test_every_codec_has_an_expected_profile(codec) -> None:
    assert codec.name in EXPECTED, f"add the row of {codec.name} to EXPECTED"
    assert len(EXPECTED[codec.name]) == len(CASES)


@pytest.mark.parametrize("codec", _codecs())
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[4].replace(' ', '_')}_{c[0]}_{c[1]}_{c[2]}_{c[3]}")
def test_supports_agrees_with_the_table(codec, case) -> None:
    allocated, stored, samples, signed, photometric = case
    info = FrameInfo(rows=4, columns=4, bits_allocated=allocated, bits_stored=stored, samples_per_pixel=samples,
                     pixel_representation=signed, photometric_interpretation=photometric)
    expected = EXPECTED[codec.name][CASES.index(case)] == "Y"
    reason = codec.supports(info)
    assert (reason is None) == expected, reason or f"{codec.name} should refuse {case}"


@pytest.mark.parametrize("codec", _codecs())
@pytest.mark.parametrize("ident", [ident for ident, _, _ in REFERENCE_IMAGES])
def test_every_codec_carries_every_reference_image(codec, ident: str) -> None:
    """The reference images are 8/16-bit, 2..16 bits stored, MONOCHROME2 or unsigned RGB: all carry them."""
    info = next(info for name, info, _ in REFERENCE_IMAGES if name == ident)
    assert codec.supports(info) is None
