"""Pixel data of a dataset as frames in the codec array convention.

:func:`iter_frames` yields every frame of a dataset as the array form that
:mod:`gateway.codecs.base` describes, for native data (little or big endian,
deflated) and for encapsulated data (through pydicom's decoders, or through
our registry for syntaxes only we decode).  Native frames are read straight
from the bytes with no masking, so :func:`high_bits_used` can see data hidden
above Bits Stored before any codec drops it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from io import BytesIO
from typing import NamedTuple

import numpy as np
from pydicom import Dataset
from pydicom.encaps import generate_fragmented_frames, parse_basic_offsets, parse_fragments
from pydicom.uid import UID, ExplicitVRBigEndian

from gateway.codecs.base import FrameInfo
from gateway.codecs.jpeg_markers import EOI, SOS, walk_markers
from gateway.codecs.rle import trailing_bytes
from gateway.dicom.uids import (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, JPEG_LOSSLESS,
                                 JPEG_LOSSLESS_SV1, JPEG_LS_LOSSLESS, RLE_LOSSLESS, is_encapsulated)
from gateway.errors import PixelDataError, UnsupportedImageError
from gateway.pipeline.decoders import NATIVE, DecodeFrame, hidden_bits, source_decoder, start_image

__all__ = ["frame_info", "number_of_frames", "iter_frames", "native_frames", "decoded_frames", "DecodedFrames",
           "HOLD_DECODED_BYTES", "deferred_pixels", "FileFrames", "high_bits_used", "transfer_syntax", "END_MARKED",
           "ends_with_marker", "codestream_end", "codestream_size"]

_FLOAT_TAGS = ("FloatPixelData", "DoubleFloatPixelData")


def transfer_syntax(ds: Dataset) -> UID:
    """The dataset's transfer syntax UID, from its file meta."""
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if not uid:
        raise PixelDataError("(0002,0010) 'Transfer Syntax UID' is missing from the file meta")
    return UID(uid)


def _required(ds: Dataset, keyword: str, tag: str) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        raise PixelDataError(f"({tag}) '{keyword}' is missing")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise PixelDataError(f"({tag}) '{keyword}' is not an integer: {value!r}") from exc


def frame_info(ds: Dataset) -> FrameInfo:
    """Describe one frame of `ds`; raise for images no codec can carry."""
    for keyword in _FLOAT_TAGS:
        if keyword in ds:
            raise UnsupportedImageError(f"'{keyword}' holds floating point pixels")
    if "PixelData" not in ds:
        raise PixelDataError("(7FE0,0010) 'Pixel Data' is missing")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if not photometric:
        raise PixelDataError("(0028,0004) 'Photometric Interpretation' is missing")
    try:
        return FrameInfo(
            rows=_required(ds, "Rows", "0028,0010"),
            columns=_required(ds, "Columns", "0028,0011"),
            samples_per_pixel=_required(ds, "SamplesPerPixel", "0028,0002"),
            bits_allocated=_required(ds, "BitsAllocated", "0028,0100"),
            bits_stored=_required(ds, "BitsStored", "0028,0101"),
            pixel_representation=_required(ds, "PixelRepresentation", "0028,0103"),
            photometric_interpretation=photometric,
            planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
        )
    except UnsupportedImageError as exc:
        raise PixelDataError(str(exc)) from exc


def number_of_frames(ds: Dataset) -> int:
    """Number of Frames, 1 when absent; raise when it is not a positive integer."""
    value = ds.get("NumberOfFrames", 1)
    try:
        frames = int(value if value not in (None, "") else 1)
    except (TypeError, ValueError) as exc:
        raise PixelDataError(f"(0028,0008) 'Number of Frames' is not an integer: {value!r}") from exc
    if frames < 1:
        raise PixelDataError(f"(0028,0008) 'Number of Frames' must be at least 1, got {frames}")
    return frames


def _check_native_form(info: FrameInfo) -> None:
    if info.bits_allocated not in (8, 16, 32):
        raise UnsupportedImageError(
            f"(0028,0100) 'Bits Allocated' {info.bits_allocated} is not carried by our codecs"
        )
    if info.photometric_interpretation in ("YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"):
        raise UnsupportedImageError(
            f"(0028,0004) native '{info.photometric_interpretation}' is subsampled; kept as received"
        )


