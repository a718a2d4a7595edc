"""The report's SVG figures: well-formed, every series drawn, text escaped, odd data (one chunk, zeros, NaN) drawn
without an error."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from streamparity.reports.svg import Chart, Panel, Series

NS = "{http://www.w3.org/2000/svg}"


def _parse(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{NS}svg"
    return root


def test_panels_series_ticks_and_escaped_text() -> None:
    a = Panel("run <a> & b", "max |error|", log_y=True)
    a.add(Series([0, 1, 2, 3], [1e-6, 2e-6, 0.0, 5e-5], "points <x>", "#123456"))
    a.add(Series([], [1e-4], "atol", "#d62728", kind="hline", dash="6 3"))
    a.add(Series([0, 3], [1e-6, 4e-5], "trend", "#000", kind="line"))
    b = Panel("steps", "frames", legend_at="bottom").add(Series([0, 1, 2], [2, 4, 4], "len", "#2ca02c", kind="step"))
    root = _parse(Chart([a, b]).render())
    texts = [t.text or "" for t in root.iter(f"{NS}text")]
    assert "run <a> & b" in texts and "points <x>" in texts and "chunk" in texts
    assert {"1e-6", "1e-5", "1e-4"} <= set(texts)  # decade ticks of the log panel, up to the atol line
    paths = [p.get("d", "") for p in root.iter(f"{NS}path")]
    assert sum(d.count("M") for d in paths) >= 3 + 1 + 1  # three positive points, the trend, the step
    assert float(root.get("height", "0")) > 2 * 230


def test_degenerate_data_renders() -> None:
    for ys in ([3e-7], [0.0, 0.0], [math.nan, 1e-6], []):
        p = Panel("odd", "e", log_y=any(y > 0 for y in ys if y == y))
        p.add(Series(list(range(len(ys))), ys, "e", "#1f77b4"))
        p.add(Series([0], [1e6], "nan", "#d62728", kind="marks"))
        _parse(Chart([p]).render())
