"""`import_medclip`: MedCLIP checkpoints made by MedCLIP's own code embed as MedCLIP embeds them.

The references are upstream's classes (``medclip`` 0.0.3, ``medclip.modeling_medclip``):
``MedCLIPModel(vision_cls=MedCLIPVisionModel | MedCLIPVisionModelViT)`` with seeded random
weights, built offline (``AutoModel.from_pretrained`` answers with a BERT of the test's small
Bio_ClinicalBERT-shaped config or the Swin-T config; torchvision's ResNet-50 is made without its
ImageNet download), and saved as MedCLIP's release files hold it: ``pytorch_model.bin`` inside
``medclip-pretrained.zip``, Swin keys in transformers-4.24 names with their
``relative_position_index`` buffers, BERT ``position_ids``. Images: ``encode_image``; texts:
``text_model(ids, mask)`` + L2 one text at a time (``encode_text`` calls ``.cuda()``), tokenised
with ``AutoTokenizer`` over the Bio_ClinicalBERT-style folder and ``model_max_length = 77``.

Preprocessing reference: ``MedCLIPFeatureExtractor`` cannot be imported on transformers 5
(``CLIPFeatureExtractor`` is gone), so its transformers-4.24 steps are rebuilt below: its own
``pad_img`` (taken verbatim from medclip/dataset.py with ``ast``), then the 4.24 mixin's
``resize`` (PIL bicubic to 224 x 224), ``center_crop`` (a no-op) and ``normalize`` (x * (1/255),
then (x - mean) / std in float32); the image is read with ``PIL.Image.open(path)`` as upstream.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import math
import shutil
import sys
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxrtool.errors import CheckpointMismatchError, ModelError
from cxrtool.model import load_model_dir
from cxrtool.model.imports.medclip import import_medclip

from .conftest import ARCHIVE

if importlib.util.find_spec("medclip") is None:
    pytest.skip("needs MedCLIP's own code as the reference: pip install --no-deps medclip==0.0.3 (make parity)",
                allow_module_level=True)

COS = 0.99999
MEAN, STD = 0.5862785803043838, 0.27950088968644304  # medclip/constants.py IMG_MEAN, IMG_STD
# Real report sentences (OpenI / Indiana University chest X-ray reports 10, 1001, 1003); the last is
# longer than 77 tokens, so truncation is compared too.
TEXTS = [
    "No acute cardiopulmonary process.",
    "Stable calcified granuloma within the right upper lung.",
    "Diffuse fibrosis. No visible focal acute disease.",
    "Heart size and pulmonary vascularity appear within normal limits. Retrocardiac soft tissue density is present. "
    "There appears to be air within this which could suggest that this represents a hiatal hernia. Vascular "
    "calcification is noted. Calcified granuloma is seen. There has been interval development of bandlike opacity "
    "in the left lung base. This may represent atelectasis. No pneumothorax or pleural effusion is seen. Osteopenia "
    "is present in the spine.",
]
# microsoft/swin-tiny-patch4-window7-224's config.json (what MedCLIPVisionModelViT loads)
SWIN_T = {"image_size": 224, "patch_size": 4, "num_channels": 3, "embed_dim": 96, "depths": [2, 2, 6, 2],
          "num_heads": [3, 6, 12, 24], "window_size": 7, "mlp_ratio": 4.0, "qkv_bias": True, "hidden_act": "gelu",
          "layer_norm_eps": 1e-5, "use_absolute_embeddings": False, "hidden_dropout_prob": 0.0,
          "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.1, "encoder_stride": 32}
# transformers 5 Swin block names -> the 4.24 names MedCLIP's release was saved with
TO_424 = [("attention.q_proj.", "attention.self.query."), ("attention.k_proj.", "attention.self.key."),
          ("attention.v_proj.", "attention.self.value."), ("attention.o_proj.", "attention.output.dense."),
          ("attention.relative_position_bias.relative_position_bias_table",
           "attention.self.relative_position_bias_table"),
          ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense.")]
MAX_POSITIONS = 128


# ----------------------------------------------------------------------------------- upstream code
def _upstream_modules():
    """medclip.modeling_medclip and medclip.constants, imported past medclip/__init__.py (which needs
    transformers < 5) through a stub package; sys.modules is restored afterwards."""
    spec = importlib.util.find_spec("medclip")
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "medclip" or k.startswith("medclip.")}
    stub = types.ModuleType("medclip")
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules["medclip"] = stub
    try:
        return importlib.import_module("medclip.modeling_medclip"), importlib.import_module("medclip.constants")
    finally:
        for k in [k for k in sys.modules if k == "medclip" or k.startswith("medclip.")]:
            sys.modules.pop(k)
        sys.modules.update(saved)


def _upstream_pad_img():
    """``MedCLIPFeatureExtractor.pad_img`` exactly as medclip/dataset.py writes it."""
    path = Path(importlib.util.find_spec("medclip").submodule_search_locations[0]) / "dataset.py"
    with warnings.catch_warnings():  # the module's regex literals warn when compiled; only pad_img is used
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedCLIPFeatureExtractor")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "pad_img")
    namespace = {"Image": Image}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["pad_img"]


def _upstream_pixels(path: Path, pad_img) -> np.ndarray:
    """MedCLIPProcessor's image path under transformers 4.24: 1 x 224 x 224 float32."""
    image = pad_img(None, Image.open(path), min_size=224)  # do_pad_square
    image = image.resize((224, 224), resample=Image.BICUBIC)  # mixin.resize, int size, default_to_square
    w, h = image.size  # mixin.center_crop(224) on a PIL image
    top, left = (h - 224) // 2, (w - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    array = np.array(image).astype(np.float32) * (1 / 255.0)  # mixin.normalize -> to_numpy_array(rescale=True)
    mean, std = np.array(MEAN).astype(array.dtype), np.array(STD).astype(array.dtype)
    return ((array - mean) / std)[None]  # 2-D -> image[None]


