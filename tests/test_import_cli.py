"""`cxrtool import ...` end to end: an imported model works with embed, index, search, classify, evaluate."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.data.manifest import Study, StudyImage, write_manifest

from .checkpoint_layouts import (
    TINY_SWIN_IMAGE_SIZE,
    cxr_clip_config,
    openai_clip_state,
    save_cxr_clip,
    tiny_bpe_file,
    tiny_swin_cxr_clip_state,
)
from .conftest import ARCHIVE, SAMPLE

runner = CliRunner()


def invoke(*args: str):
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def checkpoint(tiny_text_dir, module_tmp):
    return save_cxr_clip(module_tmp.mktemp("ckpt") / "swint_m.tar", tiny_swin_cxr_clip_state(tiny_text_dir),
                         cxr_clip_config("swin", TINY_SWIN_IMAGE_SIZE, 64))


@pytest.fixture(scope="module")
def imported(checkpoint, tiny_text_dir, module_tmp):
    out = module_tmp.mktemp("models") / "cxr-clip-swint_m"
    report = json.loads(invoke("import", "cxr-clip", str(checkpoint), "-o", str(out), "--text-encoder",
                               str(tiny_text_dir), "--json").stdout)
    return report, out


def test_import_help_names_the_formats():
    out = " ".join(invoke("import", "--help").stdout.split())  # rich wraps lines
    assert "without running any code" in out
    for fmt in ("cxr-clip", "chexzero", "biovil", "biovil-t", "medclip", "gloria"):
        assert fmt in out and "--out" in invoke("import", fmt, "--help").stdout


def test_import_prints_what_it_placed_dropped_and_the_licence(checkpoint, tiny_text_dir, tmp_path):
    out = " ".join(invoke("import", "cxr-clip", str(checkpoint), "-o", str(tmp_path / "m"), "--text-encoder",
                          str(tiny_text_dir)).stdout.split())  # rich wraps lines
    assert "every weight of the model came from the file" in out and "dropped 5 obsolete buffer(s)" in out
    assert "1 x position_ids, 4 x relative_position_index" in out
    assert "CC BY-NC-SA 4.0" in out and "sha256" in out


def test_import_report_json(imported, checkpoint):
    report, out = imported
    assert report["format"] == "cxr-clip" and report["out_dir"] == str(out) and report["epoch"] == 7
    assert report["fingerprint"].startswith("sha256:") and report["source"] == str(checkpoint)


def test_a_refused_import_is_one_line_and_a_hint(checkpoint, tiny_text_dir, tmp_path):
    import torch

    state = tiny_swin_cxr_clip_state(tiny_text_dir)
    del state["text_projection.projection.weight"]
    torch.save(state, tmp_path / "cut.pt")
    res = runner.invoke(app, ["import", "cxr-clip", str(tmp_path / "cut.pt"), "-o", str(tmp_path / "m"),
                              "--text-encoder", str(tiny_text_dir)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.startswith("error:") and "text_projection.projection.weight" in res.output
    assert "hint:" in res.output and not (tmp_path / "m").exists()


def test_an_imported_model_embeds_indexes_and_searches_the_sample_archive(imported, tmp_path):
    _, model = imported
    ws = str(tmp_path / "ws")
    summary = json.loads(invoke("embed", str(ARCHIVE), "--model", str(model), "--workspace", ws, "--json").stdout)
    assert summary["embedded"] == 167
    assert json.loads(invoke("index", "--workspace", ws, "--model", str(model), "--json").stdout)["count"] == 167
    hits = json.loads(invoke("search", "pleural effusion", "-k", "5", "--workspace", ws, "--model", str(model),
                             "--json").stdout)
    assert len(hits) == 5
    image = sorted((ARCHIVE / "nih").rglob("*.jpg"))[7]
    hits = json.loads(invoke("search", "--image", str(image), "-k", "3", "--dedupe", "0", "--workspace", ws,
                             "--model", str(model), "--json").stdout)
    assert hits[0]["path"] == image.relative_to(ARCHIVE).as_posix() and hits[0]["score"] > 0.999


def _manifest(tmp_path):
    studies = []
    for r in _rows(16):
        labels = {k: int(r[k]) for k in ("cardiomegaly", "effusion", "atelectasis", "no_finding")}
        split = "test" if int(r["patient_id"]) % 2 else "train"
        studies.append(Study(r["path"], r["patient_id"], split, "nih",
                             [StudyImage(str(ARCHIVE / r["path"]), r["view"])], labels=labels,
                             text=r["findings"].replace("|", ", ").lower()))
    return write_manifest(studies, tmp_path / "manifest.parquet")


def _rows(n):
    with open(SAMPLE / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))[:n]


def test_an_imported_model_classifies_and_evaluates(imported, tmp_path):
    _, model = imported
    files = [str(ARCHIVE / r["path"]) for r in _rows(3)]
    data = json.loads(invoke("classify", *files, "--model", str(model), "--labels", "effusion,cardiomegaly",
                             "--json").stdout)
    assert [i["path"] for i in data["images"]] == files
    assert all(0 <= i[k] <= 1 for i in data["images"] for k in data["labels"])
    summary = json.loads(invoke("evaluate", str(_manifest(tmp_path)), "--out", str(tmp_path / "eval"), "--model",
                                str(model), "--bootstrap", "20", "--json").stdout)
    assert summary["zero_shot"]["labels"] and summary["model"]["name"] == "CXR-CLIP swint_m"


TINY_CLIP = {"text_width": 128, "text_layers": 2, "context": 77, "vision_width": 128, "vision_layers": 2, "patch": 8,
             "grid": 4, "embed_dim": 64}


def test_imports_without_out_land_in_the_models_home_listed_and_found_by_name(checkpoint, tiny_text_dir, tmp_path,
                                                                             monkeypatch):
    import torch

    from cxrtool.model.registry import local_models

    home = tmp_path / "models"
    monkeypatch.setenv("CXRTOOL_MODELS", str(home))
    bpe = tiny_bpe_file(tmp_path / "bpe.txt.gz")
    torch.save(openai_clip_state(vocab=538, gen=torch.Generator().manual_seed(5), **TINY_CLIP),
               tmp_path / "best_64_0.864.pt")
    report = json.loads(invoke("import", "chexzero", str(tmp_path / "best_64_0.864.pt"), "--tokenizer", str(bpe),
                               "--json").stdout)
    assert report["out_dir"] == str(home / "chexzero" / "best_64_0.864")
    invoke("import", "cxr-clip", str(checkpoint), "--text-encoder", str(tiny_text_dir))
    rows = {r.name: r for r in local_models(home)}
    assert rows["chexzero/best_64_0.864"].family == "hf-clip" and rows["cxr-clip/swint_m"].family == "cxrtool"
    assert rows["chexzero/best_64_0.864"].fingerprint == report["fingerprint"]

    # the CheXzero model (hf-clip family) by name: embed, index, search, classify, evaluate
    ws = str(tmp_path / "ws")
    summary = json.loads(invoke("embed", str(ARCHIVE / "nih"), "--model", "chexzero/best_64_0.864", "--workspace", ws,
                                "--json").stdout)
    assert summary["embedded"] > 100
    invoke("index", "--workspace", ws, "--model", "chexzero/best_64_0.864")
    # a tiny random model puts most images near cosine 1: keep near-duplicates, or they hide each other
    hits = json.loads(invoke("search", "pleural effusion", "-k", "3", "--workspace", ws, "--model",
                             "chexzero/best_64_0.864", "--dedupe", "0", "--json").stdout)
    assert len(hits) == 3
    files = [str(ARCHIVE / r["path"]) for r in _rows(2)]
    data = json.loads(invoke("classify", *files, "--model", "chexzero/best_64_0.864", "--labels", "effusion",
                             "--json").stdout)
    assert len(data["images"]) == 2
    summary = json.loads(invoke("evaluate", str(_manifest(tmp_path)), "--out", str(tmp_path / "eval"), "--model",
                                "chexzero/best_64_0.864", "--bootstrap", "20", "--no-probe", "--json").stdout)
    assert summary["zero_shot"]["labels"]
