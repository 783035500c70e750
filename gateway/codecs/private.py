"""GatewayLossless ("gwl"), versions 1 and 2: the project's own lossless codec.

Transfer syntax ``2.25.98736700971092333592611877631001549337`` (a UUID-based
UID of our own), encapsulated like Explicit VR Little Endian with one fragment
per frame.  A frame is intra (self-contained) or inter: coded as its
difference from the previous frame of the same image, which its header names
by CRC-32; decoding frames in order always has it (see :func:`decode`).

Bitstream summary (docs/private-codec.md is the full specification; all
integers little endian)::

    offset size  field
    0      4     magic "GWL1"
    4      1     version: 1 or 2 (the encoder writes 1 unless asked for 2)
    5      1     mode: 0 stored (raw frame bytes follow), 1 coded
    6      1     samples per pixel (1 or 3)
    7      1     bits allocated (8, 16 or 32)
    8      1     bits stored (1..16)
    9      1     pixel representation (0 unsigned, 1 signed)
    10     1     colour transform (0 none, 1 subtract green, 2 YCoCg-R, 3 indexed
                 colour, 4 channel ranks then subtract green: version 2 only)
    11     1     prediction: 0 intra, 1 from the previous frame, 0x10 + flags: intra
                 coded as subbands of one lifting level (version 2, one sample)
    12     4     rows
    16     4     columns
    20     4     CRC-32 (ISO-HDLC, as zlib) of the decoded frame's little-endian bytes
    24     4     CRC-32 of the reference frame (0 when intra)
    28     12*P  per plane (P = samples, 4 for indexed colour, 6 for channel
                 ranks: 3 planes then 3 channel maps; coded mode only):
                 offset int32, maxv uint32, palette count uint32 (0 = no palette)
    ...          stored: the frame bytes; coded, version 1: one range-coded
                 segment; version 2: stripe rows (low 24 bits) and context
                 model (top 8 bits) uint32, S + 1 segment lengths uint32
                 (S = ceil(rows / stripe rows)), the segments

Version 1 coded segment: for each plane with a palette, the bitmap of used values
(``maxv + 1`` adaptive bits); then for each plane with a non-zero coded
maximum, every sample in raster order: a blend of five sub-predictors
weighted by their local errors, clamped to the W/N/NE range and corrected by
a bias estimate per texture context; the residual as zero flag, sign, unary
magnitude class and mantissa bits, in contexts chosen by the local activity;
coded by a 32-bit binary range coder with two-rate adaptive 16-bit
probabilities.

Version 2: segment 0 holds the bitmaps (and an indexed-colour table), each
further segment one horizontal stripe of the image planes, coded
independently so that threads share a large frame.  The prediction is
version 1's (with table weights); a residual is a binary zero flag, then one
token of an adaptive multi-symbol alphabet (38 symbols, frequency tables per
coding class), raw low bits and the sign only when both signs are possible;
colour planes 1 and 2 take plane 0's error at the same pixel into their
coding class (after subtract green and YCoCg-R, plane 2 takes plane 1's: the
chained-guides flag of the model field).  The coding class follows one of
the context models named in the stream: model 0 (the activity class), model 1 (coarse classes from the
neighbours' errors, refined by the local gradient and the signal level once a
refined class has learnt enough), model 2 (model 1's coarse and refined
classes mixed, the sign's context split by where the prediction lies between
two integers), model 4 (model 2 with two more sub-predictors, ``2N - NN``
and ``2W - WW``), model 5 (model 4, and a sample whose
neighbours hold only two levels codes first whether and which of them it
repeats), model 6 (model 5, and a sample whose neighbours W, N and NE are
equal codes first whether it repeats them, which is then all it costs), model
7 (written now: model 6, and a bias context applies its correction only while
the correction has been helping there) or model 3 (written for indexed colour where it
codes smaller: model 2, but the index plane is coded as which neighbour's
colour a pixel repeats, else the index among recent escapes or by value).  A grey
intra frame whose samples of one parity are means of their neighbours (an
image enlarged by interpolation) or repeat the sample before them (enlarged
by repeating samples) may be coded as the subbands of one level of lifting
along its rows, columns or both (:mod:`._private_subbands`).

Decoding checks every header field against the expected :class:`FrameInfo`
and named limits before allocating, bounds the coder's reads, requires the
coded segment to end exactly at the end of the stream, and verifies the CRC:
any inconsistency raises :class:`CorruptCodestreamError`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import threading
import zlib
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gateway.codecs import _private_index as _index
from gateway.codecs import _private_planes as _planes
from gateway.codecs import _private_planes2 as _planes2
from gateway.codecs import _private_predict as _predict
from gateway.codecs import _private_rangecoder as _rc
from gateway.codecs import _private_subbands as _sb
from gateway.codecs import _private_symbols as _sym
from gateway.codecs import _private_transforms as _tf
from gateway.codecs import register
from gateway.codecs.base import FrameInfo, FunctionCodec, check_frame
from gateway.dicom.uids import GATEWAY_LOSSLESS_V1
from gateway.errors import CorruptCodestreamError, UnsupportedImageError

__all__ = [
    "CODEC", "encode", "decode", "encode_frames", "iter_encode_frames", "decode_frames", "is_intra", "start_image", "supports",
    "UID", "MAGIC", "VERSION", "VERSIONS",
]

UID = GATEWAY_LOSSLESS_V1
MAGIC = b"GWL1"
VERSION = 1  # the version the encoder writes unless asked for another (see encode)
VERSIONS = (1, 2)  # the versions the decoder reads
MODE_STORED = 0
MODE_CODED = 1
PREDICT_INTRA = 0
PREDICT_PREVIOUS = 1
PREDICT_SUBBANDS = 0x10  # version 2, one sample: intra, the plane as subbands; the low bits name them

_HEADER = struct.Struct("<4sBBBBBBBBIIII")
_PLANE = struct.Struct("<iII")
_U32 = struct.Struct("<I")

# Named limits checked before anything is allocated.
MAX_BITS_STORED = 16
MAX_PLANE_VALUE = (1 << 18) - 1  # colour differences of 16-bit samples need 18 bits
MIN_OFFSET = -(1 << 18)
MAX_OFFSET = 1 << 18
# Code a frame from the previous one when that is estimated at most this fraction of intra coding.
INTER_GAIN = 0.9
# Decoded frames remembered per thread as references for the next frame.
RECENT_FRAMES = 2
# Largest colour table of an indexed colour frame (colour transform 3); version 2 with context
# model 3, whose index plane's cost does not grow with the table's size, allows more.
MAX_COLOURS = 4096
MAX_MATCHED_COLOURS = 1 << 16
# A frame of more colours than MAX_COLOURS is tried as indexed colour (model 3) only when at least
# this share of its pixels repeat a neighbour's colour (:func:`._private_transforms.repeated_colours`):
# screen captures (0.93 and above in 17 of 18 measured, each coded smaller so) win by it; other
# colour images of more than 4096 colours (0.66 and below in 11, photographs of the fundus and of
# microscopy among them) never did, and finding their colour table cost more than coding them.
MATCHED_REPEATS = 0.8
# Use a palette when at most this fraction of the values between minimum and maximum occur.
PALETTE_DENSITY = 0.75
# Version 2 stripes: a frame of at least 2 x STRIPE_BYTES (1 MiB) is cut into up to
# ENCODER_STRIPES horizontal stripes coded independently (one per STRIPE_BYTES), so that
# two or more threads share it.
STRIPE_BYTES = 1 << 19
ENCODER_STRIPES = 4
# Version 2 frames of at least SAMPLE_PIXELS pixels choose among their codings (colour
# transform, indexed colour with context model MODEL or 3, channel ranks; grey: as they are or
# as subbands) on a sample first:
# SAMPLE_BANDS bands of rows spread over the frame, a SAMPLE_SHARE of its rows together.  Only
# the codings whose sample is within SAMPLE_MARGIN of the smallest are coded whole.
SAMPLE_PIXELS = 1 << 16
SAMPLE_BANDS = 8
SAMPLE_SHARE = 1 / 8
SAMPLE_MARGIN = 0.03
# A grey frame's plane and its subbands are compared on a sample of bands of at least
# SUBBAND_BAND_ROWS rows (the first row of a band, without the row above, costs the plane more
# than its subbands: short bands favour the subbands), only where that sample is at most a
# quarter of the frame; else both are coded whole.  On the sample, both are coded whole unless
# one is more than SUBBAND_MARGIN below the other.
SUBBAND_BAND_ROWS = 32
SUBBAND_MARGIN = 0.05
# When the coding chosen on the sample codes more than SAMPLE_TRUST times its estimate, the
# sample did not show the frame: every coding is then coded whole.
SAMPLE_TRUST = 1.25
# Version 2 context model the encoder uses (see _private_planes2), written in the top byte of
# the stripe rows field (streams written before models existed have 0 there).
MODEL = _planes2.GATED_MODEL
MODEL_SHIFT = 24
# Context models a frame may name: the plane models, and model 3, which is model 2 but for the
# index plane of an indexed colour frame (colour transform 3), coded by the index model.
INDEX_MODEL = 3
MODELS = _planes2.MODELS + (INDEX_MODEL,)
# Flag of the model field (any plane model, not model 3): each image plane after the first is
# guided by the errors of the plane before it instead of the first plane's.  The encoder sets it
# (while CHAIN_GUIDES is on) after subtract green and YCoCg-R, whose second and third planes are
# both colour differences: the third plane's errors follow the second's more closely than the first's.
CHAINED = 0x10
CHAIN_GUIDES = True
# Version 2 context models the encoder tries for indexed colour (None: MODEL): the colour
# table's indices blended as values, and matched to the neighbours' (model 3).
INDEXED_MODELS = (None, INDEX_MODEL)
# Most stripes a decoder accepts (checked before reading the segment table).
MAX_STRIPES = 256
# Threads that code the stripes of one frame.
STRIPE_THREADS = max(1, min(ENCODER_STRIPES, os.cpu_count() or 1))


def supports(info: FrameInfo) -> str | None:
    """Return ``None`` when the codec can carry `info`, else why not."""
    if info.bits_allocated not in (8, 16, 32):
        return f"(0028,0100) 'Bits Allocated' {info.bits_allocated} is not 8, 16 or 32"
    if info.bits_stored > MAX_BITS_STORED:
        return f"(0028,0101) 'Bits Stored' {info.bits_stored} is above {MAX_BITS_STORED}"
    if info.samples_per_pixel not in (1, 3):
        return f"(0028,0002) 'Samples per Pixel' {info.samples_per_pixel} is not 1 or 3"
    return None


def _carried_range(info: FrameInfo) -> tuple[int, int]:
    """Values a frame may hold: the whole 8/16-bit dtype (so data above Bits Stored
    survives too), or the Bits Stored range for 32-bit allocation."""
    if info.bits_allocated == 32:
        return info.value_range
    limits = np.iinfo(info.dtype)
    return int(limits.min), int(limits.max)


def _crc(frame: np.ndarray) -> int:
    """CRC-32 of the frame's little-endian bytes (no copy on little-endian machines)."""
    little = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<"))
    return zlib.crc32(little.view(np.uint8).reshape(-1))


