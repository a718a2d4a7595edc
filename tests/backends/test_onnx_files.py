"""Models whose weights live beside the graph (external data, as NeMo exports anything over 2 GB): the content
digest that keys engines and FP16 copies covers the weight files, and FP16 copies of such models run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from streamparity.backends import onnx_models as onnx_files
from streamparity.backends.ort import OrtBackend
from streamparity.backends.tensorrt import engine_cache as ec
from streamparity.contract.loading import load_contract
from streamparity.errors import ModelMismatch
from streamparity.reference.reader import ReferenceFile
from tests.conftest import TINY_CONTRACT, TINY_ONNX, TINY_REFERENCE


@pytest.fixture(scope="module")
def external_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny encoder saved the way NeMo saves the full-size one: one file per weight."""
    d = tmp_path_factory.mktemp("external")
    model = onnx.load(str(TINY_ONNX))
    path = d / "encoder.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=1024)
    return path


def test_external_weight_files_are_found(external_tiny: Path) -> None:
    files = onnx_files.external_data_files(external_tiny)
    assert len(files) > 10 and all(f.parent == external_tiny.parent and f.is_file() for f in files)
    assert onnx_files.external_data_files(TINY_ONNX) == []
    assert onnx_files.external_data_files(Path(__file__)) == []  # not ONNX: the loader's verdict, not ours


def test_digest_changes_with_a_weight_file_and_not_otherwise(external_tiny: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(external_tiny.parent, copy)
    model = copy / "encoder.onnx"
    before = onnx_files.model_sha256(model)
    assert before == onnx_files.model_sha256(model) == ec.onnx_sha256(model)
    assert before != onnx_files.file_sha256(model)  # not the graph file alone
    weight = max(onnx_files.external_data_files(model), key=lambda f: f.stat().st_size)
    graph_digest = onnx_files.file_sha256(model)
    data = bytearray(weight.read_bytes())
    data[100] ^= 1
    weight.write_bytes(bytes(data))
    assert onnx_files.file_sha256(model) == graph_digest  # the graph file did not change ...
    after = onnx_files.model_sha256(model)
    assert after != before  # ... but the model did, and so does every engine key built from it
    material = {"builder": {}, "gpu": {}, "options": {}}
    assert ec.cache_key({**material, "onnx_sha256": after}) != ec.cache_key({**material, "onnx_sha256": before})
    weight.unlink()
    with pytest.raises(ModelMismatch, match=rf"external data file.*missing: {weight.name}") as e:
        onnx_files.model_sha256(model)
    assert str(model) in str(e.value)


@pytest.mark.parametrize("external_copy", [False, True], ids=["fp16-inline", "fp16-external-data"])
def test_fp16_copy_of_an_external_data_model_runs(external_tiny: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, external_copy: bool) -> None:
    if external_copy:  # what a 600 M-parameter model gets: its FP16 tensors in one data file beside the graph
        monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_ABOVE", 0)
    contract = load_contract(TINY_CONTRACT)
    ref = ReferenceFile(TINY_REFERENCE)
    b = OrtBackend(contract, external_tiny, precision="fp16", cache_dir=tmp_path / "cache")
    made = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(made) == (2 if external_copy else 1) and not any(n.endswith(".partial") for n in made), made
    tol = contract.tolerance("outputs", "fp16")
    for k in (0, 5, 30):
        rec = ref.read(k)
        got = b.run(rec.inputs)["outputs"]
        assert np.max(np.abs(got - rec.outputs["outputs"])) < tol.atol
    again = OrtBackend(contract, external_tiny, precision="fp16", cache_dir=tmp_path / "cache")
    assert again.model_path == b.model_path  # cached by content: not converted twice


def test_fp16_conversion_failure_names_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime.transformers.float16 as f16

    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("Failed to serialize proto\nsecond line")

    monkeypatch.setattr(f16, "convert_float_to_float16", boom)
    with pytest.raises(ModelMismatch, match=r"cannot make the FP16 copy of the model \(ValueError: Failed to "
                                            r"serialize proto\)") as e:
        onnx_files.fp16_variant(TINY_ONNX, tmp_path)
    assert str(TINY_ONNX) in str(e.value) and not list(tmp_path.iterdir())


def test_a_file_rewritten_in_place_with_its_old_size_and_mtime_gets_a_new_digest(tmp_path: Path) -> None:
    """The digest memo must not serve the old digest of a model rewritten in place (same size, mtime put back)."""
    import os
    import time

    from streamparity.backends.onnx_models import file_sha256

    f = tmp_path / "model.onnx"
    f.write_bytes(b"a" * 64)
    st = f.stat()
    first = file_sha256(f)
    time.sleep(0.05)  # past the kernel's coarse timestamp tick: within one tick stat() cannot tell them apart
    f.write_bytes(b"b" * 64)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    assert file_sha256(f) != first


def test_a_model_ort_refuses_is_one_line_with_its_reason(tmp_path: Path) -> None:
    """ONNX Runtime's load errors lead with a C++ source location and signature (~250 characters for an
    unreleased opset): the line keeps the reason, not the signature."""
    m = onnx.load(str(TINY_ONNX))
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 99
    path = tmp_path / "opset99.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ModelMismatch) as e:
        OrtBackend(load_contract(TINY_CONTRACT), path)
    text = str(e.value)
    assert "Opset 99 is under development" in text and "Current official support for domain ai.onnx" in text
    assert "std::" not in text and "model_load_utils" not in text and "\n" not in text and len(text) < 800
