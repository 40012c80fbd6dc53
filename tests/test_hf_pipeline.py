"""Hub-family models through the rest of cxrtool: the model's own zero-shot scoring rule,
`cxrtool models`, and embed -> index -> search -> classify -> evaluate with a SigLIP model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.constants import DEFAULT_MODEL_DIR
from cxrtool.evaluate.zero_shot import LabelPromptSet, Scoring, ZeroShotClassifier, multiclass_scores
from cxrtool.model import list_models, load_model, save_model_dir

from .conftest import ARCHIVE, SAMPLE

runner = CliRunner()


# ------------------------------------------------------------------------------- scoring
def test_sigmoid_scoring_is_the_mean_per_prompt_sigmoid_with_the_bias():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(4, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    prompts = [rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32)]
    prompts = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in prompts]
    ens = np.stack([p.mean(0) / np.linalg.norm(p.mean(0)) for p in prompts])
    clf = ZeroShotClassifier(["a", "b"], ens, -ens, scale=10.0, rule="sigmoid", bias=-2.5, positive_prompts=prompts)
    by_hand = np.stack([(1 / (1 + np.exp(-(10.0 * img @ p.T - 2.5)))).mean(1) for p in prompts], axis=1)
    np.testing.assert_allclose(clf.probabilities(img), by_hand, rtol=1e-6)
    softmax = ZeroShotClassifier(["a", "b"], ens, -ens, scale=10.0)
    assert not np.allclose(softmax.probabilities(img), by_hand)
    sig = multiclass_scores(img, prompts, Scoring("sigmoid", 10.0, -2.5))
    np.testing.assert_allclose(sig, by_hand, rtol=1e-6)


def test_classifier_takes_the_rule_from_the_model(siglip_dir, clip_dir):
    sets = [LabelPromptSet("Edema", ("edema.", "pulmonary edema."), ("no edema.",))]
    siglip = ZeroShotClassifier.from_prompts(load_model(str(siglip_dir)), sets)
    assert (siglip.rule, siglip.scale, siglip.bias) == ("sigmoid", pytest.approx(10.0), pytest.approx(-2.5))
    assert siglip.positive_prompts[0].shape == (2, 32)
    clip = ZeroShotClassifier.from_prompts(load_model(str(clip_dir)), sets)
    assert (clip.rule, clip.bias) == ("softmax", 0.0)


# ------------------------------------------------------------------------------- models
def test_models_lists_the_default_local_directories_and_hub_families(siglip_dir, clip_dir, tmp_path):
    home = tmp_path / "models"
    shutil.copytree(siglip_dir, home / "someorg" / "tiny-siglip")
    save_model_dir(load_model(str(clip_dir)), home / "mine" / "clip")
    (home / "empty").mkdir()
    listing = list_models(home)
    card = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    width = card["embed_dim"] * (2 if card["embedding"] == "flip_pair" else 1)  # a flip pair is 2 x embed_dim
    assert listing["default"].family == "cxrtool" and listing["default"].embed_dim == width
    local = {m.name: m for m in listing["local"]}
    assert set(local) == {"someorg/tiny-siglip", "mine/clip"}
    assert (local["someorg/tiny-siglip"].family, local["someorg/tiny-siglip"].scoring) == ("hf-siglip", "sigmoid")
    assert local["someorg/tiny-siglip"].input_size == 32 and local["mine/clip"].fingerprint.startswith("sha256:")
    hub = {m.name: m for m in listing["hub"]}
    assert hub["google/medsiglip-448"].family == "hf-siglip" and hub["google/medsiglip-448"].input_size == 448
    assert hub["hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"].family == "open_clip"
    assert {m.family for m in hub.values()} == {"hf-clip", "hf-siglip", "open_clip"}


def test_models_command_prints_json_and_a_table(siglip_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("CXRTOOL_MODELS", str(tmp_path / "models"))
    shutil.copytree(siglip_dir, tmp_path / "models" / "someorg" / "tiny-siglip")
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["models_home"] == str(tmp_path / "models")
    assert [m["name"] for m in data["local"]] == ["someorg/tiny-siglip"]
    assert data["default"]["family"] == "cxrtool" and any(m["name"] == "google/medsiglip-448" for m in data["hub"])
    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0 and "someorg/tiny-siglip" in table.output and "medsiglip-448" in table.output


# ------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_whole_pipeline_runs_with_a_siglip_model(siglip_dir, tmp_path):
    """embed -> index -> search (text and image) -> classify -> evaluate, unchanged, on sample_data."""
    ws, model = str(tmp_path / "ws"), str(siglip_dir)
    res = runner.invoke(app, ["embed", str(ARCHIVE), "--workspace", ws, "--model", model, "--json"])
    assert res.exit_code in (0, 1), res.output  # 1: the sample archive holds a deliberately broken file
    embedded = json.loads(res.stdout)["embedded"]
    assert embedded > 100
    info = json.loads((tmp_path / "ws" / "embed.json").read_text())
    assert info["model_fingerprint"] == load_model(model).card.vector_id and info["embed_dim"] == 32
    res = runner.invoke(app, ["index", "--workspace", ws, "--model", model, "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["search", "pleural effusion", "--workspace", ws, "--model", model, "-k", "5", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)) == 5
    image = sorted((ARCHIVE / "nih").rglob("*.jpg"))[0]
    res = runner.invoke(app, ["search", "--image", str(image), "--workspace", ws, "--model", model, "-k", "1",
                              "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["score"] == pytest.approx(1.0, abs=1e-4)
    res = runner.invoke(app, ["classify", ws, "--model", model, "--labels", "effusion,cardiomegaly", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["images"]) == embedded and json.loads(res.stdout)["scoring"] == "sigmoid"
    res = runner.invoke(app, ["evaluate", "--shards", ws, "--labels-csv", str(SAMPLE / "labels.csv"), "--out",
                              str(tmp_path / "eval"), "--model", model, "--bootstrap", "20", "--no-probe", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["model"]["family"], summary["model"]["scoring"]) == ("hf-siglip", "sigmoid")
    assert summary["model"]["logit_bias"] == pytest.approx(-2.5)
    assert summary["zero_shot"]["labels"] and "sigmoid" in (tmp_path / "eval" / "report.md").read_text()
    # the workspace remembers this model, and refuses another one
    res = runner.invoke(app, ["search", "effusion", "--workspace", ws, "--json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)) > 0, res.output
    res = runner.invoke(app, ["search", "effusion", "--workspace", ws, "--model", str(DEFAULT_MODEL_DIR), "--json"])
    assert res.exit_code == 2 and "another model" in res.output