def _header(info: FrameInfo, mode: int, transform: int, crc: int, reference_crc: int | None,
            version: int = VERSION, subbands: int = 0) -> bytes:
    prediction = PREDICT_INTRA if reference_crc is None else PREDICT_PREVIOUS
    if subbands:
        prediction = PREDICT_SUBBANDS | subbands
    return _HEADER.pack(
        MAGIC, version, mode, info.samples_per_pixel, info.bits_allocated, info.bits_stored,
        info.pixel_representation, transform, prediction, info.rows, info.columns, crc, reference_crc or 0,
    )


def _planes_of(frame: np.ndarray, info: FrameInfo, transform: int) -> np.ndarray:
    """The frame as (planes, rows, columns) int32 after the colour transform."""
    if info.samples_per_pixel == 1:
        return frame.astype(np.int32)[np.newaxis]
    return _tf.forward_colour(frame, transform)


def _code_planes(planes: list[np.ndarray], maxvs: list[int], bitmaps: list[np.ndarray | None],
                 capacity: int) -> bytes:
    st = _rc.enc_start()
    buf = np.empty(max(capacity, 64), np.uint8)
    for used in bitmaps:
        if used is not None:
            ctx = _rc.new_contexts(_planes.CTX_BITMAP)
            st, buf = _planes.encode_bitmap(st, buf, used, ctx)
    for plane, maxv in zip(planes, maxvs):
        if maxv > 0:
            ctx = _rc.new_contexts(_planes.CTX_PER_PLANE)
            te, err, bm = _predict.new_state(plane.shape[1])
            st, buf = _planes.encode_plane(st, buf, plane, maxv, ctx, te, err, bm)
    buf, size = _rc.enc_finish(st, buf)
    return buf[:size].tobytes()


