"""Cached kernels compiled from older source are dropped when any codec source changes, and
processes that compile at the same time leave a cache every process can load."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from gateway.kernelcache import guard, refresh, source_digest

REPO = Path(__file__).resolve().parent.parent


def _tree(root: Path) -> Path:
    (root / "__pycache__").mkdir(parents=True)
    (root / "sub" / "__pycache__").mkdir(parents=True)
    (root / "a.py").write_text("x = 1\n")
    (root / "sub" / "b.py").write_text("y = 2\n")
    return root


def _cached(root: Path) -> list[str]:
    for name in ("__pycache__/a.kernel-1.py311.nbi", "__pycache__/a.kernel-1.py311.1.nbc",
                 "sub/__pycache__/b.helper-3.py311.nbi"):
        (root / name).write_bytes(b"machine code")
    return sorted(p.name for p in root.rglob("*.nb?"))


def test_unchanged_sources_keep_their_cache(tmp_path: Path) -> None:
    root = _tree(tmp_path / "codecs")
    refresh(root)  # first run: records the digest
    cached = _cached(root)
    assert refresh(root) == 0
    assert sorted(p.name for p in root.rglob("*.nb?")) == cached


def test_a_change_in_any_module_drops_every_cached_kernel(tmp_path: Path) -> None:
    root = _tree(tmp_path / "codecs")
    refresh(root)
    _cached(root)
    before = source_digest(root)
    (root / "sub" / "b.py").write_text("y = 3\n")  # a helper other modules inline
    assert source_digest(root) != before
    assert refresh(root) == 3
    assert list(root.rglob("*.nb?")) == []
    (root / "sub" / "b.py").write_text("y = 2\n")
    assert refresh(root) == 0, "the digest changed again, but nothing is cached"
    assert list(root.rglob("*.nb?")) == []


# -- numba's cache shared between processes ---------------------------------------------------------

_KERNEL = '''
import numpy as np

from gateway.kernelcache import njit


@njit(cache=True)
def triple(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = x[i] * 3 + 1
    return out
'''
_DTYPES = ("int8", "int16", "int32", "int64", "uint16", "uint32", "float32", "float64")


def _kernel_module(folder: Path) -> Path:
    (folder / "shared_kernel.py").write_text(_KERNEL)
    return folder


def _python(folder: Path, code: str, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """A fresh interpreter running `code` with the repository and `folder` importable (`env` added)."""
    env = {**{k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}, **(env or {}),
           "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}  # by default the cache beside the module
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True, **popen)


def test_numba_cache_index_is_locked_in_this_process() -> None:
    import gateway.codecs._rle_kernels  # noqa: F401 - any kernel module: its njit puts the guard in place
    from numba.core.caching import IndexDataCacheFile

    assert guard() is True, "numba's cache methods changed: gateway.kernelcache.guard must follow them"
    assert IndexDataCacheFile.save.__qualname__.startswith("guard.")
    assert IndexDataCacheFile.load.__qualname__.startswith("guard.")


def test_every_kernel_module_defines_its_kernels_through_the_guard() -> None:
    numba_njit = re.compile(r"^\s*from numba import .*\bnjit\b|\bnumba\.njit\b", re.M)
    direct = [str(path.relative_to(REPO)) for path in (REPO / "gateway").rglob("*.py")
              if path.name != "kernelcache.py" and numba_njit.search(path.read_text())]
    assert direct == [], "use gateway.kernelcache.njit, which makes numba's cache safe to share first"


def test_a_process_saving_to_the_cache_waits_for_another_holding_its_index(tmp_path: Path) -> None:
    import fcntl

    folder = _kernel_module(tmp_path)
    sys.path.insert(0, str(folder))
    try:
        import shared_kernel
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("shared_kernel", None)
    index = Path(shared_kernel.triple._cache._cache_file._index_path)  # where numba keeps it; nothing compiled here
    index.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{index}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        child = _python(folder, """
            import numpy as np, shared_kernel
            print("calling", flush=True)
            assert list(shared_kernel.triple(np.arange(3))) == [1, 4, 7]
        """, stdout=subprocess.PIPE)
        with child, child.stdout:
            try:
                assert child.stdout.readline().strip() == "calling"
                time.sleep(1.5)  # compiling this takes well under a second once numba is imported
                assert child.poll() is None, "the kernel was loaded or saved while another process held the index"
                assert not index.exists()
                fcntl.flock(lock, fcntl.LOCK_UN)
                assert child.wait(timeout=120) == 0
            finally:
                child.kill()
    assert index.exists()


def test_processes_compiling_one_kernel_at_once_leave_a_cache_every_process_can_load(tmp_path: Path) -> None:
    """Each process compiles another specialisation at the same moment; then one loads them all back."""
    folder = _kernel_module(tmp_path)
    compile_one = """
        import sys, time
        from pathlib import Path
        import numpy as np, shared_kernel
        folder, dtype, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
        (folder / f"ready-{dtype}").touch()
        deadline = time.monotonic() + 120
        while len(list(folder.glob("ready-*"))) < count and time.monotonic() < deadline:
            time.sleep(0.001)
        assert list(shared_kernel.triple(np.arange(5, dtype=dtype))) == [1, 4, 7, 10, 13]
    """
    children = [_python(folder, compile_one, str(folder), dtype, str(len(_DTYPES))) for dtype in _DTYPES]
    assert [child.wait(timeout=300) for child in children] == [0] * len(_DTYPES)
    load_all = """
        import sys
        import numpy as np, shared_kernel
        for dtype in sys.argv[1:]:
            out = shared_kernel.triple(np.arange(5, dtype=dtype))
            assert out.dtype == np.dtype(dtype) and list(out) == [1, 4, 7, 10, 13], (dtype, out)
        hits = sum(shared_kernel.triple.stats.cache_hits.values())
        assert hits == len(sys.argv) - 1, f"{hits} of {len(sys.argv) - 1} specialisations came from the cache"
    """
    checker = _python(folder, load_all, *_DTYPES, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = checker.communicate(timeout=300)
    assert checker.returncode == 0, output


_CACHE_HITS = """
    import numpy as np, shared_kernel
    assert list(shared_kernel.triple(np.arange(3))) == [1, 4, 7]
    print(sum(shared_kernel.triple.stats.cache_hits.values()))
