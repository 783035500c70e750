"""The decoders the pipeline trusts, each with the name it is recorded under in the proof.

The proof that an image was carried bit-exactly rests on decoders that are
not the code under test: an original is read by a decoder of another project
(pylibjpeg-rle, pylibjpeg-libjpeg, pylibjpeg-openjpeg; native data straight
from its bytes), never by ours unless nobody else reads its syntax (our
private one), and then under a name that says so.  What our encoders write
is read back by ours and then by an independent decoder (CharLS for JPEG-LS).  Nothing here looks up
pydicom's plugin tables, so no decoder of ours can stand in silently for
another project's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.dicom.uids import (
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    TRANSFER_SYNTAXES,
)
from gateway.errors import CodecNotFoundError, UnsupportedImageError

__all__ = ["HiddenBitsError", "hidden_bits", "REFERENCE_DECODERS", "VERIFYING_DECODERS", "verifying_decoder", "NATIVE", "DecodeFrame", "decoder_name", "reference_decoder", "our_decoder",
           "source_decoder", "start_image"]

NATIVE = "native"
"""Proof name of uncompressed pixel data, read from its bytes with numpy."""


class HiddenBitsError(UnsupportedImageError):
    """An original's codestream holds values with bits above Bits Stored that are not a sign extension.

    A codec working at precision Bits Stored would drop them, and comparing
    values masked to Bits Stored would not see the loss: such an image is
    kept as received, as native data with such bits is.
    """


def hidden_bits(values: np.ndarray, info: FrameInfo, *, full_width: bool) -> bool:
    """True when `values` hold bits that masking to Bits Stored (or sign-extending it) would change.

    Values are taken as the bit patterns of the Bits Allocated container (a
    negative value as its two's complement).  Unsigned data may use no bit at
    or above Bits Stored.  Signed data may hold a value sign-extended from
    Bits Stored; a JPEG-family codestream, which has no sign, may also hold
    the Bits Stored pattern alone (what it carries at that precision).  A
    `full_width` carrier (native data, and RLE, which carries every bit of
    the container as native data does) must sign-extend.
    """
    values = np.asarray(values)
    bits = info.bits_allocated
    stored = info.bits_stored
    if stored >= bits or values.size == 0:
        return False
    if values.dtype.kind == "i" and values.dtype.itemsize * 8 == bits:
        # Signed values of the container's width: the patterns allowed are the values of one range.
        low, high = info.value_range
        if not full_width:
            high = (1 << stored) - 1
        return bool(values.min() < low or values.max() > high)
    if values.dtype.kind == "u" or values.min() >= 0:  # the common case in one pass: no bit above Bits Stored
        top = int(values.max())
        if top < 1 << stored and (not info.signed or not full_width or top < 1 << (stored - 1)):
            return False
    if values.dtype.kind == "i":
        if values.min() < -(1 << (bits - 1)) or values.max() >= 1 << bits:
            return True  # wider than the container: inconsistent with its attributes
        patterns = values.astype(np.int64) & ((1 << bits) - 1)
    else:
        if values.max() >= 1 << bits:
            return True
        patterns = values.astype(np.uint64).astype(np.int64)
    low = patterns & ((1 << stored) - 1)
    if not info.signed:
        return bool(np.any(patterns != low))
    extended = np.where(low >> (stored - 1) != 0, low | (((1 << bits) - 1) ^ ((1 << stored) - 1)), low)
    allowed = patterns == extended
    if not full_width:
        allowed |= patterns == low
    return not bool(np.all(allowed))


def _normalised(values: np.ndarray, info: FrameInfo, *, original: bool = False, full_width: bool = False) -> np.ndarray:
    """`values` as a frame array of `info`: dtype, shape and Bits Stored range.

    Other decoders return unsigned bit patterns (JPEG has no sign) or wider
    containers; this brings them to the codec array form for comparison.
    For an `original` (what arrived, not what we wrote), bits above Bits
    Stored that this would drop raise :class:`HiddenBitsError` instead.
    """
    if original and hidden_bits(values, info, full_width=full_width):
        raise HiddenBitsError(f"bits above (0028,0101) 'Bits Stored' {info.bits_stored} hold data in the "
                              "codestream")
    unsigned = np.dtype(f"u{info.dtype.itemsize}")
    frame = np.ascontiguousarray(np.asarray(values).astype(unsigned)).view(info.dtype).reshape(info.shape)
    unused = info.bits_allocated - info.bits_stored
    if unused:
        if info.signed:
            frame <<= unused
            frame >>= unused
        else:
            frame &= (1 << info.bits_stored) - 1
    return frame


def _pylibjpeg_rle(data: bytes, info: FrameInfo, *, original: bool = False) -> np.ndarray:
    """pylibjpeg-rle (Rust): returns the frame colour-by-plane, little endian."""
    from rle.rle import decode_frame

    raw = decode_frame(bytes(data), info.rows * info.columns, info.bits_allocated, "<")
    unsigned = np.dtype(f"<u{info.dtype.itemsize}")
    planes = np.frombuffer(raw, dtype=unsigned)
    if info.samples_per_pixel > 1:
        planes = planes.reshape(info.samples_per_pixel, info.rows, info.columns).transpose(1, 2, 0)
    return _normalised(planes, info, original=original, full_width=True)


def _pylibjpeg_libjpeg(data: bytes, info: FrameInfo, *, original: bool = False) -> np.ndarray:
    """pylibjpeg-libjpeg (libjpeg 6b successor by Thomas Richter): JPEG lossless and JPEG-LS."""
    from libjpeg import decode

    values = decode(bytes(data), colour_transform=0)
    if values.size != info.rows * info.columns * info.samples_per_pixel:
        raise UnsupportedImageError(f"reference decoder returned {values.shape}, expected {info.shape}")
    return _normalised(values, info, original=original)


def _charls(data: bytes, info: FrameInfo, *, original: bool = False) -> np.ndarray:
    """CharLS (through pyjpegls): JPEG-LS, about three times as fast as libjpeg at it."""
    from jpeg_ls import decode

    values = decode(np.frombuffer(bytes(data), dtype=np.uint8))
    if values.size != info.rows * info.columns * info.samples_per_pixel:
        raise UnsupportedImageError(f"reference decoder returned {values.shape}, expected {info.shape}")
    return _normalised(values, info, original=original)


def _pylibjpeg_openjpeg(data: bytes, info: FrameInfo, *, original: bool = False) -> np.ndarray:
    """pylibjpeg-openjpeg (OpenJPEG): JPEG 2000 and HTJ2K; the colour transform of the codestream is undone."""
    from openjpeg import decode

    values = decode(bytes(data))
    if values.size != info.rows * info.columns * info.samples_per_pixel:
        raise UnsupportedImageError(f"reference decoder returned {values.shape}, expected {info.shape}")
    return _normalised(values, info, original=original)


DecodeFrame = Callable[[bytes, FrameInfo], np.ndarray]

REFERENCE_DECODERS: dict[str, DecodeFrame] = {
    RLE_LOSSLESS: _pylibjpeg_rle,
    JPEG_LOSSLESS: _pylibjpeg_libjpeg,
    JPEG_LOSSLESS_SV1: _pylibjpeg_libjpeg,
    JPEG_LS_LOSSLESS: _pylibjpeg_libjpeg,
    JPEG_2000_LOSSLESS: _pylibjpeg_openjpeg,
    JPEG_2000: _pylibjpeg_openjpeg,
    HTJ2K_LOSSLESS: _pylibjpeg_openjpeg,
    HTJ2K_LOSSLESS_RPCL: _pylibjpeg_openjpeg,
    HTJ2K: _pylibjpeg_openjpeg,
}
"""Transfer syntax UID -> a decoder of another project, frame by frame, in the codec array form."""

_NAMES = {
    _pylibjpeg_rle: "pylibjpeg-rle",
    _pylibjpeg_libjpeg: "pylibjpeg-libjpeg",
    _pylibjpeg_openjpeg: "pylibjpeg-openjpeg",
    _charls: "charls",
}


VERIFYING_DECODERS: dict[str, DecodeFrame] = {**REFERENCE_DECODERS, JPEG_LS_LOSSLESS: _charls}
"""The independent decoder that verifies what OUR encoder wrote, once our decoder has read it back exactly.

For JPEG-LS that is CharLS, three times as fast as libjpeg.  It reads only
streams our own decoder has already decoded to the original, because CharLS
(pyjpegls 1.5) does not return on some truncated streams: it never reads what
a modality sent; libjpeg does.
"""


def decoder_name(decode: DecodeFrame) -> str:
    """The name a decoder is recorded under in the proof."""
    return _NAMES.get(decode) or getattr(decode, "__name__", type(decode).__name__).lstrip("_")


def reference_decoder(uid: str) -> DecodeFrame | None:
    """The independent decoder of `uid`, or None where nobody else decodes it (our private syntax)."""
    return REFERENCE_DECODERS.get(str(uid))


def verifying_decoder(uid: str) -> DecodeFrame | None:
    """The independent decoder that checks our output in `uid` (see :data:`VERIFYING_DECODERS`)."""
    return VERIFYING_DECODERS.get(str(uid))


def our_decoder(uid: str) -> tuple[str, DecodeFrame] | None:
    """Our codec's decoder for `uid` and its proof name ("ours/<codec>"), or None."""
    try:
        codec = get_codec(str(uid))
    except CodecNotFoundError:
        return None
    return f"ours/{codec.name}", codec.decode_frame


def start_image(uid: str) -> None:
    """Before the frames of an image in `uid` are decoded in order: our decoder of `uid`, where it finds
    an inter-coded frame's reference among the frames decoded last, forgets those of other images."""
    try:
        codec = get_codec(str(uid))
    except CodecNotFoundError:
        return
    start = getattr(codec, "start_image", None)
    if start is not None:
        start()


def source_decoder(uid: str) -> tuple[str, DecodeFrame]:
    """The decoder that reads an ORIGINAL in `uid`: an independent one wherever one exists.

    Our own decoder is used only for a syntax no other project reads (ours),
    and its name says so.  An independent decoder raises
    :class:`HiddenBitsError` for values with bits above Bits Stored that the
    codec array form would drop (ours never writes such values).  Raises
    :class:`UnsupportedImageError` when neither exists.
    """
    reference = reference_decoder(uid)
    if reference is not None:
        return decoder_name(reference), functools.partial(reference, original=True)
    ours = our_decoder(uid)
    if ours is not None and TRANSFER_SYNTAXES.get(str(uid)) is not None and TRANSFER_SYNTAXES[str(uid)].private:
        return ours
    raise UnsupportedImageError(f"no independent decoder for transfer syntax {uid}")
