"""The ONNX Runtime path of the image side: the same vectors as torch, or not used.

Real images from sample_data, the bundled model (with its card's vectors and, if those are single,
as a ``flip_pair`` card too: the mirror pass, the halves pooling and the projection are all inside
the export), real onnxruntime.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cxrtool.constants import DEFAULT_MODEL_DIR
from cxrtool.embed.pipeline import embed_archive
from cxrtool.embed.shards import read_shard, scan_shards
from cxrtool.errors import ModelError
from cxrtool.index import Index, build_index
from cxrtool.model import load_model
from cxrtool.model.onnx_export import MIN_COSINE
from cxrtool.model.onnx_image import export_path

from .conftest import ARCHIVE

pytest.importorskip("onnxruntime", reason="onnxruntime is a dependency of cxrtool; reinstall with `make install`")
# the bundled model's own vector mode, and the mirror pass of flip pairs whatever the bundled card says
MODES = sorted({json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())["embedding"], "flip_pair"})


@pytest.fixture(scope="module")
def archive(module_tmp):
    """12 real radiographs of three sources and shapes (NIH JPEG 512 px, Hannover PNG 640 x 5xx, DICOM)."""
    root = module_tmp.mktemp("archive")
    files = [*sorted((ARCHIVE / "nih").rglob("*.jpg"))[:6], *sorted((ARCHIVE / "hannover").rglob("*.png"))[:3],
             *sorted(p for p in (ARCHIVE / "pacs").rglob("*") if p.is_file())[:3]]
    for f in files:
        target = root / f.relative_to(ARCHIVE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    return root


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRTOOL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _vectors(ws) -> dict[str, np.ndarray]:
    out = {}
    for shard in scan_shards(ws / "shards").good:
        table, vectors, _ = read_shard(shard, ["path"])
        out.update(zip(table.column("path").to_pylist(), vectors, strict=True))
    return out


@pytest.mark.parametrize("mode", MODES)
def test_onnx_and_torch_shards_hold_the_same_vectors_and_mix_in_one_index(archive, cache, tmp_path, mode):
    model = load_model()
    model.card.embedding = mode
    torch_ws, onnx_ws, mixed = tmp_path / "torch", tmp_path / "onnx", tmp_path / "mixed"
    a = embed_archive(archive, torch_ws, model, runtime="torch", progress=False)
    b = embed_archive(archive, onnx_ws, model, runtime="onnx", progress=False)
    assert a.image_runtime == "torch" and "matches torch on the first images" in b.image_runtime
    assert model.runtime == "torch" and not model.onnx_active  # the caller's model is back on torch
    n = a.embedded
    assert n >= 10 and b.embedded == n and export_path(model).is_file()
    va, vb = _vectors(torch_ws), _vectors(onnx_ws)
    assert va.keys() == vb.keys()
    cos = np.array([float(va[k] @ vb[k]) for k in va])  # unit vectors
    assert cos.min() >= MIN_COSINE, cos
    # one workspace, half of it by each engine: one vector id, one index, an image finds itself
    half = sorted(p for p in archive.rglob("*") if p.is_file())[:6]
    part = tmp_path / "part"
    for f in half:
        (part / f.relative_to(archive)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, part / f.relative_to(archive))
    embed_archive(part, mixed, model, runtime="torch", progress=False)
    shutil.rmtree(part)
    shutil.copytree(archive, part)
    later = embed_archive(part, mixed, model, runtime="auto", progress=False)
    assert later.embedded >= 4 and "matches torch on the first images" in later.image_runtime
    assert build_index(mixed).count == n
    probe = sorted(archive.rglob("*.jpg"))[0]
    hit = Index.open(mixed, model=model).search(image=probe, k=1, dedupe=None)[0]
    assert hit.path == probe.relative_to(archive).as_posix() and hit.score > 0.999


def test_an_export_that_does_not_match_torch_is_not_used(archive, cache, tmp_path, caplog):
    """A cached graph of other weights under this model's name (what a stale or tampered cache
    would hold): the first-batch check catches it and auto embeds with torch; onnx refuses."""
    from cxrtool.model.onnx_image import export

    model = load_model()
    other = load_model()
    with __import__("torch").no_grad():
        for p in other.image_proj.parameters():
            p.mul_(-1.0)  # the same graph, other weights: vectors far from this model's
    sample = model.preprocess(sorted(archive.rglob("*.jpg"))[0])[None]
    export(other, export_path(model), sample)
    with caplog.at_level("WARNING"):
        s = embed_archive(archive, tmp_path / "ws", model, runtime="auto", progress=False)
    assert s.embedded >= 10 and s.image_runtime.startswith("torch (ONNX Runtime not used: ONNX Runtime vectors differ")
    assert "stays on torch" in caplog.text
    torch_vectors = _vectors(tmp_path / "ws")
    reference = load_model()
    reference.use_runtime("torch")
    assert all(float(v @ reference.encode_images([archive / k])[0]) > 0.99999 for k, v in torch_vectors.items())
    model.use_runtime("onnx")
    with pytest.raises(ModelError, match="--runtime onnx: ONNX Runtime vectors differ"):
        model.encode_pixels(sample)
    # refused once, never used afterwards: the next call is torch's, not the unchecked graph's
    assert np.allclose(model.encode_pixels(sample), reference.encode_pixels(sample), atol=1e-6)


def test_a_model_with_a_live_session_copies_and_pickles_without_it(archive, cache):
    import copy
    import pickle

    model = load_model()
    model.use_runtime("onnx")
    x = model.preprocess(sorted(archive.rglob("*.jpg"))[0])[None]
    model.encode_pixels(x)
    assert model.onnx_active
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin.runtime == "torch" and not twin.onnx_active
        assert np.allclose(twin.encode_pixels(x), model.encode_pixels(x), atol=1e-5)


def test_where_no_export_can_be_made_auto_says_why_and_uses_torch(archive, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("CXRTOOL_CACHE", str(blocker))  # the cache cannot be created: nothing is exported
    model = load_model()
    s = embed_archive(archive, tmp_path / "ws", model, runtime="auto", progress=False)
    assert s.embedded >= 10 and "ONNX Runtime not used: export to ONNX failed" in s.image_runtime


def test_the_cli_reports_the_runtime_and_takes_torch(archive, cache, tmp_path):
    from typer.testing import CliRunner

    from cxrtool.cli.main import app

    res = CliRunner().invoke(app, ["embed", str(archive), "--workspace", str(tmp_path / "ws"), "--runtime", "torch",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["image_runtime"] == "torch"
    bad = CliRunner().invoke(app, ["embed", str(archive), "--workspace", str(tmp_path / "ws2"), "--runtime", "tpu",
                                   "--device", "cpu"])
    assert bad.exit_code == 2 and "unknown runtime 'tpu'" in bad.output
