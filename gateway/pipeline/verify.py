"""Value-for-value comparison of pixel data, whatever the transfer syntaxes.

The gateway's one promise is that no pixel is lost or altered.  These
functions decide that: two images are equal when they have the same number
of frames and every frame has the same shape, dtype and values in the codec
array form (:mod:`gateway.codecs.base`).  A difference is reported as a
sentence naming the first frame and position that differ, for logs and the
``verify`` command.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import zip_longest

import numpy as np
from pydicom import Dataset

from gateway.errors import GatewayError
from gateway.pipeline.pixels import iter_frames

__all__ = ["first_difference", "frame_difference", "frames_equal", "compare_pixels"]


def _position(index: tuple[int, ...]) -> str:
    names = ("row", "column", "sample")
    return ", ".join(f"{name} {value}" for name, value in zip(names, index))


def frame_difference(number: int, expected: np.ndarray, actual: np.ndarray) -> str | None:
    """None when frame `number` (from 1) equals `expected` in shape, dtype and values, else where not."""
    if expected.shape != actual.shape:
        return f"frame {number}: shape {actual.shape} differs from {expected.shape}"
    if expected.dtype != actual.dtype:
        return f"frame {number}: dtype {actual.dtype} differs from {expected.dtype}"
    if np.array_equal(expected, actual):
        return None
    where = np.argwhere(expected != actual)
    index = tuple(int(i) for i in where[0])
    return (
        f"frame {number}: {len(where)} value(s) differ, first at {_position(index)}: "
        f"{expected[index]} != {actual[index]}"
    )


def first_difference(expected: Iterable[np.ndarray], actual: Iterable[np.ndarray]) -> str | None:
    """None when both sequences hold equal frames, else where they first differ.

    Frames are numbered from 1, as Number of Frames counts them.
    """
    count = 0
    for count, (a, b) in enumerate(zip_longest(expected, actual), start=1):
        if a is None or b is None:
            return f"frame count differs: one image ends after {count - 1} frame(s)"
        reason = frame_difference(count, np.asarray(a), np.asarray(b))
        if reason:
            return reason
    if count == 0:
        return "no frames to compare"
    return None


def frames_equal(expected: Iterable[np.ndarray], actual: Iterable[np.ndarray]) -> bool:
    """True when both sequences hold the same frames (shape, dtype and values)."""
    return first_difference(expected, actual) is None


def compare_pixels(a: Dataset, b: Dataset) -> str | None:
    """None when the pixel data of `a` and `b` are equal value for value, else why not.

    Either dataset may use any transfer syntax the gateway decodes.  A
    dataset whose pixels cannot be decoded is reported, not raised.
    """
    if not isinstance(a, Dataset) or not isinstance(b, Dataset):
        raise TypeError("compare_pixels expects two pydicom Datasets")
    try:
        frames_a = list(iter_frames(a))
    except GatewayError as exc:
        return f"first image cannot be decoded: {exc}"
    try:
        frames_b = iter_frames(b)
        return first_difference(frames_a, frames_b)
    except GatewayError as exc:
        return f"second image cannot be decoded: {exc}"
