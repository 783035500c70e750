"""Compiling the codec kernels ahead of the first image, and saying so.

The codecs' numba kernels are compiled the first time they meet a new kind of
argument and cached on disk (``cache=True``: beside the package's modules, or
in the user's cache folder when those are read-only, or in
``$NUMBA_CACHE_DIR``).  Only the first run after an install pays the
compilation; later processes load the machine code from the cache.

Two tools here:

* :func:`warm_up` runs every codec a configuration may use over small
  synthetic frames of the common image kinds (8- and 16-bit grey, signed
  16-bit, 8-bit RGB), encoding and decoding each, so that the service
  compiles before it listens instead of while a modality waits;
* :class:`CompileWatch` notices numba compiling (through numba's event API)
  and tells a callback once, so that a command line tool can say why it is
  slow the first time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.config import KEEP, Config

__all__ = ["IMAGE_KINDS", "WarmUp", "CompileWatch", "warm_up", "codecs_for", "configured_syntaxes"]

# (samples, bits allocated, bits stored, pixel representation, photometric)
IMAGE_KINDS: tuple[tuple[int, int, int, int, str], ...] = (
    (1, 8, 8, 0, "MONOCHROME2"),
    (1, 16, 12, 0, "MONOCHROME2"),
    (1, 16, 16, 1, "MONOCHROME2"),
    (3, 8, 8, 0, "RGB"),
)
"""Image kinds compiled ahead: what CT, MR, CR/DX and US mostly send.

Rarer kinds (32-bit, signed 8-bit...) are compiled when first met.
"""


@dataclass
class WarmUp:
    """What :func:`warm_up` did."""

    codecs: list[str] = field(default_factory=list)  # codec names, in order
    seconds: float = 0.0  # wall time of the whole warm-up
    compiled: int = 0  # kernel specialisations numba compiled (0: all came from the cache)
    compile_seconds: float = 0.0


class CompileWatch:
    """Context manager: counts numba compilations and announces the first one.

    `announce` is called once, from the thread that starts compiling, before
    the compilation runs.  Nested compilations (a kernel compiling the
    kernels it calls) count once, by the outermost one.
    """

    def __init__(self, announce: Callable[[], None] | None = None) -> None:
        self.announce = announce
        self.compiled = 0
        self.seconds = 0.0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._listener = None
        self._announced = False

    def __enter__(self) -> CompileWatch:
        from numba.core import event

        watch = self

        class _Listener(event.Listener):
            def on_start(self, ev: event.Event) -> None:
                depth = getattr(watch._local, "depth", 0)
                watch._local.depth = depth + 1
                if depth == 0:
                    watch._local.started = time.perf_counter()
                    with watch._lock:
                        first = not watch._announced
                        watch._announced = True
                    if first and watch.announce is not None:
                        watch.announce()

            def on_end(self, ev: event.Event) -> None:
                depth = getattr(watch._local, "depth", 1) - 1
                watch._local.depth = depth
                if depth == 0:
                    with watch._lock:
                        watch.compiled += 1
                        watch.seconds += time.perf_counter() - watch._local.started

        self._listener = _Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc: object) -> None:
        from numba.core import event

        if self._listener is not None:
            event.unregister("numba:compile", self._listener)
            self._listener = None


def configured_syntaxes(config: Config, *, forwarding: bool = True) -> list[str]:
    """Every transfer syntax `config` may encode to, in order, without duplicates.

    The default target, the per-modality ones and, with `forwarding`, the
    ladders of the DICOM destinations (a destination that refuses the stored
    syntax gets the instance re-encoded into one of those).
    """
    syntaxes = [config.compression.transfer_syntax, *config.compression.modality.values()]
    if forwarding:
        for dest in config.destinations:
            syntaxes += list(dest.transfer_syntaxes)
    return [s for i, s in enumerate(syntaxes) if s != KEEP and s not in syntaxes[:i]]


def codecs_for(syntaxes: Iterable[str]) -> list:
    """The registered codecs of `syntaxes` (UIDs, keywords or names); others are skipped.

    Native syntaxes and ``keep`` have no codec: nothing to compile for them.
    """
    from gateway.codecs import get_codec
    from gateway.errors import CodecNotFoundError

    found, seen = [], set()
    for syntax in syntaxes:
        try:
            codec = get_codec(syntax)
        except CodecNotFoundError:
            continue
        if codec.uid not in seen:
            seen.add(codec.uid)
            found.append(codec)
    return found


def _sample_frame(info, rng: np.random.Generator) -> np.ndarray:
    """A small frame with smooth areas and noise, so every coding path runs."""
    low, high = info.value_range
    base = np.linspace(low, high, info.rows * info.columns, dtype=np.float64).reshape(info.rows, info.columns)
    noise = rng.integers(low, high, size=(info.rows, info.columns), endpoint=True)
    frame = np.where((np.arange(info.columns) % 7) < 3, base, noise).astype(info.dtype)
    if info.samples_per_pixel > 1:
        frame = np.stack([frame, frame[::-1], frame[:, ::-1]], axis=-1).astype(info.dtype)
    return np.ascontiguousarray(frame)


def warm_up(syntaxes: Iterable[str], *, log: Callable[[str], None] | None = None,
            encode_options: Mapping[str, Mapping[str, Any]] | None = None) -> WarmUp:
    """Compile (or load from the cache) the kernels of the codecs of `syntaxes`.

    Each codec encodes and decodes a 16x16 frame of every kind of
    :data:`IMAGE_KINDS` it supports (encoding the same frame of every kind
    twice: one and two frames, for codecs that code frames together), with
    the `encode_options` of its syntax (UID -> options, as the pipeline
    takes them: our private syntax's version 2 runs kernels version 1 does
    not).  A round trip that does not give the frame back raises
    ``AssertionError``: a codec broken at start-up must not take images.
    `log`, if given, is told which codec is being prepared.
    """
    from gateway.codecs import FrameInfo, configured

    report = WarmUp()
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    with CompileWatch() as watch:
        for codec in codecs_for(syntaxes):
            codec = configured(codec, (encode_options or {}).get(codec.uid))
            report.codecs.append(codec.name)
            if log is not None:
                log(codec.name)
            for samples, allocated, stored, representation, photometric in IMAGE_KINDS:
                info = FrameInfo(16, 16, samples, allocated, stored, representation, photometric)
                if codec.supports(info):
                    continue
                frame = _sample_frame(info, rng)
                encode_frames = getattr(codec, "encode_frames", None)
                streams = encode_frames([frame, frame], info) if encode_frames else [codec.encode_frame(frame, info)]
                decode_frames = getattr(codec, "decode_frames", None)
                decoded = decode_frames(streams, info) if decode_frames else [codec.decode_frame(s, info)
                                                                              for s in streams]
                for back in decoded:
                    if not np.array_equal(back, frame):
                        raise AssertionError(f"{codec.name}: warm-up round trip of {info} is not lossless")
    report.seconds = time.perf_counter() - start
    report.compiled, report.compile_seconds = watch.compiled, watch.seconds
    return report