def deferred_pixels(ds: Dataset) -> tuple[str, int, int] | None:
    """(file, value offset, value length) of a native Pixel Data left unread in its file, else None.

    ``dcmread(path, defer_size=...)`` leaves large values in the file; a
    large multi-frame image's pixels are then read one frame at a time
    (:class:`FileFrames`) instead of all at once.
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if "PixelData" not in ds or syntax not in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN):
        return None  # deflated or big endian: the value is not the file's bytes as they are
    raw = ds.get_item(0x7FE00010, keep_deferred=True)
    filename = getattr(ds, "filename", None)
    tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
    if (getattr(raw, "value", b"") is not None or not isinstance(filename, str) or tell is None
            or length in (None, 0xFFFFFFFF)):
        return None
    return filename, tell, length


class _LazyFrames(Sequence[np.ndarray]):
    """Frames produced on each access or pass rather than held: subclasses give one by index and iterate."""

    frames: int

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.frames))]
        if index < 0:
            index += self.frames
        if not 0 <= index < self.frames:
            raise IndexError(index)
        return self._frame(index)

    def _frame(self, index: int) -> np.ndarray:
        raise NotImplementedError


class FileFrames(_LazyFrames):
    """The frames of a native little-endian Pixel Data value still in its file, read one at a time.

    Each access reads that frame (``os.pread``) and nothing else, so an image
    of any size is held one frame at a time; iterating again reads again.
    """

    def __init__(self, path: str, offset: int, info: FrameInfo, frames: int) -> None:
        self.path, self.offset, self.info, self.frames = path, offset, info, frames

    def _frame(self, index: int) -> np.ndarray:
        size = self.info.frame_bytes
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, size, self.offset + index * size)
        finally:
            os.close(fd)
        if len(data) != size:
            raise PixelDataError(f"frame {index + 1}: the file holds {len(data)} of its {size} bytes")
        return _native_frame(np.frombuffer(data, dtype=self.info.dtype.newbyteorder("<")), self.info)

    def __iter__(self) -> Iterator[np.ndarray]:
        size = self.info.frame_bytes
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self.offset)
            for index in range(self.frames):
                data = handle.read(size)
                if len(data) != size:
                    raise PixelDataError(f"frame {index + 1}: the file holds {len(data)} of its {size} bytes")
                yield _native_frame(np.frombuffer(data, dtype=self.info.dtype.newbyteorder("<")), self.info)


def _native_frame(flat: np.ndarray, info: FrameInfo) -> np.ndarray:
    """One frame's samples (in stored order) as the codec array form."""
    if info.samples_per_pixel == 1:
        frame = flat.reshape(info.rows, info.columns)
    elif info.planar_configuration == 1:
        frame = flat.reshape(info.samples_per_pixel, info.rows, info.columns).transpose(1, 2, 0)
    else:
        frame = flat.reshape(info.rows, info.columns, info.samples_per_pixel)
    return np.ascontiguousarray(frame, dtype=info.dtype)


def native_frames(ds: Dataset) -> Sequence[np.ndarray]:
    """Every frame of native `ds` as a sequence that can be iterated more than once.

    Pixel Data left in its file (:func:`deferred_pixels`, little endian) is
    read frame by frame on each pass; otherwise the frames are views of the
    value in memory.  Raises as :func:`iter_frames` does, before any frame is read.
    """
    info = frame_info(ds)
    frames = number_of_frames(ds)
    uid = transfer_syntax(ds)
    if is_encapsulated(uid):
        raise ValueError("native_frames reads native pixel data only")
    _check_native_form(info)
    deferred = deferred_pixels(ds) if uid != ExplicitVRBigEndian else None
    if deferred is None:
        return list(_iter_native(ds, info, frames, big_endian=(uid == ExplicitVRBigEndian)))
    path, offset, length = deferred
    _check_native_length(length, info, frames)
    return FileFrames(path, offset, info, frames)


