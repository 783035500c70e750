"""Throughput of bulk ``compress``: local worker processes and Dask against a single-process loop.

Three inputs: the shared corpus, a generated set of ``--size-gb`` gigabytes
(CT- and MR-like 16-bit 512x512 images: smooth anatomy, noise, air around the
body and padding outside the field of view; one file in ten a multi-frame MR
of 8 frames), made in a temporary folder at run time and deleted at the end,
and a set of tiny images (16x16) on which the time per file is mostly
overhead.  Each is compressed, verified, to JPEG-LS and to our private syntax by:

* ``loop``: one process calling the per-file task in a plain loop (no manifest);
* ``in process``: the bulk driver in this process (``--workers 0``): the loop plus the manifest;
* ``pool 1w`` / ``pool 2w``: the driver on a pool of 1 or 2 local worker processes, what plain
  ``compress IN OUT`` does (the pool's start, a second or so, is inside the time);
* ``dask 1w`` / ``dask 2w``: the driver on a Dask ``LocalCluster`` of 1 or 2 worker processes
  (1 thread each), started and warmed up once before timing (its start is reported apart).

Rounds are interleaved (every engine once per round, in turn), and the best
round is kept, so that a noisy machine's load falls on all alike.  Output
folders are deleted after every run.  ``MB/s`` counts input file bytes;
``efficiency`` is the speed of 2 workers over twice the speed of 1 worker of
the same engine; the overhead per file is (engine time - ``loop`` time) / files
on the tiny set::

    python benchmarks/bench_bulk.py                        # corpus, 2 GB generated, tiny
    python benchmarks/bench_bulk.py --size-gb 0.2 --rounds 1 --engines "loop,pool 2w,dask 2w"
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.bulk import BulkOptions, run  # noqa: E402
from gateway.bulk.plan import walk  # noqa: E402
from gateway.bulk.preload import SYNTAXES_ENV  # noqa: E402
from gateway.bulk.task import compress_file  # noqa: E402

CODECS = {"JPEG-LS": "1.2.840.10008.1.2.4.80", "gwl": "2.25.98736700971092333592611877631001549337"}


def corpus_dir() -> Path | None:
    env = os.environ.get("GATEWAY_CORPUS")
    path = Path(env) if env else REPO.parent / "shared" / "corpus"
    return path if (path / "MANIFEST.csv").is_file() else None


def _body(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of one slice: inside the field of view, inside the body; and a smooth anatomy field."""
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    cx, cy = rng.normal(0, 0.02, 2)
    a, b = 0.40 + rng.normal(0, 0.01), 0.30 + rng.normal(0, 0.01)
    body = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1
    fov = x**2 + y**2 < 0.49**2
    phase = rng.uniform(0, 6.3)
    anatomy = np.sin(9 * x + phase) * np.cos(7 * y) + 0.5 * np.sin(23 * (x + y) + phase)
    return fov, body, anatomy


def _ct(size: int, rng: np.random.Generator) -> np.ndarray:
    """Signed CT values (HU + 1024 stored): air -1000, soft tissue, lungs, a bone ring; padding -2048."""
    fov, body, anatomy = _body(size, rng)
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    hu = np.where(body, 40 + 30 * anatomy, -1000.0)
    lungs = body & ((np.abs(x) - 0.15) ** 2 / 0.1**2 + y**2 / 0.16**2 < 1)
    hu = np.where(lungs, -820 + 60 * anatomy, hu)
    ring = body & ~(((x / 0.36) ** 2 + (y / 0.26) ** 2) < 1)
    hu = np.where(ring, 700 + 200 * anatomy, hu)
    hu = hu + rng.normal(0, np.where(body, 12.0, 4.0))
    stored = np.where(fov, hu + 1024, -2048 + 1024)
    return np.clip(np.rint(stored), -32768, 32767).astype(np.int16)


def _mr(size: int, rng: np.random.Generator, frames: int = 1) -> np.ndarray:
    """Unsigned 12-bit MR magnitudes: smooth tissue contrast, Rayleigh-like background noise."""
    out = np.empty((frames, size, size), np.uint16)
    for frame in range(frames):
        _, body, anatomy = _body(size, rng)
        signal = np.where(body, 900 + 400 * anatomy, 0.0)
        noisy = np.hypot(signal + rng.normal(0, 15, signal.shape), rng.normal(0, 15, signal.shape))
        out[frame] = np.clip(np.rint(noisy), 0, 4095).astype(np.uint16)
    return out if frames > 1 else out[0]


