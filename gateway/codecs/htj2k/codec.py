"""HTJ2K lossless (ITU-T T.814, JPEG 2000 Part 15), transfer syntaxes 1.2.840.10008.1.2.4.201 and .202.

The codestream, tier 2 (packets, tag trees, progression orders) and the 5/3
wavelet are those of :mod:`gateway.codecs.jpeg2000`; only the block coder
differs (:mod:`.ht`).

Encoder
    One tile, one quality layer, 64 x 64 code-blocks coded by one HT
    cleanup pass each (COD code-block style 0x40), no precinct partition,
    the 5/3 reversible wavelet, the reversible colour transform for RGB, no
    quantisation.  SIZ declares Part 15 capabilities (Rsiz bit 14) and a
    CAP segment carries Pcap bit 15 and Ccap15.  ``HTJ2KLossless`` (.201):
    LRCP order and :func:`gateway.codecs.jpeg2000.levels_for` decomposition
    levels.  ``HTJ2KLosslessRPCL`` (.202, PS3.5 A.4.7): RPCL order, a TLM
    segment, and at least enough levels that the lowest resolution is at
    most 64 x 64::

        SOC  SIZ  COD  QCD  CAP  [TLM]  SOT  SOD  <packets>  EOC

Decoder
    Any reversible codestream whose code-blocks are all HT (what the Part 1
    decoder accepts: tiles, tile-parts, precincts, layers, every
    progression order, POC, SOP / EPH), with one HT cleanup segment per
    code-block; a code-block with HT SigProp or MagRef passes (or
    placeholder passes) raises :class:`UnsupportedCodestreamError`.  A
    codestream without HT code-blocks is a Part 1 codestream, which
    Part 15 allows, and goes to the Part 1 decoder.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from gateway.codecs import register
from gateway.codecs.base import FrameInfo, FunctionCodec, check_frame
from gateway.codecs.htj2k import ht
from gateway.codecs.jpeg2000 import codec as j2k
from gateway.codecs.jpeg2000 import codestream as cs
from gateway.codecs.profiles import check_profile
from gateway.dicom.uids import HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL
from gateway.errors import UnsupportedImageError

__all__ = ["CODEC", "CODEC_RPCL", "supports", "encode", "decode", "levels_for"]

RPCL_LOWEST = 64  # PS3.5: the lowest resolution of an RPCL stream is at most 64 x 64
RSIZ_PART15 = 0x4000  # Rsiz bit 14: the CAP segment says which Part 15 capabilities are used


def supports(info: FrameInfo, uid: str = HTJ2K_LOSSLESS) -> str | None:
    """``None`` when an HTJ2K lossless codestream can carry `info`, else why not (PS3.5 8.2.7 profiles)."""
    return check_profile(uid, info)


def levels_for(rows: int, columns: int, rpcl: bool = False) -> int:
    """Decomposition levels: those of JPEG 2000, and for RPCL enough for a lowest resolution of 64 x 64 at most."""
    levels = j2k.levels_for(rows, columns)
    if rpcl:
        while max(rows, columns) > RPCL_LOWEST << levels:
            levels += 1
    return levels


CODER = j2k.BlockCoder("HTJ2K", cs.HT_BLOCKS, ht.encode_blocks, ht.decode_blocks, ht.ERRORS, (3, 6),
                      unsupported=(-4,))


def encode(frame: np.ndarray, info: FrameInfo, *, rpcl: bool = False, levels: int | None = None,
           parallel: bool | None = None) -> bytes:
    """Encode one frame as an HTJ2K lossless codestream (see the module docstring).

    Parameters
    ----------
    rpcl
        Write the .202 form: RPCL, TLM, lowest resolution at most 64 x 64.
    levels
        Decomposition levels (default :func:`levels_for`); 0..32.
    parallel
        Code the code-blocks and compute the wavelet on two threads (default: for frames of 1 MB or more).
    """
    reason = supports(info)
    if reason is not None:
        raise UnsupportedImageError(reason)
    frame = check_frame(frame, info)
    rows, cols = info.rows, info.columns
    if levels is None:
        levels = levels_for(rows, cols, rpcl)
    j2k.check_levels(levels)
    if rpcl and max(rows, cols) > RPCL_LOWEST << levels:
        raise ValueError(f"{levels} levels leave a lowest resolution above {RPCL_LOWEST} x {RPCL_LOWEST}")
    if parallel is None:
        parallel = info.frame_bytes >= j2k.PARALLEL_BYTES
    progression = cs.RPCL if rpcl else cs.LRCP
    tile = j2k.encode_planes(frame, info, CODER, levels, progression, parallel, RSIZ_PART15)
    extra = cs.write_cap_ht(True, tile.magnitude_bits)
    if rpcl:
        extra += cs.write_tlm([14 + len(tile.packets)])
    return cs.write_codestream(tile.size, tile.coding, tile.quantization, [tile.packets], extra)


# ----------------------------------------------------------------------------- decoder


def _has_ht_blocks(stream: cs.Codestream) -> bool:
    return any(style.block_style & cs.HT_BLOCKS
               for tile in stream.tiles.values() for style in cs.tile_coding(stream, tile).styles)


def decode(data: bytes, info: FrameInfo, *, parallel: bool | None = None) -> np.ndarray:
    """Decode an HTJ2K (or Part 1) reversible codestream into a frame of the form `info` describes."""
    stream = cs.parse(bytes(data))
    if not _has_ht_blocks(stream):
        return j2k.decode_stream(stream, info, j2k.PART1, parallel)
    return j2k.decode_stream(stream, info, CODER, parallel)


CODEC = register(FunctionCodec("htj2k", HTJ2K_LOSSLESS, "HTJ2KLossless", supports, encode, decode))
CODEC_RPCL = register(FunctionCodec(
    "htj2k-rpcl", HTJ2K_LOSSLESS_RPCL, "HTJ2KLosslessRPCL",
    partial(supports, uid=HTJ2K_LOSSLESS_RPCL), partial(encode, rpcl=True), decode))
