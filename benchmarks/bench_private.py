"""Benchmark the private codec (GatewayLossless V2 and V1) against the standard lossless codecs.

One run over the whole corpus: ratio and single-thread encode/decode MB/s per
corpus folder and overall, every round trip verified (see harness.py).  Our
codec runs as version 2 (context model 7, and model 3 for indexed colour
where it codes smaller: what version 2 writes), version 2 without model 3,
version 2 with context models 6, 5, 4, 2 and 1 (the models before, to weigh each
against the next) and version 1 (the codec module's default; the gateway
writes version 2), all on one thread (version 2's stripes coded one after the
other); ``gwl v2, 2 threads`` is version 2 with its stripes coded in parallel
(frames of 1 MiB and more).  The peers run through imagecodecs with one thread: JPEG-XL lossless at effort 3
and 7, JPEG-LS (CharLS), HTJ2K (OpenJPH) and JPEG 2000 reversible (OpenJPEG).
Signed frames are given to the peers as unsigned values in the same order
(sign bit flipped), which they code as well as the signed original.

Multi-frame images are coded by our codec as DICOM stores them, frame by frame
in order, each frame allowed to reference the one before it in the same image.

    python benchmarks/bench_private.py [--folders CT MR] [--only gwl jpegls] [--repeat N]

``--images FILE_OR_FOLDER ...`` runs on image files instead of the corpus
(lossless formats: PNG, TIFF, ...; 8- or 16-bit grey or RGB; or DICOM files,
``.dcm``), for images the corpus lacks, such as screen captures or a site's
own studies.  With ``--unseen`` only DICOM files whose pixels are lossless, not
in the corpus and not repeated are used, in folders by modality: for instance
the images of pydicom's larger test data (``pip download --no-deps
pydicom-data==1.0.0``, unzipped), which the corpus holds only four of.

``--enlarge KIND`` runs on the corpus's grey images (the first frame of each)
enlarged to about twice their size, as scanners and workstations enlarge
images for display and archive: ``linear`` puts the floor of the mean of two
neighbouring samples between them along both axes, ``rows`` along the rows
only, ``cubic`` the Catmull-Rom midpoint (rounded, clipped to the sample
range) along both axes, ``repeat`` every sample twice along both axes (the
nearest-neighbour zoom of viewers and secondary captures).  Images whose
side passes ``ENLARGE_SIDE`` are cropped to it first, about their centre.
``gwl v2 without subbands`` is version 2 with its subband mode off, to show
what the mode gains.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Entry, Item, arguments, load_corpus, load_images, run  # noqa: E402
from gateway.codecs import _private_subbands as _subbands  # noqa: E402
from gateway.codecs import private  # noqa: E402
from gateway.codecs.base import FrameInfo  # noqa: E402


ENLARGE_SIDE = 1024
ENLARGEMENTS = ("linear", "rows", "cubic", "repeat")


def _midpoints(image: np.ndarray, axis: int, cubic: bool) -> np.ndarray:
    """`image` (int64) with a sample put between every two neighbours along `axis`."""
    x = np.moveaxis(image, axis, 0)
    if cubic:  # Catmull-Rom at one half: (-a + 9b + 9c - d) / 16, the edges repeated
        padded = np.concatenate([x[:1], x, x[-1:]])
        middle = np.rint((-padded[:-3] + 9 * padded[1:-2] + 9 * padded[2:-1] - padded[3:]) / 16).astype(np.int64)
    else:
        middle = (x[:-1] + x[1:]) >> 1
    out = np.empty((2 * x.shape[0] - 1,) + x.shape[1:], np.int64)
    out[0::2] = x
    out[1::2] = middle
    return np.moveaxis(out, 0, axis)


def _enlarged(items: list[Item], kind: str) -> list[Item]:
    """The first frame of every grey image, enlarged (see the module's help)."""
    out = []
    for item in items:
        if item.info.samples_per_pixel != 1 or item.info.bits_allocated not in (8, 16):
            continue
        rows, columns = item.frames[0].shape
        top, left = max(0, (rows - ENLARGE_SIDE) // 2), max(0, (columns - ENLARGE_SIDE) // 2)
        image = item.frames[0][top:top + ENLARGE_SIDE, left:left + ENLARGE_SIDE].astype(np.int64)
        for axis in ((1,) if kind == "rows" else (0, 1)):
            image = np.repeat(image, 2, axis) if kind == "repeat" else _midpoints(image, axis, kind == "cubic")
        limits = np.iinfo(item.info.dtype)
        image = np.clip(image, limits.min, limits.max).astype(item.info.dtype)
        info = dataclasses.replace(item.info, rows=image.shape[0], columns=image.shape[1])
        out.append(Item(item.path, item.folder, info, [image]))
    return out


def _ours(items: list[Item], name: str, version: int, threads: int, model: int = private.MODEL,
          indexed: tuple = private.INDEXED_MODELS, subbands: bool = True) -> Entry:
    """Our codec; each frame after the first of an image may reference its predecessor."""
    previous: dict[int, np.ndarray] = {}
    for item in items:
        for before, frame in zip(item.frames, item.frames[1:]):
            previous[id(frame)] = before

    def encode(frame: np.ndarray, info: FrameInfo) -> bytes:
        private.STRIPE_THREADS = threads
        private.MODEL = model
        private.INDEXED_MODELS = indexed
        _subbands.GATE = GATE if subbands else -1.0  # below 0, no axis is ever tried
        return private.encode(frame, info, previous.get(id(frame)), version=version)

    def decode(data: bytes, info: FrameInfo) -> np.ndarray:
        # In order, as pydicom and the gateway decode: the reference is the frame decoded before.
        private.STRIPE_THREADS = threads
        return private.decode(data, info)

    return Entry(name, encode, decode, lambda info: private.supports(info) is None)


GATE = _subbands.GATE


def _unsigned(frame: np.ndarray) -> np.ndarray:
    if frame.dtype.kind != "i":
        return frame
    unsigned = np.dtype(f"u{frame.dtype.itemsize}")
    return frame.view(unsigned) ^ unsigned.type(1 << (8 * frame.dtype.itemsize - 1))


def _signed(values: np.ndarray, info: FrameInfo) -> np.ndarray:
    values = np.asarray(values).reshape(info.shape)
    if not info.signed:
        return values.astype(info.dtype, copy=False)
    unsigned = np.dtype(f"u{info.dtype.itemsize}")
    flipped = values.astype(unsigned) ^ unsigned.type(1 << (8 * info.dtype.itemsize - 1))
    return flipped.view(info.dtype)


def _peer(name: str, encode, decode, bits=(8, 16)) -> Entry:
    return Entry(
        name,
        lambda frame, info: bytes(encode(_unsigned(frame))),
        lambda data, info: _signed(decode(data), info),
        lambda info: info.bits_allocated in bits,
    )


def _peers() -> list[Entry]:
    import imagecodecs

    return [
        _peer("JPEG-XL e7", lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=7, numthreads=1),
              lambda d: imagecodecs.jpegxl_decode(d, numthreads=1)),
        _peer("JPEG-XL e3", lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=3, numthreads=1),
              lambda d: imagecodecs.jpegxl_decode(d, numthreads=1)),
        _peer("JPEG-LS (CharLS)", imagecodecs.jpegls_encode, imagecodecs.jpegls_decode),
        _peer("HTJ2K (OpenJPH)", lambda a: imagecodecs.htj2k_encode(a, reversible=True), imagecodecs.htj2k_decode),
        _peer("JPEG 2000 (OpenJPEG)", lambda a: imagecodecs.jpeg2k_encode(a, reversible=True, numthreads=1),
              lambda d: imagecodecs.jpeg2k_decode(d, numthreads=1)),
    ]