def generate(folder: Path, megabytes: float, size: int, seed: int = 0, count: int | None = None) -> Path:
    """CT and MR images of `size` x `size` until `megabytes` of files (or `count` files) are written.

    Series of 100 files; every tenth file an 8-frame MR.
    """
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    templates = {name: dcmread(get_testdata_file(f"{name}_small.dcm")) for name in ("CT", "MR")}
    for ds in templates.values():
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "WindowCenter", "WindowWidth"):
            if keyword in ds:
                del ds[keyword]
        ds.Rows = ds.Columns = size
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_original_encoding(False, True, ds.original_character_set)
    ct, mr = templates["CT"], templates["MR"]
    ct.BitsAllocated, ct.BitsStored, ct.HighBit, ct.PixelRepresentation = 16, 16, 15, 1
    ct.RescaleIntercept, ct.RescaleSlope = -1024, 1
    mr.BitsAllocated, mr.BitsStored, mr.HighBit, mr.PixelRepresentation = 16, 12, 11, 0
    written, index, limit = 0, 0, megabytes * 1e6
    series = {"CT": generate_uid(), "MR": generate_uid()}
    while (written < limit) if count is None else (index < count):
        if index % 100 == 0:
            series = {"CT": generate_uid(), "MR": generate_uid()}
        kind = "MR" if index % 10 == 9 or index % 3 == 2 else "CT"
        ds = templates[kind]
        frames = 8 if index % 10 == 9 else 1
        pixels = _ct(size, rng) if kind == "CT" else _mr(size, rng, frames)
        ds.NumberOfFrames = frames
        ds.PixelData = pixels.tobytes()
        ds.SeriesInstanceUID = series[kind]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        path = folder / f"s{index // 100:04d}" / f"{index:06d}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        written += path.stat().st_size
        index += 1
    return folder


def loop(source: Path, output: Path, target: str) -> None:
    """The baseline: one process, a plain loop over the files, no manifest."""
    for item in walk(source):
        result = compress_file(str(source), str(output), item.rel, target)
        if result["outcome"] == "failed":
            raise SystemExit(f"{item.rel}: {result['reason']}")


def bulk(source: Path, output: Path, target: str, scheduler: str | None, workers: int | None) -> None:
    report = run(BulkOptions(source=source, output=output, target=target, scheduler=scheduler, workers=workers),
                 progress=False, note=lambda text: None)
    if report.counts["failed"]:
        raise SystemExit(f"{report.counts['failed']} file(s) failed: {report.failures[:3]}")


