"""The workspace remembers its model: `embed --model X` once, then `index`, `search`,
`embed-reports`, `classify WORKSPACE` and `serve` use X without being told; another `--model` is
refused in one line naming both. Real CLI processes, a small local model that is not the default."""

from __future__ import annotations

import json
import shutil

import pytest

from cxrtool.constants import BUNDLED_MODEL
from cxrtool.errors import WorkspaceError
from cxrtool.workspace import Workspace

from .conftest import ARCHIVE
from .test_integrity import cli, one_line_error


@pytest.fixture(scope="module")
def embedded(module_tmp, tiny_model_dir):
    archive = module_tmp.mktemp("remember") / "archive"
    shutil.copytree(ARCHIVE / "hannover", archive / "hannover")
    ws = archive.parent / "ws"
    proc = cli("embed", str(archive), "--workspace", str(ws), "--model", str(tiny_model_dir))
    assert proc.returncode == 0, proc.stderr
    return archive, ws


@pytest.fixture(scope="module")
def other_model_dir(module_tmp, tiny_text_dir):
    import torch

    from cxrtool.model import create_model, save_model_dir

    torch.manual_seed(123)
    other = create_model("mobilenetv3_small_050", str(tiny_text_dir), image_weights=None, embed_dim=32,
                         input_size=64, max_length=32)
    other.card.provenance["name"] = "another-tiny-model"
    return save_model_dir(other, module_tmp.mktemp("other") / "other-tiny")


def test_embed_records_the_model_it_used(embedded, tiny_model_dir):
    _, ws = embedded
    info = json.loads((ws / "embed.json").read_text())
    assert info["model_ref"] == str(tiny_model_dir.resolve()) and info["model_fingerprint"]
    assert Workspace(ws).model_of(None) == str(tiny_model_dir.resolve())


def test_later_commands_use_it_without_model(embedded, tmp_path):
    archive, ws = embedded
    env = {"CXRTOOL_MODEL": ""}
    index = cli("index", "--workspace", str(ws), "--json", env=env)
    assert index.returncode == 0, index.stderr
    assert json.loads(index.stdout)["text_queries"] >= 0
    hits = cli("search", "pleural effusion", "--workspace", str(ws), "--dedupe", "0", "--json", env=env)
    assert hits.returncode == 0 and len(json.loads(hits.stdout)) > 0, hits.stderr
    bank = tmp_path / "bank.csv"
    bank.write_text("study_key,report\ns1,Large left pleural effusion.\ns2,No acute disease.\n")
    reports = cli("embed-reports", str(bank), "--workspace", str(ws), "--json", env=env)
    assert reports.returncode == 0 and json.loads(reports.stdout)["embedded"] == 2, reports.stderr
    classify = cli("classify", str(ws), "--labels", "effusion", "--json", env=env)
    assert classify.returncode == 0, classify.stderr
    again = cli("embed", str(archive), "--workspace", str(ws), "--json", env=env)  # a resume, same model
    assert again.returncode == 0 and json.loads(again.stdout)["embedded"] == 0, again.stderr


def test_another_model_is_refused_in_one_line_naming_both(embedded, other_model_dir, tiny_model_dir):
    archive, ws = embedded
    assert cli("index", "--workspace", str(ws)).returncode == 0
    search = cli("search", "effusion", "--workspace", str(ws), "--model", str(other_model_dir))
    one_line_error(search, "another model", str(tiny_model_dir.resolve()), "another-tiny-model")
    embed = cli("embed", str(archive), "--workspace", str(ws), "--model", str(other_model_dir))
    one_line_error(embed, "another model", "another-tiny-model")


def test_a_recorded_model_that_moved_is_one_line(embedded, tmp_path):
    _, ws = embedded
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    info = json.loads((copy / "embed.json").read_text())
    (copy / "embed.json").write_text(json.dumps({**info, "model_ref": str(tmp_path / "gone")}))
    with pytest.raises(WorkspaceError, match="not there now"):
        Workspace(copy).model_of(None)
    one_line_error(cli("search", "effusion", "--workspace", str(copy)), "not there now")


def test_the_bundled_model_is_recorded_by_name(tmp_path):
    ws = Workspace(tmp_path)
    ws.write_json(ws.embed_info, {"model_ref": BUNDLED_MODEL})
    from cxrtool.constants import DEFAULT_MODEL_DIR

    assert ws.model_of(None) == str(DEFAULT_MODEL_DIR)
    assert ws.model_of("given/name") == "given/name"


def test_a_workspace_from_before_a_pixel_pipeline_change_is_refused_with_a_hint(embedded, tmp_path):
    """Vector ids carry the pixel pipeline's version: a workspace whose vectors were made before
    decoding or preprocessing changed (its ids have no ``+px`` tag) is never resumed into or
    searched with new query vectors; the refusal says to re-embed, and --overwrite does."""
    archive, ws = embedded
    assert cli("index", "--workspace", str(ws)).returncode == 0
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    info = json.loads((copy / "embed.json").read_text())
    new_id = info["model_fingerprint"]
    old_id = new_id.split("+px")[0]  # as cxrtool wrote it before vector ids carried a pixel tag
    assert "+px2." in new_id and old_id != new_id
    (copy / "embed.json").write_text(json.dumps({**info, "model_fingerprint": old_id}))
    for index_json in (copy / "index").glob("gen-*/index.json"):
        index_json.write_text(index_json.read_text().replace(new_id, old_id))

    search = cli("search", "effusion", "--workspace", str(copy))
    one_line_error(search, "earlier cxrtool pixel pipeline")
    embed = cli("embed", str(archive), "--workspace", str(copy))
    one_line_error(embed, "earlier cxrtool pixel pipeline", "px1; now px2")
    assert "--overwrite" in embed.stderr
    from cxrtool.embed.pipeline import embed_archive

    again = embed_archive(archive, copy, overwrite=True, progress=False, workers=0)  # the model it records
    assert again.embedded == 8
    assert json.loads((copy / "embed.json").read_text())["model_fingerprint"] == new_id
