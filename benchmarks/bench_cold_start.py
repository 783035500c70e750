"""Cold start: the first and second ``dicom-gateway compress`` in a fresh install.

A new user installs the package and compresses one CT image.  The first run
has no compiled kernels (numba compiles them and writes its cache), the
second loads them from the cache.  This script measures both as that user
meets them:

1. creates a new virtual environment (no system site-packages) and
   ``pip install``s the checkout into it, a regular (not editable) install;
   pip's download/wheel cache is reused and the install time is printed but
   not counted;
2. for each transfer syntax asked for, removes every numba cache file of the
   installed package, then times two runs of
   ``dicom-gateway compress --transfer-syntax S CT.dcm out.dcm``, each in a
   new process (wall time of the whole command, interpreter start included);
3. prints a Markdown table.

Targets on a 2-core machine: first run under 10 s, second under 2 s.

The CT image is ``CT/ct_signed_14bit.dcm`` of the corpus (512x512, signed
14 bits) when the corpus is found (``$GATEWAY_CORPUS`` or ``../shared/corpus``),
else pydicom's bundled ``CT_small.dcm`` (128x128).  ``--source`` measures
another tree (e.g. an export of an older commit) the same way::

    python benchmarks/bench_cold_start.py
    python benchmarks/bench_cold_start.py --syntax RLELossless --syntax JPEGLSLossless --syntax gwl
    mkdir ../old && git archive HEAD~5 | tar -x -C ../old && python benchmarks/bench_cold_start.py --source ../old
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRST_TARGET, SECOND_TARGET = 10.0, 2.0


def _corpus_ct() -> Path | None:
    env = os.environ.get("GATEWAY_CORPUS")
    corpus = Path(env) if env else REPO.parent / "shared" / "corpus"
    image = corpus / "CT" / "ct_signed_14bit.dcm"
    return image if image.is_file() else None


def _pydicom_ct(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "from pydicom.data import get_testdata_file;"
                          "print(get_testdata_file('CT_small.dcm'))"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds (user + system) and the outcome of `cmd`."""
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, _children_cpu() - cpu, done


def _clear_numba_cache(site: Path) -> int:
    """Remove the numba cache files of the installed package; return how many."""
    removed = 0
    for pattern in ("*.nbi", "*.nbc"):
        for path in (site / "gateway").rglob(pattern):
            path.unlink()
            removed += 1
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO, help="tree to install (default: this checkout)")
    parser.add_argument("--syntax", action="append", help="target syntax (repeatable; default RLELossless)")
    parser.add_argument("--image", type=Path, help="DICOM image to compress (default: a corpus CT)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary venv and print its path")
    args = parser.parse_args(argv)
    syntaxes = args.syntax or ["RLELossless"]
    source = args.source.resolve()

    work = Path(tempfile.mkdtemp(prefix="cold-start-"))
    try:
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python, cli = venv / "bin" / "python", venv / "bin" / "dicom-gateway"
        install_seconds, _, done = _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                      str(source)])
        if done.returncode:
            print(done.stdout, done.stderr, file=sys.stderr)
            return 1
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
        image = args.image or _corpus_ct() or _pydicom_ct(python)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
        rows = []
        for syntax in syntaxes:
            _clear_numba_cache(site)
            times = []
            for attempt in range(2):
                out = work / f"out-{attempt}.dcm"
                seconds, cpu, done = _run([str(cli), "compress", "--transfer-syntax", syntax, str(image), str(out)],
                                          env)
                if done.returncode:
                    print(f"compress failed ({syntax}, run {attempt + 1}):\n{done.stdout}{done.stderr}",
                          file=sys.stderr)
                    return 1
                times += [seconds, cpu]
            rows.append((syntax, *times))

        print(f"# cold start of `dicom-gateway compress` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
        print(f"source `{source.name}`, image `{image.name}`, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
              f"install {install_seconds:.0f} s (not counted)\n")
        print("Wall time of the whole command; CPU = user + system seconds of the process, which other work "
              "on the machine inflates less.\n")
        print("| target syntax | first run s | CPU s | second run s | CPU s | first < 10 s | second < 2 s |")
        print("|---|---:|---:|---:|---:|:---:|:---:|")
        for syntax, first, first_cpu, second, second_cpu in rows:
            print(f"| {syntax} | {first:.1f} | {first_cpu:.1f} | {second:.2f} | {second_cpu:.2f} "
                  f"| {'yes' if first < FIRST_TARGET else 'NO'} | {'yes' if second < SECOND_TARGET else 'NO'} |")
        if args.keep:
            print(f"\nvenv kept in {venv}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
