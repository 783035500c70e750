"""Our JPEG 2000 lossless codec beside OpenJPEG, and beside JPEG-LS (ours and CharLS).

Same corpus images for every entry, every round trip verified, each entry
timed in several interleaved rounds (entry A, B, C, then A, B, C again...)
and the best time of each image kept, so that load from other processes
hits every entry alike.  Rows:

* ours jpeg2000, one thread;
* OpenJPEG through imagecodecs (``jpeg2k_encode(level=0, reversible=True,
  numthreads=1)``, J2K codestream, the same number of decomposition levels
  as ours, its default 64 x 64 code-blocks), decoded with ``numthreads=1``;
* ours jpeg-ls and CharLS (pyjpegls), for the ratio and speed of the other
  lossless family;
* on frames larger than 1 MB only: ours and OpenJPEG with two threads;
* where our one-thread time goes: each stage of our encoder and decoder
  (wavelet, tier 1, tier 2, code-block geometry, the rest in Python) timed
  on every frame, best of the rounds.

Images whose values use bits above Bits Stored are left out for every
entry (the gateway passes them through).

Run: ``python -m benchmarks.bench_jpeg2000 [--rounds 3] [--folders ...] [--only ...]``
(tables: ``single``, ``two-threads``, ``stages``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from benchmarks.bench_standard import _from_pattern, _pattern, jpegls_entries
from benchmarks.harness import Entry, Item, _Tally, format_table, load_corpus, measure
from gateway.codecs.base import FrameInfo
from gateway.codecs.jpeg2000 import codec as j2k
from gateway.codecs.jpeg2000 import codestream, dwt, tier2
from gateway.pipeline.pixels import high_bits_used

LARGE = 1 << 20


def _supports(info: FrameInfo) -> bool:
    return j2k.supports(info) is None


def ours(threads: int) -> Entry:
    parallel = threads > 1
    return Entry(
        f"ours jpeg2000 ({threads} thread{'s' if parallel else ''})",
        lambda frame, info: j2k.encode(frame, info, parallel=parallel),
        lambda data, info: j2k.decode(data, info, parallel=parallel),
        _supports,
    )


def openjpeg(threads: int) -> Entry:
    import imagecodecs

    def encode(frame: np.ndarray, info: FrameInfo) -> bytes:
        data = _pattern(frame, info) if info.bits_stored < info.bits_allocated else frame
        if info.signed:
            data = frame  # OpenJPEG codes signed samples itself
        levels = j2k.levels_for(info.rows, info.columns)
        return imagecodecs.jpeg2k_encode(
            data.reshape(info.rows, info.columns, -1) if info.samples_per_pixel == 3 else data,
            level=0, reversible=True, codecformat="J2K", bitspersample=info.bits_stored,
            resolutions=levels + 1, numthreads=threads, mct=info.samples_per_pixel == 3,
        )

    def decode(data: bytes, info: FrameInfo) -> np.ndarray:
        decoded = np.asarray(imagecodecs.jpeg2k_decode(data, numthreads=threads))
        if info.signed:
            return decoded.reshape(info.shape).astype(info.dtype)
        return _from_pattern(decoded, info)

    return Entry(f"OpenJPEG (imagecodecs, {threads} thread{'s' if threads > 1 else ''})", encode, decode, _supports)


def _best(rounds: list[dict[str, _Tally]]) -> dict[str, _Tally]:
    """Per folder: sizes of the first round (all equal), the smallest time of any round."""
    best = {}
    for folder, first in rounds[0].items():
        tally = _Tally(first.raw, first.compressed, first.enc_s, first.dec_s, first.images, first.skipped,
                       list(first.errors))
        for other in rounds[1:]:
            t = other[folder]
            if t.images == tally.images:
                tally.enc_s = min(tally.enc_s, t.enc_s)
                tally.dec_s = min(tally.dec_s, t.dec_s)
        best[folder] = tally
    return best


def interleaved(entries: Sequence[Entry], items: Sequence[Item], rounds: int, verify: bool) -> dict[str, dict]:
    """Measure every entry `rounds` times, alternating entries; best time per folder."""
    collected: dict[str, list[dict[str, _Tally]]] = {e.name: [] for e in entries}
    for number in range(rounds):
        for entry in entries:
            start = time.perf_counter()
            collected[entry.name].append(measure(entry, items, verify=verify))
            print(f"  round {number + 1}: {entry.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return {name: _best(results) for name, results in collected.items()}


TIER1 = "tier 1 (code-blocks)"  # timed through the codec's BlockCoder

# Stages of our codec: (module, function, stage name).  Each is looked up
# through its module at call time by the codec, so wrapping it there times it;
# names a version of the modules lacks are skipped.
STAGES = (
    (dwt, "forward", "wavelet"), (dwt, "inverse", "wavelet"),
    (tier2, "write_packets", "tier 2 (packets)"), (tier2, "read_packets", "tier 2 (packets)"),
    (tier2, "gather_blocks", "tier 2 (packets)"), (tier2, "packet_order", "tier 2 (packets)"),
    (tier2, "tile_component", "code-block geometry"), (tier2, "tile_layout", "code-block geometry"),
    (codestream, "write_codestream", "marker segments"), (codestream, "parse", "marker segments"),
)


@contextmanager
def _timed_stages(spent: Counter) -> Iterator[None]:
    """Wrap the stage functions so that each call adds its wall time to ``spent[stage]``."""
    present = [(module, name, stage) for module, name, stage in STAGES if hasattr(module, name)]
    originals = [(module, name, getattr(module, name)) for module, name, _ in present]

    def timed(function: Callable, stage: str) -> Callable:
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[stage] += time.perf_counter() - start
        return call

    for (module, name, stage), (_, _, function) in zip(present, originals):
        setattr(module, name, timed(function, stage))
    # The frame driver reaches the block coder through its BlockCoder, which holds the kernels themselves.
    coder = j2k.PART1
    j2k.PART1 = dataclasses.replace(coder, encode_blocks=timed(coder.encode_blocks, TIER1),
                                    decode_blocks=timed(coder.decode_blocks, TIER1))
    try:
        yield
    finally:
        j2k.PART1 = coder
        for module, name, function in originals:
            setattr(module, name, function)


def stages(items: Sequence[Item], rounds: int) -> str:
    """Where one-thread encoding and decoding spend their time, per stage (best round), beside OpenJPEG's totals."""
    frames = [(f, it.info) for it in items for f in it.frames]
    raw = sum(f.nbytes for f, _ in frames)
    peer = openjpeg(1)
    best: dict[str, dict[str, float]] = {"encode": {}, "decode": {}}
    peer_best = {"encode": float("inf"), "decode": float("inf")}
    for _ in range(rounds):
        for direction in ("encode", "decode"):
            spent: Counter = Counter()
            total = 0.0
            coded = [j2k.encode(f, info, parallel=False) for f, info in frames] if direction == "decode" else []
            with _timed_stages(spent):
                for k, (frame, info) in enumerate(frames):
                    start = time.perf_counter()
                    if direction == "encode":
                        j2k.encode(frame, info, parallel=False)
                    else:
                        j2k.decode(coded[k], info, parallel=False)
                    total += time.perf_counter() - start
            spent["rest (Python glue, level shift, colour)"] = total - sum(spent.values())
            spent["total"] = total
            if total < best[direction].get("total", float("inf")):
                best[direction] = dict(spent)
            start = time.perf_counter()
            for frame, info in frames:
                if direction == "encode":
                    peer.encode(frame, info)
                else:
                    peer.decode(peer.encode(frame, info), info)
            elapsed = time.perf_counter() - start
            if direction == "decode":  # the peer's decode timed alone
                streams = [peer.encode(frame, info) for frame, info in frames]
                start = time.perf_counter()
                for data, (_, info) in zip(streams, frames):
                    peer.decode(data, info)
                elapsed = time.perf_counter() - start
            peer_best[direction] = min(peer_best[direction], elapsed)
    lines = [f"### Where our one-thread time goes ({len(frames)} frames, {raw / 1e6:.1f} MB)\n",
             "| stage | encode s | encode % | decode s | decode % |", "|---|---:|---:|---:|---:|"]
    names = [n for n in dict.fromkeys(stage for _, _, stage in STAGES)]
    names = names[:1] + [TIER1] + names[1:] + ["rest (Python glue, level shift, colour)"]
    enc, dec = best["encode"], best["decode"]
    for name in names + ["total"]:
        e, d = enc.get(name, 0.0), dec.get(name, 0.0)
        lines.append(f"| {name} | {e:.3f} | {100 * e / enc['total']:.0f} | {d:.3f} | {100 * d / dec['total']:.0f} |")
    lines.append(f"| OpenJPEG (imagecodecs, 1 thread), total | {peer_best['encode']:.3f} | "
                 f"{100 * peer_best['encode'] / enc['total']:.0f} | {peer_best['decode']:.3f} | "
                 f"{100 * peer_best['decode'] / dec['total']:.0f} |")
    return "\n".join(lines)