def _text_folder(directory: Path) -> Path:
    """A Bio_ClinicalBERT-shaped folder (config.json + vocab.txt, no tokenizer_config), small."""
    from transformers import BertConfig

    words = sorted({w for t in TEXTS for w in t.lower().replace(".", " . ").replace(",", " , ").split()})
    words = [w for w in words if w not in ("cardiopulmonary", "granuloma")]  # these two become word pieces
    pieces = ["cardio", "##pul", "##mon", "##ary", "gran", "##ulo", "##ma", "1", "2", ",", "."]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(words + pieces)]
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertConfig(vocab_size=len(vocab), hidden_size=768, num_hidden_layers=3, num_attention_heads=12,
               intermediate_size=256, max_position_embeddings=MAX_POSITIONS).to_json_file(directory / "config.json")
    return directory


def _upstream_model(vision: str, text_dir: Path, seed: int, logit_scale: float):
    """MedCLIPModel with seeded random weights (every parameter and BN statistic), in eval mode."""
    import torchvision
    from transformers import BertConfig, BertModel, SwinConfig, SwinModel

    mm, const = _upstream_modules()

    class AutoModel:  # stands in for the hub download; builds what the hub config describes
        @staticmethod
        def from_pretrained(name, **kw):
            if name == const.BERT_TYPE:
                return BertModel(BertConfig.from_pretrained(text_dir, **kw))
            assert name == const.VIT_TYPE, name
            return SwinModel(SwinConfig(**SWIN_T))

    class AutoTokenizer:  # MedCLIPTextModel's own tokenizer is never used
        @staticmethod
        def from_pretrained(name, **kw):
            return None

    resnet50 = torchvision.models.resnet50
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mm, "AutoModel", AutoModel)
        mp.setattr(mm, "AutoTokenizer", AutoTokenizer)
        mp.setattr(mm.torchvision.models, "resnet50", lambda pretrained=False, **kw: resnet50(weights=None, **kw))
        torch.manual_seed(seed)
        model = mm.MedCLIPModel(vision_cls=mm.MedCLIPVisionModelViT if vision == "vit" else mm.MedCLIPVisionModel)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # zero biases, unit norms, zero position tables: all distinct
            p.add_(torch.randn(p.shape, generator=gen) * (0.1 if p.ndim == 1 else 0.02))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        model.logit_scale.fill_(logit_scale)
    return model.eval()


def _release_state(model, vit: bool) -> dict[str, torch.Tensor]:
    """The state dict as MedCLIP's release file holds it (transformers 4.24 names and buffers)."""
    prefix = "vision_model.model."
    state = {}
    for key, value in model.state_dict().items():
        if vit and key.startswith(prefix + "encoder.layers."):
            for new, old in TO_424:
                if new in key:
                    key = key.replace(new, old)
                    break
        state[key] = value.clone()
    state["text_model.model.embeddings.position_ids"] = torch.arange(MAX_POSITIONS)[None]
    if vit:
        for name, buf in model.vision_model.model.named_buffers():
            if name.endswith("relative_position_index"):
                state[prefix + name.replace("attention.relative_position_bias.", "attention.self.")] = buf.clone()
    return state


