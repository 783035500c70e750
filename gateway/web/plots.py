"""Plots of the console, drawn by pygal into SVG on the server.

pygal writes a self-contained SVG (its styles inline, nothing fetched by the
browser); its tooltip script, which it would load from the internet, is left
out (``js=[]``), which suits a hospital network without internet access.  The
small inline configuration script pygal still writes never runs: the pages
show the plots as images, and the console's responses forbid scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["throughput_svg", "PLOTS"]

PLOTS = {
    "instances": ("instances / min", "received", "delivered", 1.0),
    "bytes": ("MB / min", "received_bytes", "delivered_bytes", 1e6),
}
"""Plot name -> (y axis title, received key, delivered key, scale) over the record's throughput buckets."""


def throughput_svg(what: str, buckets: Sequence[dict[str, Any]], bucket_seconds: float) -> str:
    """Per minute received and delivered (``what``: a key of :data:`PLOTS`), one point per bucket, as SVG."""
    import pygal
    from pygal.style import Style

    title, received, delivered, scale = PLOTS[what]
    minutes = bucket_seconds / 60.0
    style = Style(colors=("#1f5fa8", "#c0661a"), background="#ffffff", plot_background="#ffffff",
                  font_family="sans-serif", label_font_size=12, major_label_font_size=12, legend_font_size=13,
                  title_font_size=14)
    chart = pygal.DateTimeLine(
        js=[], style=style, width=1000, height=300, show_dots=False, include_x_axis=True, truncate_label=-1,
        x_value_formatter=lambda when: when.strftime("%H:%M"), x_title=f"UTC, averages over {minutes:g} min",
        y_title=title, legend_at_bottom=True)
    times = [datetime.fromtimestamp(b["start"], UTC) for b in buckets]
    chart.x_labels = times[::max(1, len(times) // 8)]  # about eight time marks
    chart.add("received", [(t, b[received] / minutes / scale) for t, b in zip(times, buckets)],
              stroke_style={"width": 2})
    chart.add("delivered", [(t, b[delivered] / minutes / scale) for t, b in zip(times, buckets)],
              stroke_style={"width": 2, "dasharray": "6, 4"})
    return chart.render(is_unicode=True)