def main() -> None:
    args = arguments(__doc__.splitlines()[0], lambda parser: parser.add_argument(
        "--enlarge", choices=ENLARGEMENTS, help="the corpus's grey images enlarged about twice (see the help above)"))
    items = load_images(args.images, args.unseen) if args.images else load_corpus(folders=args.folders)
    if args.enlarge:
        items = _enlarged(items, args.enlarge)
    threads = private.STRIPE_THREADS
    entries = [_ours(items, "gwl v2 (ours)", 2, 1), _ours(items, "gwl v2 without subbands", 2, 1, subbands=False),
               _ours(items, "gwl v2 without model 3", 2, 1, indexed=(None,)),
               _ours(items, "gwl v2 model 6", 2, 1, model=6), _ours(items, "gwl v2 model 5", 2, 1, model=5),
               _ours(items, "gwl v2 model 4", 2, 1, model=4),
               _ours(items, "gwl v2 model 2", 2, 1, model=2),
               _ours(items, "gwl v2 model 1", 2, 1, model=1, indexed=(None,)), _ours(items, "gwl v1 (ours)", 1, 1)]
    if threads > 1:
        entries.append(_ours(items, f"gwl v2, {threads} threads", 2, threads))
    entries += _peers()
    if args.only:
        entries = [e for e in entries if any(word.lower() in e.name.lower() for word in args.only)]
    run(entries, items, title="GatewayLossless V2 and V1 vs standard lossless codecs (one thread)",
        verify=not args.noverify, repeat=args.repeat)


if __name__ == "__main__":
    main()