def _save_zip(state, path: Path, compression: int = zipfile.ZIP_STORED) -> Path:
    """``pytorch_model.bin`` at the root of a zip, as medclip-pretrained.zip holds it (stored: deflating
    100 MB costs the test seconds; the reader is zipfile's either way)."""
    bin_path = path.with_suffix(".bin.tmp")
    torch.save(state, bin_path)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.write(bin_path, "pytorch_model.bin")
    bin_path.unlink()
    return path


# ------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def image_paths(module_tmp) -> list[Path]:
    """Real radiographs: two Hannover PNGs (640 x 599 / 524), a square NIH JPEG (512 x 512), and
    two crops of it saved as PNG (512 x 400, 361 x 512: wide and tall, odd padding)."""
    d = module_tmp.mktemp("medclip_images")
    paths = sorted((ARCHIVE / "hannover").rglob("*.png"))[:2]
    nih = sorted((ARCHIVE / "nih").rglob("*.jpg"))[0]
    with Image.open(nih) as im:
        im.crop((0, 50, 512, 450)).save(d / "wide_512x400.png")
        im.crop((75, 0, 436, 512)).save(d / "tall_361x512.png")
    return [*paths, nih, d / "wide_512x400.png", d / "tall_361x512.png"]


@pytest.fixture(scope="module")
def text_dir(module_tmp) -> Path:
    return _text_folder(module_tmp.mktemp("bio_clinicalbert") / "Bio_ClinicalBERT")


@pytest.fixture(scope="module", params=["resnet", "vit"])
def variant(request, text_dir, module_tmp):
    """(name, upstream model, release state, import report, imported model) for one MedCLIP variant:
    ResNet-50 from medclip-pretrained.zip, Swin-T from a folder holding pytorch_model.bin."""
    vit = request.param == "vit"
    model = _upstream_model(request.param, text_dir, seed=7 if vit else 3, logit_scale=2.0 if vit else 5.0)
    state = _release_state(model, vit)
    d = module_tmp.mktemp(f"medclip_{request.param}")
    if vit:
        (d / "medclip-vit").mkdir()
        torch.save(state, d / "medclip-vit" / "pytorch_model.bin")
        source = d / "medclip-vit"
    else:
        source = _save_zip(state, d / "medclip-pretrained.zip")
    report = import_medclip(source, d / "out", text_encoder=str(text_dir))
    yield request.param, model, state, report, load_model_dir(d / "out")
    shutil.rmtree(d, ignore_errors=True)  # one variant's checkpoints on disk at a time


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# --------------------------------------------------------------------------------------- parity
def test_images_embed_as_medclip_model_only_and_from_file(variant, image_paths):
    name, upstream, _, _, model = variant
    pad_img = _upstream_pad_img()
    pixels = torch.from_numpy(np.stack([_upstream_pixels(p, pad_img) for p in image_paths]))  # N x 1 x 224 x 224
    with torch.no_grad():
        expected = upstream.encode_image(pixels).numpy()
    model_only = model.encode_pixels(pixels.repeat(1, 3, 1, 1))  # upstream repeats the grey channel in the model
    from_file = model.encode_images(image_paths)
    ours = torch.stack([model.preprocess(p) for p in image_paths])
    pixel_diff = float((ours - pixels).abs().max())
    print(f"\n{name}: image cos model-only {_cos(model_only, expected).min():.7f}, "
          f"full pipeline {_cos(from_file, expected).min():.7f}, max |pixel diff| {pixel_diff:.2e} "
          f"(normalised units; {pixel_diff * STD:.2e} on [0, 1])")
    assert ours.shape[1] == 3 and torch.equal(ours[:, 0], ours[:, 2])
    assert pixel_diff < 1e-5
    assert _cos(model_only, expected).min() >= COS
    assert _cos(from_file, expected).min() >= COS