def _check_input(frame: np.ndarray, info: FrameInfo) -> np.ndarray:
    reason = supports(info)
    if reason:
        raise UnsupportedImageError(reason)
    frame = check_frame(frame, info)
    low, high = _carried_range(info)
    if int(frame.min()) < low or int(frame.max()) > high:
        raise UnsupportedImageError(
            f"(0028,0101) frame values {int(frame.min())}..{int(frame.max())} exceed "
            f"what the codec carries for 'Bits Stored' {info.bits_stored} in {info.bits_allocated} bits"
        )
    return frame


def encode(frame: np.ndarray, info: FrameInfo, reference: np.ndarray | None = None, *,
           version: int = VERSION) -> bytes:
    """Encode one frame (codec array convention) to a GatewayLossless stream.

    `reference` is the previous frame of the same multi-frame image: when
    given, the frame is coded as its difference from it if that looks cheaper
    (the stream then needs that frame to decode; see :func:`decode`).
    `version` 1 (the default) is what every decoder of this syntax reads;
    version 2 codes residuals as multi-symbol tokens and cuts frames of 1 MiB
    and more into stripes coded in parallel threads (decoders from version 2
    of this module on).
    """
    if version not in VERSIONS:
        raise ValueError(f"GatewayLossless version {version} is not one of {VERSIONS}")
    frame = _check_input(frame, info)
    crc = _crc(frame)
    transform = _tf.choose_colour(frame) if info.samples_per_pixel == 3 else _tf.COLOUR_NONE
    planes = _planes_of(frame, info, transform)
    reference_crc = None
    subband: tuple[int, np.ndarray | None] = (0, None)
    if version >= 2 and info.samples_per_pixel == 1:
        subband = _subband_candidate(planes[0], info)
    if reference is not None:
        reference = _check_input(reference, info)
        difference = planes - _planes_of(reference, info, transform)
        intra = _tf.estimate_cost(planes)
        if subband[1] is not None:  # an interpolated frame may code smaller on its own as subbands
            intra = min(intra, _tf.estimate_cost(subband[1][np.newaxis]))
        if _tf.estimate_cost(difference) < INTER_GAIN * intra:
            planes = difference
            reference_crc = _crc(reference)
        del difference
    subbands = 0
    if reference_crc is None and info.samples_per_pixel == 3:
        body, transform = _colour_body(frame, info, version, planes, transform)
    elif reference_crc is None and version >= 2:
        body, subbands = _grey_body(planes[0], info, version, *subband)
    else:
        model = _colour_model(transform) if info.samples_per_pixel == 3 else None
        body = _coded_body(list(planes), info, version, tables=0, model=model)
    del planes
    if len(body) >= info.frame_bytes:
        raw = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()
        return _header(info, MODE_STORED, _tf.COLOUR_NONE, crc, None, version) + raw
    return _header(info, MODE_CODED, transform, crc, reference_crc, version, subbands) + body


def _subband_candidate(plane: np.ndarray, info: FrameInfo) -> tuple[int, np.ndarray | None]:
    """(flags, int32 coefficients) of the subbands worth trying on a grey plane: when its sample of
    rows looks interpolated (the whole frame below SAMPLE_PIXELS) and the coefficients fit a
    plane's limits; else (0, None)."""
    bands = (np.zeros(1, np.int64), info.rows)
    if info.rows * info.columns >= SAMPLE_PIXELS:
        bands = _sample_bands(info.rows, _sb.MIN_BAND)
    flags = _sb.interpolated(plane, *bands)
    if not flags or not _sb.valid(flags, info.rows, info.columns):
        return 0, None
    coefficients = _sb.forward(plane, flags)
    low, high = int(coefficients.min()), int(coefficients.max())
    if not (MIN_OFFSET <= low <= MAX_OFFSET and high - low <= MAX_PLANE_VALUE):
        return 0, None
    return flags, coefficients


def _grey_body(plane: np.ndarray, info: FrameInfo, version: int, flags: int,
               coefficients: np.ndarray | None) -> tuple[bytes, int]:
    """The coded body of an intra grey plane (version 2) and its subband flags (0: none): the plane
    as it is, or its subbands (:func:`_subband_candidate`) when they code smaller (chosen as
    colour codings are: :func:`_chosen_body`)."""
    codings = [(_tf.COLOUR_NONE, [plane], 0, (), None)]
    if coefficients is not None:
        codings.append((_tf.COLOUR_NONE, [coefficients], 0, (), None))
    _, height = _sample_bands(info.rows, SUBBAND_BAND_ROWS)
    sampled = 4 * SAMPLE_BANDS * height <= info.rows  # the sample is a quarter of the frame at most
    best, body = _chosen_body(codings, info, version, SUBBAND_MARGIN if sampled else math.inf, SUBBAND_BAND_ROWS)
    return body, flags if best else 0


