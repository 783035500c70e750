"""The decoders that verify our output are independent ones, and each is the one documented."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.codecs import get_codec
from gateway.pipeline import recompress
from gateway.pipeline.decoders import REFERENCE_DECODERS, VERIFYING_DECODERS, decoder_name, source_decoder
from tests.conftest import make_series, pydicom_file

EXPECTED = {
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "charls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
}


@pytest.mark.parametrize(("uid", "name"), sorted(EXPECTED.items()))
def test_our_output_is_verified_by_the_named_independent_decoder(uid: str, name: str) -> None:
    ds = make_series(1, rows=64, columns=48)[0]
    outcome = recompress(ds, uid)
    assert outcome.recompressed, outcome.reason
    codec = get_codec(uid)
    assert [label for label, _ in outcome.verified_by] == [f"ours/{codec.name}", name]
    assert decoder_name(VERIFYING_DECODERS[uid]) == name


def test_originals_in_jpeg_ls_are_read_by_libjpeg_not_charls() -> None:
    """CharLS only checks streams our decoder already read back exactly: it never reads what a modality sent."""
    assert source_decoder("1.2.840.10008.1.2.4.80")[0] == "pylibjpeg-libjpeg"
    assert decoder_name(REFERENCE_DECODERS["1.2.840.10008.1.2.4.80"]) == "pylibjpeg-libjpeg"


def test_charls_agrees_with_libjpeg_on_a_real_jpeg_ls_file() -> None:
    from pydicom.encaps import generate_frames

    from gateway.pipeline.pixels import frame_info

    ds = pydicom_file("MR_small_jpeg_ls_lossless.dcm")
    info = frame_info(ds)
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    by_charls = VERIFYING_DECODERS["1.2.840.10008.1.2.4.80"](frame, info)
    by_libjpeg = REFERENCE_DECODERS["1.2.840.10008.1.2.4.80"](frame, info)
    assert np.array_equal(by_charls, by_libjpeg) and by_charls.dtype == by_libjpeg.dtype