def _check_native_length(length: int, info: FrameInfo, frames: int) -> None:
    """Raise unless native Pixel Data of `length` bytes holds exactly `frames` frames of `info`.

    Only the one pad byte of an odd length may follow them (PS3.5 8.1.1): a
    longer value holds data that the attributes do not describe (more frames
    than Number of Frames says, say), which recompressing the described frames
    alone would drop.
    """
    expected = info.frame_bytes * frames
    if expected <= length <= expected + (expected & 1):
        return
    raise PixelDataError(
        f"(7FE0,0010) 'Pixel Data' has {length} bytes, {expected} expected for "
        f"{frames} frame(s) of {info.rows} x {info.columns} x {info.samples_per_pixel} "
        f"at {info.bits_allocated} bits"
    )


def _iter_native(ds: Dataset, info: FrameInfo, frames: int, big_endian: bool) -> Iterator[np.ndarray]:
    dtype = info.dtype.newbyteorder(">" if big_endian else "<")
    deferred = deferred_pixels(ds) if not big_endian else None
    if deferred is not None:  # left in its file: one frame at a time
        yield from native_frames(ds)
        return
    data = ds.PixelData
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PixelDataError("(7FE0,0010) 'Pixel Data' is not a byte value")
    expected = info.frame_bytes * frames
    _check_native_length(len(data), info, frames)
    if big_endian and info.bits_allocated == 8 and ds["PixelData"].VR == "OW":
        # Big endian OW holds 16-bit words: 8-bit samples come in swapped pairs.
        words = np.frombuffer(data, dtype=">u2", count=len(data) // 2)
        data = words.astype("<u2").tobytes() + bytes(data[len(data) - len(data) % 2:])
    flat = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize)
    per_frame = info.rows * info.columns * info.samples_per_pixel
    for index in range(frames):
        yield _native_frame(flat[index * per_frame:(index + 1) * per_frame], info)


END_MARKED = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG and JPEG-LS: EOI (T.81 B.2.1, T.87 C.2.1)
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000: EOC (T.800 A.4.4)
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K: EOC
})
"""Syntaxes whose frame codestream ends with the marker FFD9 (EOI or EOC)."""


def ends_with_marker(fragment: bytes) -> bool:
    """True when `fragment` ends with FFD9, give or take two bytes of padding (00 or FF).

    Some decoders fill a truncated codestream's missing values without an
    error; the end marker is how a cut-off frame is told from a whole one.
    The padding of an odd length (PS3.5 A.4) is 00 by the standard; some
    writers pad with FF, which is harmless after the end marker.
    """
    tail = bytes(fragment[-4:])
    at = tail.rfind(b"\xff\xd9")
    return at >= 0 and all(b in (0x00, 0xFF) for b in tail[at + 2:])


def codestream_end(fragment: bytes) -> int | None:
    """Where the first codestream in `fragment` ends (after its EOI or EOC), found by walking its markers.

    JPEG and JPEG-LS: marker segments, and the entropy-coded data up to the
    next marker; JPEG 2000 and HTJ2K: the main header's segments, then each
    tile-part by the length in its SOT segment (:func:`walk_markers`).  None
    when `fragment` is not such a codestream or its headers do not hold
    together (its decoder judges it then).  An end marker found this way
    cannot be a byte pair inside the entropy-coded data, which is what a
    search for FFD9 would find.
    """
    for marker in walk_markers(bytes(fragment)):
        if marker.code == EOI:  # or EOC
            return marker.end
    return None


J2K_LOSSLESS_LABELLED = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202"})
"""JPEG 2000 and HTJ2K syntaxes that say their codestreams are lossless."""