def size_line(results: dict[str, dict[str, _Tally]], ours_name: str, peer: str) -> str:
    a, b = results[ours_name]["ALL"], results[peer]["ALL"]
    return (f"{ours_name}: {a.compressed:,} bytes; {peer}: {b.compressed:,} bytes "
            f"({a.compressed / b.compressed:.4f} x) on {a.images} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="*", default=(), help="corpus folders to use (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best time kept)")
    parser.add_argument("--noverify", action="store_true", help="skip the round-trip check")
    parser.add_argument("--only", nargs="*", default=(), help="tables to run: single, two-threads, stages")
    args = parser.parse_args()
    items = load_corpus(folders=args.folders)
    kept = [it for it in items if not any(high_bits_used(f, it.info) for f in it.frames)]
    print(f"{len(kept)} images, {sum(i.raw_bytes for i in kept) / 1e6:.1f} MB of pixels "
          f"({len(items) - len(kept)} with data above Bits Stored left out), {args.rounds} interleaved rounds\n")
    if not args.only or "single" in args.only:
        entries = [ours(1), openjpeg(1), *jpegls_entries()]
        results = interleaved(entries, kept, args.rounds, not args.noverify)
        print(format_table(results, "JPEG 2000 lossless and JPEG-LS, one thread"))
        print()
        print(size_line(results, entries[0].name, entries[1].name))
        print()
    if not args.only or "two-threads" in args.only:
        large = [it for it in kept if it.info.frame_bytes > LARGE]
        entries = [ours(1), ours(2), openjpeg(1), openjpeg(2)]
        results = interleaved(entries, large, args.rounds, not args.noverify)
        print(format_table(results, f"frames larger than 1 MB ({len(large)} images): one and two threads"))
        print()
    if not args.only or "stages" in args.only:
        print(stages(kept, args.rounds))


if __name__ == "__main__":
    main()