def test_texts_embed_as_medclip_one_text_at_a_time(variant, text_dir):
    from transformers import AutoTokenizer

    name, upstream, _, _, model = variant
    tokenizer = AutoTokenizer.from_pretrained(text_dir)  # MedCLIP: AutoTokenizer(BERT_TYPE), then max length 77
    tokenizer.model_max_length = 77
    expected = []
    for text in TEXTS:
        enc = tokenizer([text], truncation=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected.append(F.normalize(upstream.text_model(enc["input_ids"], enc["attention_mask"]), dim=-1)[0])
    expected = torch.stack(expected).numpy()
    assert len(tokenizer(TEXTS[-1])["input_ids"]) > 77 >= len(model.tokenize(TEXTS)["input_ids"][-1])
    ours = model.encode_texts(TEXTS)  # one padded batch: the pads must not enter the mean
    print(f"\n{name}: text cos {_cos(ours, expected).min():.7f}")
    assert _cos(ours, expected).min() >= COS


def test_text_parity_would_notice_another_pooling(variant, text_dir):
    """The comparison above can fail: upstream's unmasked mean over a padded batch is another vector."""
    _, upstream, _, _, model = variant
    enc = model.tokenize(TEXTS[:3])  # different lengths, padded
    with torch.no_grad():
        padded = F.normalize(upstream.text_model(enc["input_ids"], enc["attention_mask"]), dim=-1).numpy()
    assert _cos(model.encode_texts(TEXTS[:3]), padded).min() < 0.9999


def test_card_report_and_provenance(variant):
    name, _, state, report, model = variant
    card = model.card
    assert card.family == "medclip" and card.embed_dim == 512 and not card.projection_bias
    tower = ("swin_tiny", 768) if name == "vit" else ("resnet50", 2048)
    assert (card.image.timm_name, card.image.feature_dim) == tower
    assert (card.image.resize, card.image.interpolation, card.image.input_size) == (
        "medclip_pad_square", "bicubic", 224)
    assert card.image.mean == [MEAN] * 3 and card.image.std == [STD] * 3 and card.image.in_channels == 3
    assert (card.text.max_length, card.text.pooling) == (77, "native")
    raw = 2.0 if name == "vit" else 5.0  # the ResNet's is above MedCLIP's clamp
    assert card.scoring.rule == "softmax"
    assert card.scoring.logit_scale == pytest.approx(math.exp(min(raw, 4.6052)))
    prov = card.provenance
    assert prov["logit_scale"] == pytest.approx(raw) and "licence unspecified" in prov["licence"]
    assert "research" in prov["intended_use"] and "bicubic" in prov["preprocessing"] and "77" in prov["text"]
    assert prov["source_member"] == (None if name == "vit" else "pytorch_model.bin")
    pooler = "text_model.model.pooler.dense."
    assert report.ignored == ["logit_scale", pooler + "bias", pooler + "weight"]
    n_index = sum(SWIN_T["depths"]) if name == "vit" else 0
    assert sum(k.endswith("relative_position_index") for k in report.dropped) == n_index
    assert "text_model.model.embeddings.position_ids" in report.dropped
    assert report.tensors + len(report.dropped) + len(report.ignored) == len(state)  # every tensor accounted for
    assert report.fingerprint == card.fingerprint and type(model).__name__ == "MedCLIPEncoder"
    assert model.scale().item() == pytest.approx(card.scoring.logit_scale)


# ------------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def small_state(text_dir):
    """A complete ResNet-variant release state (fresh, cheap to perturb) for the refusal tests."""
    return _release_state(_upstream_model("resnet", text_dir, seed=11, logit_scale=2.6), vit=False)


@pytest.mark.parametrize(("change", "missing", "unexpected"), [
    ("drop", "text_model.model.encoder.layer.1.attention.self.key.weight", None),
    ("drop", "vision_model.model.layer3.2.bn2.running_var", None),
    ("add", None, "vision_model.model.fc.bias"),
])
def test_a_missing_or_extra_tensor_is_refused_by_name(small_state, text_dir, tmp_path, change, missing, unexpected):
    state = dict(small_state)
    if change == "drop":
        del state[missing]
    else:
        state[unexpected] = torch.zeros(512)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointMismatchError) as info:
        import_medclip(tmp_path / "pytorch_model.bin", tmp_path / "out", text_encoder=str(text_dir))
    assert info.value.missing == ([missing] if missing else []) and info.value.unexpected == (
        [unexpected] if unexpected else [])
    assert (missing or unexpected) in info.value.reason
    assert not (tmp_path / "out").exists()


