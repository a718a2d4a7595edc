"""Fuzzing option values: --chunks selections and backend ids either parse to exactly what they say or fail
with ONE argparse.ArgumentTypeError line of bounded length; never another exception."""

from __future__ import annotations

import argparse
import re

import pytest

pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e '.[dev]')")

from hypothesis import given
from hypothesis import strategies as st

from streamparity.backends.registry import parse_backend_spec
from streamparity.drivers.selection import MAX_CHUNK, parse_chunks
from tests.fuzzing import FUZZ, MAX_MESSAGE

_PART = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
chunk_text = st.text(alphabet="0123456789-, _+\u0663\u00b2x", max_size=30) | st.sampled_from(
    ["0-9,17", "9" * 40, "1_0", "+3", "\u0663", "2147483647", "2147483648", "5-3", " 4 - 6 ", ","])
backend_text = st.text(alphabet="ortcpuda-f1632xeİK \n", max_size=20) | st.sampled_from(
    ["ort-cpu-fp32", "ORT-CPU-FP32", "trt-fp16", "trt-cpu-fp16", "ort-cpu-fp32\n", "x" * 500, "ort-cpu-int8"])


def _expected_ranges(text: str) -> list[tuple[int, int]] | None:
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _PART.fullmatch(part)
        if not m:
            return None
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi > MAX_CHUNK:
            return None
        out.append((lo, hi))
    return out or None


def _one_line(e: argparse.ArgumentTypeError) -> None:
    assert "\n" not in str(e) and len(str(e)) <= MAX_MESSAGE, str(e)


@FUZZ
@given(text=chunk_text)
def test_chunk_selections_parse_exactly_or_fail_with_one_line(text: str) -> None:
    want = _expected_ranges(text)
    try:
        got = parse_chunks(text).ranges
    except argparse.ArgumentTypeError as e:
        _one_line(e)
        assert want is None, (text, want)
        return
    assert got == want, text


@FUZZ
@given(text=backend_text)
def test_backend_ids_parse_exactly_or_fail_with_one_line(text: str) -> None:
    try:
        spec = parse_backend_spec(text)
    except argparse.ArgumentTypeError as e:
        _one_line(e)
        return
    said = text.strip().lower()
    assert spec.id == said or (said.count("-") == 1 and spec.id == said.replace("-", f"-{spec.device}-")), text


@pytest.mark.parametrize("text", ["1_0", "+3", "\u0663", "2147483648", "9" * 5000])
def test_chunk_ids_are_plain_bounded_ascii_numbers(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse_chunks(text)
    _one_line(info.value)