ENGINES = ("loop", "in process", "pool 1w", "pool 2w", "dask 1w", "dask 2w")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0, help="size of the generated set (2)")
    parser.add_argument("--tiny", type=int, default=400, help="tiny files for the per-file overhead (400)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--codecs", default="JPEG-LS,gwl")
    parser.add_argument("--sets", default="corpus,generated,tiny")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {ENGINES}")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate and write (a temp folder)")
    args = parser.parse_args()
    chosen = [name for name in ENGINES if name in args.engines.split(",") or name == "loop"]
    unknown = set(args.engines.split(",")) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engine(s) {sorted(unknown)}; choose from {ENGINES}")
    codecs = args.codecs.split(",")
    os.environ.setdefault(SYNTAXES_ENV, ",".join(CODECS[codec] for codec in codecs))  # the pool's fork server

    work = Path(tempfile.mkdtemp(prefix="bench-bulk-", dir=args.workdir))
    clusters: dict[int, object] = {}
    try:
        sets: dict[str, Path] = {}
        wanted = args.sets.split(",")
        if "corpus" in wanted and corpus_dir() is not None:
            sets["corpus"] = corpus_dir()
        if "generated" in wanted:
            started = time.perf_counter()
            sets[f"generated {args.size_gb:g} GB"] = generate(work / "gen", args.size_gb * 1000, 512)
            print(f"generated {args.size_gb:g} GB in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if "tiny" in wanted:
            sets["tiny 16x16"] = generate(work / "tiny", 0, 16, seed=1, count=args.tiny)
        warm = generate(work / "warm", 2, 128, seed=2)

        starts: list[str] = []
        for workers in (1, 2):
            if f"dask {workers}w" in chosen:
                from dask.distributed import LocalCluster

                started = time.perf_counter()
                clusters[workers] = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                 host="127.0.0.1", dashboard_address=None)
                starts.append(f"LocalCluster of {workers} worker(s) up in {time.perf_counter() - started:.1f} s")
                print(starts[-1], file=sys.stderr)
        runners = {
            "loop": lambda s, o, t: loop(s, o, t),
            "in process": lambda s, o, t: bulk(s, o, t, None, 0),
            "pool 1w": lambda s, o, t: bulk(s, o, t, None, 1),
            "pool 2w": lambda s, o, t: bulk(s, o, t, None, 2),
            "dask 1w": lambda s, o, t: bulk(s, o, t, clusters[1].scheduler_address, None),  # type: ignore[attr-defined]
            "dask 2w": lambda s, o, t: bulk(s, o, t, clusters[2].scheduler_address, None),  # type: ignore[attr-defined]
        }
        engines = {name: runners[name] for name in chosen}
        warm_files = len(list(walk(warm)))
        for codec in codecs:  # warm-up: kernels loaded in the Dask workers and in the pool's fork server
            for name, engine in engines.items():
                started = time.perf_counter()
                engine(warm, work / "out-warm", CODECS[codec])
                starts.append(f"first run of {name} ({codec}, {warm_files} files of 128x128, kernels loaded on "
                              f"the way): {time.perf_counter() - started:.1f} s")
                print(starts[-1], file=sys.stderr)
                shutil.rmtree(work / "out-warm")

        best: dict[tuple[str, str, str], float] = {}
        for round_ in range(args.rounds):
            for set_name, source in sets.items():
                for codec in codecs:
                    for name, engine in engines.items():
                        out = work / "out"
                        started = time.perf_counter()
                        engine(source, out, CODECS[codec])
                        seconds = time.perf_counter() - started
                        shutil.rmtree(out)
                        key = (set_name, codec, name)
                        best[key] = min(best.get(key, float("inf")), seconds)
                        print(f"round {round_ + 1} {set_name} {codec} {name}: {seconds:.2f} s", file=sys.stderr)
        for cluster in clusters.values():
            cluster.close()  # type: ignore[attr-defined]
        clusters.clear()

        print(f"\nbulk compress, verified, best of {args.rounds} interleaved round(s); "
              f"{os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f}\n")
        print("| set | files | MB | codec | engine | s | files/s | MB/s | vs loop | efficiency 2w |")
        print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|")
        overheads = []
        for set_name, source in sets.items():
            files = list(walk(source))
            count, megabytes = len(files), sum(item.size for item in files) / 1e6
            for codec in codecs:
                base = best[(set_name, codec, "loop")]
                for name in engines:
                    seconds = best[(set_name, codec, name)]
                    efficiency = ""
                    one = best.get((set_name, codec, name.replace("2w", "1w")))
                    if name.endswith("2w") and one is not None:
                        efficiency = f"{one / (2 * seconds):.0%}"
                    print(f"| {set_name} | {count} | {megabytes:.0f} | {codec} | {name} | {seconds:.2f} | "
                          f"{count / seconds:.1f} | {megabytes / seconds:.1f} | {base / seconds:.2f} | {efficiency} |")
                if set_name.startswith("tiny"):
                    overheads.append((codec, {name: (best[(set_name, codec, name)] - base) / count * 1e3
                                              for name in engines if name.endswith("1w") or name == "in process"}))
        for codec, per_file in overheads:
            print(f"\noverhead per file over the loop ({codec}, tiny files): "
                  + ", ".join(f"{name} {ms:.1f} ms" for name, ms in per_file.items()))
        print("\nstarting, once per run (not in the table):\n")
        for line in starts:
            print(f"- {line}")
    finally:
        for cluster in clusters.values():
            cluster.close()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