"""


def _nowhere_to_cache(tmp_path: Path) -> tuple[Path, dict]:
    """The kernel module in a folder where no `__pycache__` can be made, and a home folder that cannot exist."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    _kernel_module(folder)
    (folder / "__pycache__").write_text("not a folder")
    (tmp_path / "tmp").mkdir()
    return folder, {"HOME": "/dev/null/home", "XDG_CACHE_HOME": "/dev/null/cache", "TMPDIR": str(tmp_path / "tmp")}


def _run(folder: Path, env: dict) -> tuple[int, str]:
    child = _python(folder, _CACHE_HITS, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output, errors = child.communicate(timeout=300)
    assert child.returncode == 0, errors
    return int(output), errors


def test_kernels_are_cached_in_a_private_temporary_folder_where_numba_finds_no_other(tmp_path: Path) -> None:
    folder, env = _nowhere_to_cache(tmp_path)
    assert _run(folder, env)[0] == 0
    private = tmp_path / "tmp" / f"dicom-gateway-kernels-{os.getuid()}"
    assert private.is_dir() and private.stat().st_mode & 0o777 == 0o700
    assert list(private.rglob("*.nbi")), "nothing was cached there"
    hits, errors = _run(folder, env)
    assert hits == 1, "the second process compiled the kernel again"


def test_a_temporary_folder_others_may_write_is_not_trusted_with_machine_code(tmp_path: Path) -> None:
    folder, env = _nowhere_to_cache(tmp_path)
    shared = tmp_path / "tmp" / f"dicom-gateway-kernels-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    hits, errors = _run(folder, env)
    assert hits == 0 and "not caching kernels in" in errors and "can cache kernels nowhere" in errors
    assert list(shared.iterdir()) == []
    assert _run(folder, env)[0] == 0, "a kernel was loaded from a folder that others may write"


def test_a_cache_that_cannot_be_read_or_written_any_more_is_a_miss_not_an_error(tmp_path: Path) -> None:
    folder = _kernel_module(tmp_path)
    cache = tmp_path / "cache"
    child = _python(folder, """
        import shutil, sys
        from pathlib import Path
        import numpy as np, shared_kernel  # numba has checked that it can write the cache folder
        cache = Path(sys.argv[1])
        shutil.rmtree(cache)
        cache.write_text("a file where the folder was")
        assert list(shared_kernel.triple(np.arange(3))) == [1, 4, 7]
    """, str(cache), env={"NUMBA_CACHE_DIR": str(cache)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output, errors = child.communicate(timeout=300)
    assert child.returncode == 0, errors
    assert errors.count("kernel cache not used") == 2  # neither loaded nor saved