def test_a_wrongly_shaped_tensor_is_refused_by_name(small_state, text_dir, tmp_path):
    key = "text_model.model.encoder.layer.0.attention.self.value.weight"
    torch.save({**small_state, key: torch.zeros(768, 700)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"encoder\.layer\.0\.attention\.self\.value\.weight has shape \(768, 700\)"):
        import_medclip(tmp_path, tmp_path / "out", text_encoder=str(text_dir))  # the folder holding the .bin
    assert not (tmp_path / "out").exists()


class _Payload:
    """Unpickling this would run ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["zip", "bin"])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(small_state, text_dir, tmp_path, container):
    marker = tmp_path / "pwned"
    payload = {**dict(list(small_state.items())[:3]), "logit_scale": _Payload(marker)}
    if container == "zip":
        checkpoint = _save_zip(payload, tmp_path / "medclip-pretrained.zip", zipfile.ZIP_DEFLATED)
    else:
        torch.save(payload, tmp_path / "pytorch_model.bin")
        checkpoint = tmp_path / "pytorch_model.bin"
    with pytest.raises(ModelError, match=r"refused: unpickling it would call posix\.system.*nothing was run"):
        import_medclip(checkpoint, tmp_path / "out", text_encoder=str(text_dir))
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_unreachable_hub_says_exactly_what_to_download(small_state, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.save(small_state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError) as info:
        import_medclip(tmp_path / "pytorch_model.bin", tmp_path / "out")  # default: emilyalsentzer/Bio_ClinicalBERT
    assert "emilyalsentzer/Bio_ClinicalBERT" in info.value.reason
    assert "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT" in info.value.hint
    assert "vocab.txt" in info.value.hint and "--text-encoder" in info.value.hint


def test_a_zip_without_pytorch_model_bin_is_not_mistaken_for_weights(text_dir, tmp_path):
    with zipfile.ZipFile(tmp_path / "medclip-pretrained.zip", "w") as zf:
        zf.writestr("README.txt", "no weights here")
    with pytest.raises(ModelError, match="not a readable torch checkpoint"):
        import_medclip(tmp_path / "medclip-pretrained.zip", tmp_path / "out", text_encoder=str(text_dir))


def test_reimported_model_round_trips_through_the_factory(variant, tmp_path):
    """The imported directory is an ordinary model directory: save and reload keep every tensor."""
    from cxrtool.model import save_model_dir

    _, _, _, _, model = variant
    save_model_dir(model, tmp_path / "copy")
    again = load_model_dir(tmp_path / "copy")
    assert again.card.fingerprint == model.card.fingerprint and again.card.family == "medclip"
    np.testing.assert_array_equal(again.encode_texts(TEXTS[:2]), model.encode_texts(TEXTS[:2]))
    assert json.loads((tmp_path / "copy" / "model.json").read_text())["provenance"]["imported_from"] == "medclip"


# ------------------------------------------------------------------------------------- the CLI
def test_the_cli_imports_into_the_models_home_and_every_command_uses_the_model(small_state, text_dir, tmp_path,
                                                                                monkeypatch):
    """`cxrtool import medclip ZIP` (no -o: the models home), listed by `cxrtool models` with its licence
    and intended use, found by name by embed, index, search (text and image), classify and evaluate."""
    import shutil

    from typer.testing import CliRunner

    from cxrtool.cli.main import app

    def invoke(*args: str) -> str:
        res = CliRunner().invoke(app, list(args))
        assert res.exit_code == 0, res.output
        return res.stdout

    home = tmp_path / "models"
    monkeypatch.setenv("CXRTOOL_MODELS", str(home))
    zipped = _save_zip(small_state, tmp_path / "medclip-pretrained.zip")
    report = json.loads(invoke("import", "medclip", str(zipped), "--text-encoder", str(text_dir), "--json"))
    assert report["format"] == "medclip" and report["out_dir"] == str(home / "medclip" / "medclip-pretrained")
    listed = {m["name"]: m for m in json.loads(invoke("models", "--json"))["local"]}
    row = listed["medclip/medclip-pretrained"]
    assert row["family"] == "medclip" and row["embed_dim"] == 512 and "licence unspecified" in row["licence"]
    assert "research use" in row["note"]
    archive = tmp_path / "archive"
    for src in [*sorted((ARCHIVE / "hannover").rglob("*.png"))[:2], *sorted((ARCHIVE / "nih").rglob("*.jpg"))[:2]]:
        (archive / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, archive / src.parent.name / src.name)
    ws, name = str(tmp_path / "ws"), "medclip/medclip-pretrained"
    assert json.loads(invoke("embed", str(archive), "--model", name, "--workspace", ws, "--json"))["embedded"] == 4
    assert json.loads(invoke("index", "--workspace", ws, "--json"))["count"] == 4
    hits = json.loads(invoke("search", "left pleural effusion", "-k", "3", "--dedupe", "0", "--workspace", ws,
                             "--json"))
    assert len(hits) == 3
    image = sorted(archive.rglob("*.jpg"))[0]
    hits = json.loads(invoke("search", "--image", str(image), "-k", "1", "--workspace", ws, "--json"))
    assert hits[0]["path"] == image.relative_to(archive).as_posix() and hits[0]["score"] > 0.9999
    data = json.loads(invoke("classify", str(image), "--model", name, "--labels", "effusion,cardiomegaly", "--json"))
    assert all(0 <= data["images"][0][k] <= 1 for k in data["labels"])
