"""Plots of the console, drawn by matplotlib into SVG on the server.

matplotlib's SVG backend writes a self-contained image (text as paths, no
script, nothing fetched by the browser), which suits a hospital network
without internet access.  Figures are built with the object interface
(:class:`matplotlib.figure.Figure`, no pyplot state), one at a time.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["throughput_svg"]

_lock = threading.Lock()  # matplotlib's font cache and text layout are not meant for concurrent use


def throughput_svg(buckets: Sequence[dict[str, Any]], bucket_seconds: float) -> str:
    """Instances and megabytes per minute received and delivered, one point per bucket, as SVG text."""
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    minutes = bucket_seconds / 60.0
    times = [datetime.fromtimestamp(b["start"], UTC) for b in buckets]

    def per_minute(key: str, scale: float = 1.0) -> list[float]:
        return [b[key] / minutes / scale for b in buckets]

    with _lock:
        figure = Figure(figsize=(10, 4.6), layout="constrained")
        count_axes, size_axes = figure.subplots(2, 1, sharex=True)
        count_axes.plot(times, per_minute("received"), label="received", color="#1f5fa8")
        count_axes.plot(times, per_minute("delivered"), label="delivered", color="#c0661a", linestyle="--")
        count_axes.set_ylabel("instances / min")
        size_axes.plot(times, per_minute("received_bytes", 1e6), label="received", color="#1f5fa8")
        size_axes.plot(times, per_minute("delivered_bytes", 1e6), label="delivered", color="#c0661a",
                       linestyle="--")
        size_axes.set_ylabel("MB / min")
        size_axes.set_xlabel(f"UTC, averages over {minutes:g} min")
        size_axes.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=UTC))
        for axes in (count_axes, size_axes):
            axes.set_ylim(bottom=0)
            axes.grid(True, alpha=0.3)
            axes.legend(loc="upper left", fontsize="small")
        out = io.StringIO()
        figure.savefig(out, format="svg")
    return out.getvalue()
