"""The codec interface: a frozen frame description and a small protocol.

A codec encodes and decodes *one frame* at a time.  Frames are numpy arrays:

* shape ``(rows, columns)`` for one sample per pixel, ``(rows, columns,
  samples)`` for three (colour-by-pixel order, whatever the dataset's Planar
  Configuration);
* dtype ``uint8``/``uint16``/``uint32`` for Pixel Representation 0 and
  ``int8``/``int16``/``int32`` for 1, of width Bits Allocated;
* values within the range that Bits Stored allows (signed values sign
  extended).  Images whose unused high bits hold data never reach a codec: the
  pipeline detects them first and passes the original through.

``decode_frame`` returns an array of exactly that form, so a round trip is
checked with ``numpy.array_equal``.  Policy (which codec, what fallback) lives
in the pipeline, not here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from gateway.errors import CorruptCodestreamError, UnsupportedImageError


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What a codec needs to know about one frame."""

    rows: int
    columns: int
    samples_per_pixel: int = 1
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    photometric_interpretation: str = "MONOCHROME2"
    planar_configuration: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1 or self.columns < 1:
            raise UnsupportedImageError(
                f"(0028,0010/0011) Rows x Columns must be positive, got {self.rows} x {self.columns}"
            )
        if self.samples_per_pixel not in (1, 3):
            raise UnsupportedImageError(
                f"(0028,0002) 'Samples per Pixel' must be 1 or 3, got {self.samples_per_pixel}"
            )
        if self.bits_allocated not in (1, 8, 16, 32, 64):
            raise UnsupportedImageError(
                f"(0028,0100) 'Bits Allocated' must be 1, 8, 16, 32 or 64, got {self.bits_allocated}"
            )
        if not 1 <= self.bits_stored <= self.bits_allocated:
            raise UnsupportedImageError(
                f"(0028,0101) 'Bits Stored' must be 1..{self.bits_allocated}, got {self.bits_stored}"
            )
        if self.pixel_representation not in (0, 1):
            raise UnsupportedImageError(
                f"(0028,0103) 'Pixel Representation' must be 0 or 1, got {self.pixel_representation}"
            )

    @property
    def signed(self) -> bool:
        return self.pixel_representation == 1

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of a frame array (see the module docstring)."""
        if self.bits_allocated not in (8, 16, 32):
            raise UnsupportedImageError(
                f"(0028,0100) 'Bits Allocated' {self.bits_allocated} has no integer frame dtype"
            )
        kind = "i" if self.signed else "u"
        return np.dtype(f"{kind}{self.bits_allocated // 8}")

    @property
    def shape(self) -> tuple[int, ...]:
        if self.samples_per_pixel == 1:
            return (self.rows, self.columns)
        return (self.rows, self.columns, self.samples_per_pixel)

    @property
    def frame_bytes(self) -> int:
        """Size in bytes of the frame as a native (uncompressed) array."""
        return self.rows * self.columns * self.samples_per_pixel * (self.bits_allocated // 8)

    @property
    def value_range(self) -> tuple[int, int]:
        """Smallest and largest value that Bits Stored allows."""
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1


@runtime_checkable
class Codec(Protocol):
    """A lossless codec for one transfer syntax.

    Attributes
    ----------
    name
        Short name used in logs and the ``codecs`` command, e.g. ``"rle"``.
    uid
        The transfer syntax UID the codec writes.
    keyword
        The pydicom keyword of that syntax (or our own for a private one),
        accepted in the config as ``transfer_syntax``.
    private
        True for a syntax of our own that only our package decodes.
    """

    name: ClassVar[str]
    uid: ClassVar[str]
    keyword: ClassVar[str]
    private: ClassVar[bool]

    def supports(self, info: FrameInfo) -> str | None:
        """Return ``None`` when the codec can carry `info` losslessly, else the reason why not."""

    def encode_frame(self, frame: np.ndarray, info: FrameInfo) -> bytes:
        """Encode one frame; raise :class:`UnsupportedImageError` if it cannot."""

    def decode_frame(self, data: bytes, info: FrameInfo) -> np.ndarray:
        """Decode one frame; raise :class:`CorruptCodestreamError` on bad data."""


@dataclass(frozen=True, slots=True)
class FunctionCodec:
    """A :class:`Codec` whose operations are a codec module's functions.

    Each codec module keeps its work in plain functions over its kernels
    (``supports``, ``encode``, ``decode``) and registers one of these, naming
    its transfer syntax.  A codec that codes the frames of an image together
    (inter-frame prediction) also gives ``encode_frames`` / ``decode_frames``;
    the pipeline uses them where present.

    A codec whose encoder takes keyword options (our private syntax's
    ``version``) names them in `encode_options`; :meth:`with_options` gives
    the same codec with those options set, so that whoever holds it still
    calls ``encode_frame(frame, info)``.  The registry keeps the codec with
    its module's defaults.
    """

    name: str
    uid: str
    keyword: str
    supports: Callable[[FrameInfo], str | None]
    encode_frame: Callable[[np.ndarray, FrameInfo], bytes]
    decode_frame: Callable[[bytes, FrameInfo], np.ndarray]
    private: bool = False
    encode_frames: Callable[[list[np.ndarray], FrameInfo], list[bytes]] | None = None
    # The streams of encode_frames one by one, as each frame is encoded: the pipeline's form, which never
    # holds every stream of a long multi-frame image at once.
    iter_encode_frames: Callable[[Iterable[np.ndarray], FrameInfo], Iterator[bytes]] | None = None
    decode_frames: Callable[[list[bytes], FrameInfo], list[np.ndarray]] | None = None
    encode_options: tuple[str, ...] = ()  # keyword options encode_frame (and encode_frames) take
    # Called before the frames of another image are decoded one by one with decode_frame: a codec that
    # finds an inter-coded frame's reference among the frames it decoded last forgets them, so that no
    # frame of another image can stand in for one of this image's.
    start_image: Callable[[], None] | None = None

    def with_options(self, **options: Any) -> FunctionCodec:
        """This codec with its encoder's keyword `options` set; itself without options.

        Raises ``TypeError`` for an option the codec does not name in
        `encode_options`; a bad value raises when a frame is encoded, as the
        encoder itself checks it.
        """
        if not options:
            return self
        unknown = sorted(set(options) - set(self.encode_options))
        if unknown:
            takes = ", ".join(self.encode_options) or "none"
            raise TypeError(f"codec {self.name!r} takes no encoder option {unknown[0]!r} (it takes: {takes})")
        return replace(
            self,
            encode_frame=partial(self.encode_frame, **options),
            encode_frames=None if self.encode_frames is None else partial(self.encode_frames, **options),
            iter_encode_frames=None if self.iter_encode_frames is None else partial(self.iter_encode_frames,
                                                                                     **options),
        )


def check_frame(frame: np.ndarray, info: FrameInfo) -> np.ndarray:
    """Validate that `frame` has the shape and dtype `info` describes.

    Returns the array as a C-contiguous view (or copy), ready for a kernel.
    """
    if frame.shape != info.shape:
        raise UnsupportedImageError(f"frame shape {frame.shape} does not match {info.shape}")
    if frame.dtype != info.dtype:
        raise UnsupportedImageError(f"frame dtype {frame.dtype} does not match {info.dtype}")
    return np.ascontiguousarray(frame)


def stored_values(samples: np.ndarray, precision: int, info: FrameInfo, codec: str) -> np.ndarray:
    """The values of `samples` a JPEG-family decoder read at a `precision` above Bits Stored, in `info`'s dtype.

    As JPEG-LS reads them: a sample below ``2**BitsStored`` is the stored
    value (sign-extended from Bits Stored when signed); a larger one is valid
    only for signed data, as the P-bit two's complement of a value in range.
    Anything else raises :class:`CorruptCodestreamError`, naming `codec`.
    """
    stored = info.bits_stored
    low, high = info.value_range
    values = samples
    if info.signed:
        values = samples.astype(np.int64)
        negative = values >= (1 << precision) + low
        values = np.where(values < (1 << stored), values - ((values >> (stored - 1)) << stored),
                          np.where(negative, values - (1 << precision), high + 1))
    if values.size and (int(values.min()) < low or int(values.max()) > high):
        raise CorruptCodestreamError(f"{codec}: decoded values exceed the range of {stored} Bits Stored")
    return np.ascontiguousarray(values, dtype=info.dtype)