def _colour_body(frame: np.ndarray, info: FrameInfo, version: int, planes: np.ndarray,
                 transform: int) -> tuple[bytes, int]:
    """The smallest coded body of a colour frame and its colour transform: the colour transform
    `transform` (`planes`), indexed colour (context model MODEL and, version 2, 3), channel ranks
    (version 2).  Ties keep that order."""
    # Each coding: (colour transform, planes, tables, channel maps, context model).
    codings = [(transform, list(planes), 0, (), _colour_model(transform))]
    matched = version >= 2 and INDEX_MODEL in INDEXED_MODELS
    indexed = _tf.colour_palette(frame, MAX_COLOURS)
    if indexed is None and matched and _tf.repeated_colours(frame) >= MATCHED_REPEATS:
        indexed = _tf.colour_palette(frame, MAX_MATCHED_COLOURS)
    if indexed is not None:
        index, table = indexed
        models = INDEXED_MODELS if version >= 2 else (None,)
        if len(table[0]) > MAX_COLOURS:
            models = (INDEX_MODEL,)
        codings += [(_tf.COLOUR_PALETTE, [index] + [c[np.newaxis] for c in table], 3, (), model)
                    for model in models]
    ranked = _tf.channel_ranks(frame, PALETTE_DENSITY) if version >= 2 else None
    if ranked is not None:
        # Channels quantised apart (sparse values each): decorrelate their ranks.
        codings.append((_tf.COLOUR_RANKS, list(ranked[0]), 0, ranked[1], None))
    best, body = _chosen_body(codings, info, version)
    return body, codings[best][0]


def _colour_model(transform: int) -> int | None:
    """Context model of the planes of a colour frame coded with colour `transform` (None: MODEL):
    MODEL with the CHAINED flag after subtract green and YCoCg-R while CHAIN_GUIDES is on."""
    chained = CHAIN_GUIDES and transform in (_tf.COLOUR_SUBTRACT_GREEN, _tf.COLOUR_YCOCG_R)
    return MODEL | CHAINED if chained else None


def _chosen_body(codings: list, info: FrameInfo, version: int, margin: float = SAMPLE_MARGIN,
                 least: int = 1) -> tuple[int, bytes]:
    """(place in `codings`, body) of the smallest coding, ties to the first.  In version 2, a frame
    of SAMPLE_PIXELS or more codes each coding on a sample of its rows (bands of at least `least`
    rows) first, and only those within `margin` of the smallest estimate whole (all of them if the
    sample misled; an infinite margin codes every coding whole)."""
    estimates = None
    if version >= 2 and len(codings) > 1 and info.rows * info.columns >= SAMPLE_PIXELS and margin < math.inf:
        sample_rows = _sample_rows(info.rows, least)
        sample_info = dataclasses.replace(info, rows=len(sample_rows))
        estimates = []
        for _, coding_planes, tables, maps, model in codings:
            images = len(coding_planes) - tables
            sampled = [p[sample_rows] for p in coding_planes[:images]] + [p.copy() for p in coding_planes[images:]]
            body = _coded_body(sampled, sample_info, version, tables, maps, model)
            side = _side_bytes(body, len(coding_planes) + len(maps))
            estimates.append((len(body) - side) * info.rows / len(sample_rows) + side)
    chosen = list(range(len(codings)))
    if estimates is not None:
        chosen = [i for i in chosen if estimates[i] <= min(estimates) * (1 + margin)]
    best, body = _smallest_body(codings, chosen, info, version)
    if estimates is not None and len(body) > SAMPLE_TRUST * estimates[best]:
        # The sample missed what the frame holds: code every coding (ties keep the first).
        best, body = _smallest_body(codings, range(len(codings)), info, version, (best, body), chosen)
    return best, body


def _smallest_body(codings: list, indices, info: FrameInfo, version: int,
                   best: tuple[int, bytes] | None = None, done: Collection[int] = ()) -> tuple[int, bytes]:
    """(place in `codings`, body) of the smallest of `best` and the codings at `indices` not `done`;
    only the smallest body is held at a time."""
    for i in indices:
        if i in done:
            continue
        body = _whole_body(codings[i], info, version)
        if best is None or (len(body), i) < (len(best[1]), best[0]):
            best = (i, body)
    return best


def _whole_body(coding: tuple, info: FrameInfo, version: int) -> bytes:
    """The coded body of one coding (colour transform, planes, tables, channel maps, context model)
    over the whole frame."""
    colour, coding_planes, tables, maps, model = coding
    if colour == _tf.COLOUR_PALETTE:  # the index plane serves two codings: each codes a copy
        coding_planes = [p.copy() for p in coding_planes]
    return _coded_body(coding_planes, info, version, tables, maps, model)


def _side_bytes(body: bytes, descriptors: int) -> int:
    """Bytes of a version 2 body's side segment (bitmaps and colour tables: not sampled)."""
    return _U32.unpack_from(body, _PLANE.size * descriptors + _U32.size)[0]


