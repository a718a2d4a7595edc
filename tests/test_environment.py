"""environment: installed versions from the dist-info folders on sys.path agree with importlib.metadata."""

from __future__ import annotations

import importlib.metadata

import pytest

from streamparity import environment


@pytest.mark.parametrize("dist", ["numpy", "onnxruntime", "pytest", "pytest-benchmark", "pytest_benchmark",
                                  "jsonschema", "streamparity", "no-such-distribution-here"])
def test_installed_version_agrees_with_importlib_metadata(dist: str) -> None:
    try:
        expected: str | None = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        expected = None
    assert environment.installed_version(dist) == expected


def test_the_first_folder_on_the_path_wins(tmp_path, monkeypatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "Some_Dist-1.2.dist-info").mkdir(parents=True)
    (second / "some.dist-3.0.dist-info").mkdir(parents=True)
    (second / "other-0.1-py3.11.egg-info").mkdir()
    monkeypatch.setattr("sys.path", [str(first), str(tmp_path / "missing"), str(second)])
    environment._installed.cache_clear()
    try:
        assert environment.installed_version("some-dist") == "1.2"
        assert environment.installed_version("other") == "0.1"
    finally:
        environment._installed.cache_clear()
