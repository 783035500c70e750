"""Byte-level mutations of valid codestreams, shared by the decoders' fuzz tests."""

from __future__ import annotations

from hypothesis import strategies as st

# Up to eight edits: (position, byte value, kind) with kind s = set, i = insert, d = delete.
EDITS = st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("sid")), min_size=1, max_size=8
)


def apply_edits(stream: bytes, edits: list[tuple[int, int, str]]) -> bytes:
    """`stream` with each edit applied in turn (positions wrap around its length)."""
    data = bytearray(stream)
    for where, value, kind in edits:
        where %= max(1, len(data))
        if kind == "s":
            data[where] = value
        elif kind == "i":
            data[where:where] = bytes([value])
        elif len(data) > 1:
            del data[where]
    return bytes(data)
