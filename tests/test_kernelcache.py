"""Cached kernels compiled from older source are dropped when any codec source changes."""

from __future__ import annotations

from pathlib import Path

from gateway.kernelcache import refresh, source_digest


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