def codestream_size(fragment: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS, JPEG 2000 or HTJ2K codestream declares, read before it is decoded.

    From the first SOF segment (T.81 B.2.2; JPEG-LS SOF55, T.87 C.2.2: rows
    0 when a DNL segment gives them later) or the SIZ segment (T.800 A.5.1:
    the image area less its offsets).  A decoder allocates what its header
    declares, so a few bytes declaring a huge image would take gigabytes:
    this is checked against the attributes first.  None when no header is found.
    """
    data = bytes(fragment[:65_536])
    size = len(data)
    if data[:2] == b"\xff\x4f":  # SOC, then SIZ
        if data[2:4] != b"\xff\x51" or size < 22:
            return None
        width, height, left, top = (int.from_bytes(data[at:at + 4], "big") for at in (8, 12, 16, 20))
        return height - top, width - left
    for code, pos, _ in walk_markers(data):
        if (0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC)) or code == 0xF7:
            if pos + 9 > size:
                return None
            return (data[pos + 5] << 8) | data[pos + 6], (data[pos + 7] << 8) | data[pos + 8]
        if code == SOS:
            return None
    return None


def irreversible_wavelet(fragment: bytes) -> bool:
    """True when a JPEG 2000 codestream's COD or COC segment (main or tile-part header) names the 9-7 wavelet.

    The irreversible wavelet is lossy (T.800 A.6.1, Table A.20: 0 = 9-7
    irreversible, 1 = 5-3 reversible), whatever transfer syntax the image
    was labelled with.  Segments that do not hold together end the walk.
    """
    data = bytes(fragment)
    size = len(data)
    if data[:2] != b"\xff\x4f":
        return False
    components_wide = False  # Csiz > 256: COC names its component in two bytes
    for code, pos, _ in walk_markers(data):
        if code == 0x51 and pos + 40 <= size:  # SIZ
            components_wide = ((data[pos + 38] << 8) | data[pos + 39]) > 256
        elif code == 0x52 and pos + 14 <= size:  # COD: Scod, SGcod (4), SPcod: levels, xcb, ycb, style, transform
            if data[pos + 13] == 0:
                return True
        elif code == 0x53:  # COC: Ccoc (1 or 2), Scoc, SPcoc as in COD
            at = pos + 4 + (2 if components_wide else 1) + 1 + 4
            if at < size and data[at] == 0:
                return True
    return False


JPEG_LOSSLESS_LABELLED = {JPEG_LOSSLESS: 0xC3, JPEG_LOSSLESS_SV1: 0xC3, JPEG_LS_LOSSLESS: 0xF7}
"""JPEG and JPEG-LS syntaxes that say their codestreams are lossless, and the SOF marker of that process."""

_SOF = frozenset({*range(0xC0, 0xD0), 0xF7, 0xF9}) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC


def _sof_name(code: int) -> str:
    return f"SOF{code - 0xC0}" if code < 0xD0 else {0xF7: "SOF55", 0xF9: "SOF57"}[code]


# The lossless processes (T.81 Table B.1: SOF3, 7, 11, 15; T.87 C.2.2: SOF55): any other frame header is DCT.
_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF, 0xF7})


def _sof_kind(code: int) -> str:
    if code == 0xF9:
        return "JPEG-LS extensions, T.870"
    return "lossless" if code in _LOSSLESS_SOF else "DCT: lossy"


class JpegCoding(NamedTuple):
    """What the frame and scan headers of a JPEG or JPEG-LS codestream say of its coding (:func:`jpeg_coding`)."""

    lossy: str | None  # why they say it is not the lossless coding of its label (lossy, or another process)
    complete: bool  # every header up to the end marker was read, and each scan header holds together


def jpeg_coding(fragment: bytes, uid: str) -> JpegCoding:
    """What the headers of a codestream labelled JPEG Lossless or JPEG-LS Lossless (:data:`JPEG_LOSSLESS_LABELLED`)
    say of its coding: not the lossless coding its label names (and why) or it is, and whether every one of them
    was read.

    Decoders read what a codestream says, not what its label says.  Not the
    label's coding are: a frame header of another process than the label's
    (SOF3, T.81 B.1.1.3; SOF55, T.87 C.2.2), a DCT one above all (lossy), an
    arithmetic-coded lossless one (SOF11) under a Huffman label; a JPEG-LS scan header
    with NEAR != 0 (T.87 C.2.3: near-lossless); a point transform Pt != 0
    (Al, the low nibble of a scan header's last byte), which codes each value
    shifted right by Pt (T.81 H.1.2.1), so that a decoder gives back
    ``original >> Pt << Pt``.  The walk (:func:`walk_markers`) stops at bytes
    where a marker should be, which some decoders skip: what lies beyond is
    not seen, and the coding is not `complete`.
    """
    expected = JPEG_LOSSLESS_LABELLED[str(uid)]
    data = bytes(fragment)
    size = len(data)
    for code, pos, end in walk_markers(data):
        if code in _SOF and code != expected:
            return JpegCoding(f"its frame header is {_sof_name(code)} ({_sof_kind(code)}), not the "
                              f"{_sof_name(expected)} of its transfer syntax", True)
        if code == SOS:
            count = data[pos + 4] if pos + 4 < size else 0
            if end > size or end - pos != 8 + 2 * count:  # FFDA, Ls, Ns, Ns x 2, three bytes (T.81 B.2.3)
                return JpegCoding(None, False)
            if expected == 0xF7 and data[end - 3]:
                return JpegCoding(f"NEAR={data[end - 3]} in its scan header: near-lossless", True)
            if data[end - 1] & 0x0F:
                pt = data[end - 1] & 0x0F
                return JpegCoding(f"point transform Pt={pt} in its scan header: the low {pt} bits of each "
                                  "value are dropped", True)
        if code == EOI:
            return JpegCoding(None, True)
    return JpegCoding(None, False)


_RLE_ONE_ITEM = "an RLE frame is one item (PS3.5 A.4.2)"


def _check_rle_items(value: bytes, frames: int) -> None:
    """Raise unless the encapsulated RLE `value` holds one item per frame.

    PS3.5 A.4.2 puts each RLE frame in one fragment.  Items joined into one
    frame would be decoded as the first item alone (the others taken for
    the tail of its last segment), and fewer items than frames leave frames
    out.  Only the item headers are read.
    """
    buffer = BytesIO(value)
    parse_basic_offsets(buffer)
    items, _ = parse_fragments(buffer)
    if items != frames:
        raise PixelDataError(f"the Pixel Data holds {items} items for {frames} frame(s) of (0028,0008) "
                             f"'Number of Frames': {_RLE_ONE_ITEM}")


def frame_decoder(ds: Dataset) -> tuple[str, DecodeFrame | None]:
    """The proof name of the decoder that reads `ds`'s pixels, and the decoder (None for native data)."""
    uid = transfer_syntax(ds)
    if not is_encapsulated(uid):
        return NATIVE, None
    return source_decoder(uid)


def iter_frames(ds: Dataset) -> Iterator[np.ndarray]:
    """Yield each frame of `ds` in the codec array convention.

    Native data is read from its bytes; encapsulated data by
    :func:`gateway.pipeline.decoders.source_decoder` (another project's
    decoder wherever one exists).

    Raises
    ------
    UnsupportedImageError
        Float, 1-bit or subsampled native images, which no codec of ours
        carries, or a syntax nobody here decodes.
    PixelDataError
        Missing or inconsistent attributes, short pixel data, a value that
        holds fewer or more frames than (0028,0008) 'Number of Frames' says
        (or an RLE frame in more than one item), or a decoder failure.
    """
    info = frame_info(ds)
    frames = number_of_frames(ds)
    uid = transfer_syntax(ds)
    if not is_encapsulated(uid):
        _check_native_form(info)
        yield from _iter_native(ds, info, frames, big_endian=(uid == ExplicitVRBigEndian))
        return
    if info.bits_allocated not in (8, 16, 32):
        raise UnsupportedImageError(
            f"(0028,0100) 'Bits Allocated' {info.bits_allocated} is not carried by our codecs"
        )
    _, decode = source_decoder(uid)
    start_image(uid)  # an inter-coded frame may refer only to the frame before it in this image
    found = 0
    try:
        if uid == RLE_LOSSLESS:
            _check_rle_items(ds.PixelData, frames)
        for number, fragments in enumerate(generate_fragmented_frames(ds.PixelData, number_of_frames=frames),
                                           start=1):
            if number > frames:  # a Basic Offset Table that lists more frames than Number of Frames says
                raise PixelDataError(f"the Pixel Data holds more frames than (0028,0008) 'Number of Frames' "
                                     f"{frames}")
            if uid == RLE_LOSSLESS and len(fragments) != 1:  # an offset table grouping items
                raise PixelDataError(f"frame {number} is in {len(fragments)} items: {_RLE_ONE_ITEM}")
            fragment = fragments[0] if len(fragments) == 1 else b"".join(fragments)
            del fragments
            found = number
            declared = codestream_size(fragment) if uid in END_MARKED else None
            if declared is not None and (declared[0] not in (0, info.rows) or declared[1] != info.columns):
                raise PixelDataError(f"frame {number}: the codestream declares {declared[0]} x {declared[1]} "
                                     f"samples, the attributes {info.rows} x {info.columns}")
            if uid in END_MARKED:
                if not ends_with_marker(fragment):
                    raise PixelDataError(f"frame {number}: the codestream does not end with its end marker "
                                         "(FFD9): it is truncated")
                if uid in J2K_LOSSLESS_LABELLED and irreversible_wavelet(fragment):
                    raise UnsupportedImageError(f"frame {number}: the codestream uses the irreversible 9-7 "
                                                "wavelet: it is lossy, whatever its transfer syntax says")
                end = codestream_end(fragment)
                if end is not None and bytes(fragment[end:]).strip(b"\x00\xff"):
                    raise PixelDataError(f"frame {number}: {len(fragment) - end} bytes follow the end of its "
                                         "codestream (another codestream, or more frames than Number of "
                                         "Frames says)")
            if uid == RLE_LOSSLESS:  # no end marker: where the last segment's runs end instead
                tail = trailing_bytes(fragment, info)
                if len(tail) > 1 and tail.strip(b"\x00"):  # encoders pad a segment to an even length
                    raise PixelDataError(f"frame {number}: {len(tail)} bytes follow the data of its last RLE "
                                         "segment (another frame, or more than its attributes describe)")
            coding = jpeg_coding(fragment, uid) if uid in JPEG_LOSSLESS_LABELLED else None
            if coding is not None and coding.lossy:
                raise UnsupportedImageError(f"frame {number}: the codestream is not the lossless coding its "
                                            f"transfer syntax names: {coding.lossy}")
            values = decode(fragment, info)
            if coding is not None and not coding.complete:  # after the decoder: damage is still said to be damage
                raise UnsupportedImageError(
                    f"frame {number}: nothing shows the codestream is lossless, whatever its transfer syntax says: "
                    "its headers cannot be followed to its end marker (bytes where a marker should be, T.81 "
                    "B.1.1.2), and a scan beyond may be lossy")
            yield values
            del values
        if found < frames:  # an offset table naming fewer frames, or fewer items than frames
            raise PixelDataError(f"the Pixel Data holds {found} frame(s), (0028,0008) 'Number of Frames' "
                                 f"says {frames}")
    except (UnsupportedImageError, PixelDataError):
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # other projects' decoders raise many types; Rust panics are BaseException
        raise PixelDataError(f"pixel data of syntax {uid} could not be decoded: {type(exc).__name__}: {exc}") from exc


HOLD_DECODED_BYTES = 64 << 20
"""Decoded frames of a compressed source up to this size are held; a larger image is decoded on each pass."""


class DecodedFrames(_LazyFrames):
    """The frames of an encapsulated `ds`, decoded anew (:func:`iter_frames`) on each pass.

    A compressed multi-frame image decodes to several times its own size;
    holding every decoded frame would make the worker's memory grow with
    it.  Each pass over this sequence decodes the frames one at a time
    instead: the pipeline makes three (hash and checks, encoding,
    verification), so only large images are read this way.
    """

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.frames = number_of_frames(ds)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter_frames(self.ds)

    def _frame(self, index: int) -> np.ndarray:
        for number, frame in enumerate(self):  # codestreams are found by walking the items
            if number == index:
                return frame
        raise IndexError(index)


def decoded_frames(ds: Dataset) -> Sequence[np.ndarray]:
    """Every frame of encapsulated `ds`: held when they decode to at most :data:`HOLD_DECODED_BYTES`, else
    a :class:`DecodedFrames` that decodes them on each pass.  Raises as :func:`iter_frames` does.
    """
    info = frame_info(ds)
    if info.frame_bytes * number_of_frames(ds) <= HOLD_DECODED_BYTES:
        return list(iter_frames(ds))
    return DecodedFrames(ds)


def high_bits_used(frame: np.ndarray, info: FrameInfo) -> bool:
    """True when a value holds bits outside what Bits Stored allows.

    For unsigned data any bit at or above Bits Stored counts; for signed data
    every value must be the sign extension of its low Bits Stored bits (native
    data carries the whole container: :func:`hidden_bits` with `full_width`).
    A codec working at precision Bits Stored would lose such bits, so the
    pipeline passes these images through unchanged.
    """
    return hidden_bits(frame, info, full_width=True)