def _sample_bands(rows: int, least: int = 1) -> tuple[np.ndarray, int]:
    """(first rows, height) of the encoder's sample of a frame: SAMPLE_BANDS bands of rows spread
    evenly, SAMPLE_SHARE of the rows together (each at least `least` rows, at most the frame)."""
    height = min(rows, max(least, int(rows * SAMPLE_SHARE) // SAMPLE_BANDS))
    return np.linspace(0, rows - height, SAMPLE_BANDS).astype(np.int64), height


def _sample_rows(rows: int, least: int = 1) -> np.ndarray:
    """Row numbers of the encoder's sample of a frame (:func:`_sample_bands`), each once."""
    starts, height = _sample_bands(rows, least)
    return np.unique(np.concatenate([np.arange(a, a + height) for a in starts]))


def _coded_body(planes: list[np.ndarray], info: FrameInfo, version: int, tables: int,
                maps: "list[tuple[int, int, np.ndarray | None]]" = (), model: int | None = None) -> bytes:
    """Plane descriptors and the coded segment(s) of int32 planes (modified in place).

    The last `tables` planes are the one-row colour table of indexed colour;
    `maps` are the channel maps of colour transform 4 (version 2), described
    after the planes and coding only their bitmaps.  Version 2 codes with
    context `model` (None: :data:`MODEL`).
    """
    descriptors, coded, maxvs, bitmaps = [], [], [], []
    for plane in planes:
        offset = int(plane.min())
        maxv = int(plane.max()) - offset
        shifted = plane
        shifted -= np.int32(offset)
        used = _tf.used_values(shifted, maxv)
        count = int(used.sum())
        if count <= PALETTE_DENSITY * (maxv + 1) and maxv > 0:
            shifted = _tf.to_palette(shifted, used)
            coded_max = count - 1
            bitmaps.append(used)
        else:
            count = 0
            coded_max = maxv
            bitmaps.append(None)
        descriptors.append(_PLANE.pack(offset, maxv, count))
        coded.append(np.ascontiguousarray(shifted, dtype=np.int32))
        maxvs.append(coded_max)
    for offset, maxv, used in maps:
        descriptors.append(_PLANE.pack(offset, maxv, 0 if used is None else int(used.sum())))
        coded.append(_NO_SAMPLES)
        maxvs.append(0)
        bitmaps.append(used)
    if maps:
        tables = len(maps)
    if version == 1:
        payload = _code_planes(coded, maxvs, bitmaps, info.frame_bytes // 2 + 1024)
    else:
        payload = _code_segments(coded, maxvs, bitmaps, len(coded) - tables, info, MODEL if model is None else model)
    return b"".join(descriptors) + payload


def _stripe_rows(info: FrameInfo) -> int:
    """Rows per stripe the encoder uses: one stripe per STRIPE_BYTES, at most ENCODER_STRIPES."""
    stripes = max(1, min(ENCODER_STRIPES, info.frame_bytes // STRIPE_BYTES, info.rows))
    return min(-(-info.rows // stripes), (1 << MODEL_SHIFT) - 1)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's pool came without its threads, so start a new one when needed."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _map(function, jobs: list) -> list:
    """`function` over `jobs`, in threads when there are several (the kernels release the GIL)."""
    global _pool
    if len(jobs) < 2 or STRIPE_THREADS < 2:
        return [function(job) for job in jobs]
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(STRIPE_THREADS, thread_name_prefix="gwl-stripe")
    return list(_pool.map(function, jobs))


_NO_GUIDE = np.empty((0, 0), np.int32)
_NO_SAMPLES = _NO_GUIDE  # the "plane" of a channel map, which codes no samples


def _guides(planes: list[np.ndarray], guided: bool, chained: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per plane the array its errors are kept in and the array that guides its contexts:
    with `guided`, the first plane keeps its errors and they guide the other planes; also
    `chained`, every plane but the last keeps its errors and they guide the plane after it."""
    if not guided or len(planes) < 2:
        return [_NO_GUIDE] * len(planes), [_NO_GUIDE] * len(planes)
    if chained:
        kept = [np.zeros(plane.shape, np.int32) for plane in planes[:-1]]
        return kept + [_NO_GUIDE], [_NO_GUIDE] + kept
    errors = np.zeros(planes[0].shape, np.int32)
    return [errors] + [_NO_GUIDE] * (len(planes) - 1), [_NO_GUIDE] + [errors] * (len(planes) - 1)


def _encode_segment(bitmaps: list, planes: list[np.ndarray], maxvs: list[int], capacity: int,
                    guided: bool, model: int, indexed: bool = False) -> bytes:
    """One version 2 segment: the bitmaps, then each plane with a non-zero maximum (empty when
    that is nothing); with `indexed`, the first plane is an index plane coded by the index model.
    `model` may carry the CHAINED flag."""
    if not _has_decisions(bitmaps, maxvs):
        return b""
    st = _rc.enc_start()
    buf = np.empty(max(capacity, 64), np.uint8)
    for used in bitmaps:
        if used is not None:
            ctx = _rc.new_contexts(_planes.CTX_BITMAP)
            st, buf = _planes.encode_bitmap(st, buf, used, ctx)
    keeps, guides = _guides(planes, guided, bool(model & CHAINED))
    model &= ~CHAINED
    for i, (plane, maxv, keep, guide) in enumerate(zip(planes, maxvs, keeps, guides)):
        if maxv > 0 and indexed and i == 0:
            st, buf = _index.encode_index(st, buf, plane, maxv, *_index_state(maxv))
        elif maxv > 0:
            te, err, bm = _planes2.new_plane_state(plane.shape[1], _plane_model(model))
            st, buf = _planes2.encode_plane(st, buf, plane, maxv, *_model_state(model), te, err, bm, guide, keep,
                                            _plane_model(model))
    buf, size = _rc.enc_finish(st, buf)
    return buf[:size].tobytes()


def _plane_model(model: int) -> int:
    """The context model of the planes that are not index planes: model 3 codes them as model 2."""
    return 2 if model == INDEX_MODEL else model


def _index_state(maxv: int) -> tuple[np.ndarray, ...]:
    """Fresh binary contexts, token table, recent escapes and escape memory of an index plane (model 3)."""
    return (_rc.new_contexts(_index.N_CONTEXTS), _sym.new_tables(_index.N_TABLES)) + _index.new_state(maxv)


def _model_state(model: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh token tables and binary contexts of one plane coded with context `model`."""
    plane_model = _plane_model(model)
    model = _planes2.context_model(plane_model)
    coarse = _planes2.N_COARSE if model else 0
    return (_sym.new_tables(_planes2.N_TABLES[model], coarse, _planes2.CLASS_GROUP[model]),
            _rc.new_contexts(_planes2.binary_contexts(plane_model)))


def _has_decisions(bitmaps: list, maxvs: list[int]) -> bool:
    return any(used is not None for used in bitmaps) or any(maxv > 0 for maxv in maxvs)


def _code_segments(planes: list[np.ndarray], maxvs: list[int], bitmaps: list, images: int,
                   info: FrameInfo, model: int) -> bytes:
    """Version 2 payload: stripe rows, segment lengths, the side segment, one segment per stripe."""
    stripe_rows = _stripe_rows(info)
    starts = range(0, info.rows, stripe_rows)
    capacity = info.frame_bytes // (2 * len(starts)) + 1024
    jobs = [(bitmaps, planes[images:], maxvs[images:], 1024, False, model)]
    jobs += [([], [p[y:y + stripe_rows] for p in planes[:images]], maxvs[:images], capacity, True, model,
              model == INDEX_MODEL) for y in starts]
    segments = _map(lambda job: _encode_segment(*job), jobs)
    table = _U32.pack(stripe_rows | model << MODEL_SHIFT) + b"".join(_U32.pack(len(s)) for s in segments)
    return table + b"".join(segments)


def encode_frames(frames: "list[np.ndarray]", info: FrameInfo, *, version: int = VERSION) -> list[bytes]:
    """Encode the frames of one multi-frame image, each predicted from the previous where that pays."""
    return list(iter_encode_frames(frames, info, version=version))


def iter_encode_frames(frames: "Iterable[np.ndarray]", info: FrameInfo, *,
                       version: int = VERSION) -> Iterator[bytes]:
    """The streams :func:`encode_frames` returns, one at a time, each as soon as its frame is encoded.

    A multi-frame image of thousands of frames is read one frame at a time
    (from its file, or decoded): its streams, given one by one, go into the
    Pixel Data value as they come, so that they are never held a second time
    as a list beside it.  Only the frame before (the reference) is kept.
    """
    previous = None
    for frame in frames:
        yield encode(frame, info, previous, version=version)
        previous = frame


def _corrupt(message: str) -> CorruptCodestreamError:
    return CorruptCodestreamError(f"GatewayLosslessV1: {message}")


def _check_header(data: bytes, info: FrameInfo) -> tuple[int, int, int, int, int, int]:
    if len(data) < _HEADER.size:
        raise _corrupt(f"stream of {len(data)} bytes is shorter than the {_HEADER.size}-byte header")
    (magic, version, mode, samples, alloc, stored, signed, transform, prediction,
     rows, cols, crc, reference_crc) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise _corrupt(f"bad magic {magic!r}")
    if version not in VERSIONS:
        raise _corrupt(f"unsupported version {version}")
    if mode not in (MODE_STORED, MODE_CODED):
        raise _corrupt(f"bad mode {mode}")
    expected = (info.samples_per_pixel, info.bits_allocated, info.bits_stored, info.pixel_representation,
                info.rows, info.columns)
    found = (samples, alloc, stored, signed, rows, cols)
    if found != expected:
        raise _corrupt(
            "header (samples, bits allocated, bits stored, signed, rows, columns) = "
            f"{found} does not match the dataset's {expected}"
        )
    if transform not in _tf.COLOUR_MODES or (samples == 1 and transform != _tf.COLOUR_NONE) or (
        transform == _tf.COLOUR_RANKS and version == 1
    ):
        raise _corrupt(f"bad colour transform {transform} for {samples} sample(s) in version {version}")
    if mode == MODE_STORED and (transform != _tf.COLOUR_NONE or prediction != PREDICT_INTRA):
        raise _corrupt("a stored frame has a colour transform or a reference")
    subbands = prediction & ~PREDICT_SUBBANDS if prediction & ~_sb.FLAGS == PREDICT_SUBBANDS else 0
    if subbands and not (version >= 2 and mode == MODE_CODED and samples == 1 and _sb.valid(subbands, rows, cols)):
        raise _corrupt(f"bad subband prediction {prediction:#04x} for {samples} sample(s), {rows} x {cols}, "
                       f"version {version}")
    if (prediction not in (PREDICT_INTRA, PREDICT_PREVIOUS) and not subbands) or (
        prediction != PREDICT_PREVIOUS and reference_crc
    ) or (prediction == PREDICT_PREVIOUS and transform in (_tf.COLOUR_PALETTE, _tf.COLOUR_RANKS)):
        raise _corrupt(f"bad prediction mode {prediction} (reference CRC {reference_crc:#010x})")
    return version, mode, transform, crc, prediction, reference_crc


def is_intra(data: bytes) -> bool:
    """Whether a stream decodes on its own (False: it needs the previous frame)."""
    return len(data) < _HEADER.size or data[11] != PREDICT_PREVIOUS


def decode(data: bytes, info: FrameInfo, reference: np.ndarray | None = None) -> np.ndarray:
    """Decode a GatewayLosslessV1 stream to a frame in the codec array convention.

    A frame coded from the previous one needs that frame: pass it as
    `reference`, or decode the frames in order in the same thread (the last
    frames decoded there are remembered, found by their CRC-32).
    """
    reason = supports(info)
    if reason:
        raise UnsupportedImageError(reason)
    data = bytes(data)
    version, mode, transform, crc, prediction, reference_crc = _check_header(data, info)
    if prediction == PREDICT_PREVIOUS:
        reference = _find_reference(reference, reference_crc, info)
    if mode == MODE_STORED:
        frame = _decode_stored(data, info)
    else:
        frame = _decode_coded(data, info, version, transform,
                              reference if prediction == PREDICT_PREVIOUS else None,
                              prediction & _sb.FLAGS if prediction & PREDICT_SUBBANDS else 0)
    if _crc(frame) != crc:
        raise _corrupt("CRC-32 of the decoded frame does not match the stream")
    _remember(frame, crc, info)
    return frame


def decode_frames(fragments: "list[bytes]", info: FrameInfo) -> list[np.ndarray]:
    """Decode every frame of one image in order (each reference is the frame before)."""
    out: list[np.ndarray] = []
    for data in fragments:
        out.append(decode(data, info, out[-1] if out else None))
    return out


_recent = threading.local()


def start_image() -> None:
    """The frames of another image follow in this thread: none decoded before may be their reference.

    Frames are found by their CRC-32 among those decoded last; without this,
    an inter-coded first frame naming the CRC of another image's frame would
    decode from that image's pixels.
    """
    _recent.frames = []


def _remember(frame: np.ndarray, crc: int, info: FrameInfo) -> None:
    """Keep a decoded frame as the reference of the next; decoding a frame again (a verification
    retried) does not push out the frame before it, which the next one may need too."""
    frames = [entry for entry in getattr(_recent, "frames", []) if (entry[0], entry[1]) != (crc, info)]
    _recent.frames = [(crc, info, frame)] + frames[: RECENT_FRAMES - 1]


def _find_reference(reference: np.ndarray | None, reference_crc: int, info: FrameInfo) -> np.ndarray:
    candidates = [reference] if reference is not None else []
    candidates += [f for c, i, f in getattr(_recent, "frames", []) if c == reference_crc and i == info]
    for frame in candidates:
        # The CRC also proves that a remembered frame was not modified by its user since.
        if frame.shape == info.shape and frame.dtype == info.dtype and _crc(frame) == reference_crc:
            return frame
    raise _corrupt(
        f"the frame is predicted from the previous frame (CRC-32 {reference_crc:#010x}), which is "
        "not available: decode the frames in order"
    )


def _decode_stored(data: bytes, info: FrameInfo) -> np.ndarray:
    body = len(data) - _HEADER.size
    if body == info.frame_bytes + 1 and data[-1] == 0:
        body -= 1  # the pad byte of an odd-length DICOM fragment
    if body != info.frame_bytes:
        raise _corrupt(f"stored frame has {body} bytes, {info.frame_bytes} expected")
    dtype = info.dtype.newbyteorder("<")
    frame = np.frombuffer(data, dtype=dtype, count=info.rows * info.columns * info.samples_per_pixel,
                          offset=_HEADER.size).astype(info.dtype).reshape(info.shape)
    low, high = _carried_range(info)
    if int(frame.min()) < low or int(frame.max()) > high:
        raise _corrupt("stored samples exceed the carried value range")
    return frame


def _descriptors(data: bytes, count: int) -> list[tuple[int, int, int]]:
    if len(data) < _HEADER.size + _PLANE.size * count:
        raise _corrupt("stream ends inside the plane descriptors")
    descriptors = [_PLANE.unpack_from(data, _HEADER.size + _PLANE.size * i) for i in range(count)]
    for offset, maxv, used in descriptors:
        if not (MIN_OFFSET <= offset <= MAX_OFFSET and maxv <= MAX_PLANE_VALUE and used <= maxv + 1):
            raise _corrupt(f"plane descriptor (offset {offset}, max {maxv}, palette {used}) out of limits")
        if used == 1 or (used and maxv == 0):
            raise _corrupt(f"palette of {used} values for a plane of maximum {maxv}")
    return descriptors


def _decode_coded(data: bytes, info: FrameInfo, version: int, transform: int,
                  reference: np.ndarray | None, subbands: int = 0) -> np.ndarray:
    if transform == _tf.COLOUR_PALETTE:
        descriptors = _descriptors(data, 4)
        offset, maxv, count = descriptors[0]
        colours = MAX_MATCHED_COLOURS if version == 2 and _model_of(data, 4) == INDEX_MODEL else MAX_COLOURS
        if offset != 0 or count != 0 or maxv >= min(colours, info.rows * info.columns):
            raise _corrupt(f"colour index plane (offset {offset}, max {maxv}, palette {count}) out of limits")
        shapes = [(info.rows, info.columns)] + [(1, maxv + 1)] * 3
    elif transform == _tf.COLOUR_RANKS:
        descriptors = _descriptors(data, 6)
        shapes = [(info.rows, info.columns)] * 3 + [(0, 0)] * 3
    else:
        descriptors = _descriptors(data, info.samples_per_pixel)
        shapes = [(info.rows, info.columns)] * info.samples_per_pixel
    if version == 1:
        values = _decode_planes(data, descriptors, shapes)
    else:
        tables = 3 if transform in (_tf.COLOUR_PALETTE, _tf.COLOUR_RANKS) else 0
        values, bitmaps = _decode_segments(data, descriptors, shapes, tables, info,
                                           maps=transform == _tf.COLOUR_RANKS)
    if transform == _tf.COLOUR_PALETTE:
        table = np.stack([p[0] for p in values[1:]], axis=-1)
        samples = table[values[0]]
    elif transform == _tf.COLOUR_RANKS:
        maps = [(offset, maxv, used) for (offset, maxv, _), used in zip(descriptors[3:], bitmaps[3:])]
        samples = _tf.inverse_ranks(values[:3], maps)
        if samples is None:
            raise _corrupt("a channel rank lies outside its channel map")
    else:
        if reference is not None:
            for plane, base in zip(values, _planes_of(reference, info, transform)):
                plane += base
        if subbands:
            samples = _sb.inverse(values[0], subbands)
        elif info.samples_per_pixel == 1:
            samples = values[0]
        else:
            samples = _tf.inverse_colour(values, transform)
    low, high = _carried_range(info)
    if int(samples.min()) < low or int(samples.max()) > high:
        raise _corrupt("decoded samples exceed the carried value range")
    return samples.astype(info.dtype).reshape(info.shape)


def _decode_planes(data: bytes, descriptors: list[tuple[int, int, int]],
                   shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Decode the coded segment into int32 planes of the given shapes (offsets and palettes undone)."""
    start = _HEADER.size + _PLANE.size * len(descriptors)
    buf = np.frombuffer(data, dtype=np.uint8)
    if len(buf) < start + 5 or buf[start] != 0:
        raise _corrupt("coded segment is shorter than 5 bytes or does not start with 0")
    st = _rc.dec_start(buf, start)
    bitmaps = []
    for offset, maxv, count in descriptors:
        if count:
            used = np.zeros(maxv + 1, np.uint8)
            ctx = _rc.new_contexts(_planes.CTX_BITMAP)
            st, ones = _planes.decode_bitmap(st, buf, used, ctx)
            if ones != count or not used[0] or not used[maxv]:
                raise _corrupt("palette bitmap does not match its descriptor")
            bitmaps.append(used)
        else:
            bitmaps.append(None)
    values = []
    for (offset, maxv, count), shape, used in zip(descriptors, shapes, bitmaps):
        plane = np.zeros(shape, np.int32)
        coded_max = count - 1 if count else maxv
        if coded_max > 0:
            ctx = _rc.new_contexts(_planes.CTX_PER_PLANE)
            te, err, bm = _predict.new_state(shape[1])
            st, status = _planes.decode_plane(st, buf, plane, coded_max, ctx, te, err, bm)
            if status != _planes.STATUS_OK:
                raise _corrupt("a residual exceeds the plane's value range")
        if st[2] > len(buf):
            raise _corrupt("coded segment is truncated")
        if used is not None:
            plane = _tf.from_palette(plane, used)
        plane += np.int32(offset)
        values.append(plane)
    if st[2] != len(buf) and not (st[2] == len(buf) - 1 and buf[-1] == 0):
        raise _corrupt(f"{len(buf) - st[2]} bytes follow the end of the coded segment")
    return values


def _model_of(data: bytes, planes: int) -> int:
    """The context model a version 2 stream of `planes` descriptors names (-1 if it is too short)."""
    start = _HEADER.size + _PLANE.size * planes
    return _U32.unpack_from(data, start)[0] >> MODEL_SHIFT if len(data) >= start + _U32.size else -1


def _segment_table(data: bytes, start: int, rows: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Stripe rows, context model and the (start, end) of every segment of a version 2 stream, checked."""
    if len(data) < start + _U32.size:
        raise _corrupt("stream ends before the stripe table")
    (field,) = _U32.unpack_from(data, start)
    stripe_rows, model = field & (1 << MODEL_SHIFT) - 1, field >> MODEL_SHIFT
    if model & ~CHAINED not in MODELS or model & CHAINED and model & ~CHAINED == INDEX_MODEL:
        raise _corrupt(f"unknown context model {model}")
    if not 1 <= stripe_rows <= rows or -(-rows // stripe_rows) > MAX_STRIPES:
        raise _corrupt(f"{stripe_rows} rows per stripe for {rows} rows is out of limits")
    count = 1 + -(-rows // stripe_rows)
    position = start + _U32.size * (1 + count)
    if len(data) < position:
        raise _corrupt("stream ends inside the segment table")
    segments = []
    for i in range(count):
        (length,) = _U32.unpack_from(data, start + _U32.size * (1 + i))
        if length > len(data) - position:
            raise _corrupt(f"segment {i} of {length} bytes does not fit the stream")
        segments.append((position, position + length))
        position += length
    if position != len(data) and not (position == len(data) - 1 and data[-1] == 0):
        raise _corrupt(f"{len(data) - position} bytes follow the end of the last segment")
    return stripe_rows, model, segments


def _decode_segment(data: np.ndarray, bitmaps: list[np.ndarray], planes: list[np.ndarray],
                    maxvs: list[int], guided: bool, model: int, indexed: bool = False) -> bool:
    """Decode one version 2 segment into `bitmaps` and `planes` (with `indexed`, the first plane is
    an index plane of model 3); False when it is corrupt."""
    if not _has_decisions(bitmaps, maxvs):
        return len(data) == 0
    if len(data) < 5 or data[0] != 0:
        return False
    st = _rc.dec_start(data, 0)
    for used in bitmaps:
        st, _ = _planes.decode_bitmap(st, data, used, _rc.new_contexts(_planes.CTX_BITMAP))
    keeps, guides = _guides(planes, guided, bool(model & CHAINED))
    model &= ~CHAINED
    for i, (plane, maxv, keep, guide) in enumerate(zip(planes, maxvs, keeps, guides)):
        if maxv > 0 and indexed and i == 0:
            st, status = _index.decode_index(st, data, plane, maxv, *_index_state(maxv))
            if status != _index.STATUS_OK:
                return False
        elif maxv > 0:
            te, err, bm = _planes2.new_plane_state(plane.shape[1], _plane_model(model))
            st, status = _planes2.decode_plane(st, data, plane, maxv, *_model_state(model), te, err, bm, guide, keep,
                                               _plane_model(model))
            if status != _planes2.STATUS_OK:
                return False
        if st[2] > len(data):
            return False
    return st[2] == len(data)


def _decode_segments(data: bytes, descriptors: list[tuple[int, int, int]], shapes: list[tuple[int, int]],
                     tables: int, info: FrameInfo, maps: bool = False) -> tuple[list[np.ndarray], list]:
    """Decode a version 2 payload into int32 planes of the given shapes (offsets and palettes undone)
    and the bitmaps; with `maps`, the last `tables` descriptors are channel maps (no samples)."""
    start = _HEADER.size + _PLANE.size * len(descriptors)
    stripe_rows, model, segments = _segment_table(data, start, info.rows)
    buf = np.frombuffer(data, dtype=np.uint8)
    bitmaps = [np.zeros(maxv + 1, np.uint8) if count else None for _, maxv, count in descriptors]
    planes = [np.zeros(shape, np.int32) for shape in shapes]
    maxvs = [count - 1 if count else maxv for _, maxv, count in descriptors]
    images = len(planes) - tables
    if maps:
        maxvs[images:] = [0] * tables
    indexed = model == INDEX_MODEL
    if indexed and (tables != 3 or maps):
        raise _corrupt(f"context model {INDEX_MODEL} codes indexed colour frames only")
    (a, b), stripes = segments[0], segments[1:]
    jobs = [(buf[a:b], [u for u in bitmaps if u is not None], planes[images:], maxvs[images:], False, model)]
    for (a, b), y in zip(stripes, range(0, info.rows, stripe_rows)):
        jobs.append((buf[a:b], [], [p[y:y + stripe_rows] for p in planes[:images]], maxvs[:images], True, model,
                     indexed))
    if not all(_map(lambda job: _decode_segment(*job), jobs)):
        raise _corrupt("a coded segment is corrupt (a residual out of range, or not ending at its end)")
    values = []
    for (offset, maxv, count), plane, used in zip(descriptors, planes, bitmaps):
        if used is not None:
            if int(used.sum()) != count or not used[0] or not used[maxv]:
                raise _corrupt("palette bitmap does not match its descriptor")
            plane = _tf.from_palette(plane, used)
        plane += np.int32(offset)
        values.append(plane)
    return values, bitmaps


CODEC = register(FunctionCodec(
    "gwl", UID, "GatewayLosslessV1", supports, encode, decode, private=True,
    encode_frames=encode_frames, iter_encode_frames=iter_encode_frames, decode_frames=decode_frames, encode_options=("version",), start_image=start_image))
