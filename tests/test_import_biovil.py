"""`import_biovil`: BioViL / BioViL-T snapshots become cxrtool models that embed as hi-ml-multimodal does.

The reference is hi-ml-multimodal itself (the upstream package, installed by the ``parity`` extra):
its ``ImageModel("resnet50", 128)`` (BioViL) and ``ImageModel("resnet50_multi_image", 128)``
(BioViL-T) and a small ``CXRBertModel`` are built with seeded random weights (BatchNorm running
statistics randomised too), saved as the hub repositories hold them (image ``.pt`` state dict,
``pytorch_model.bin`` with the transformers-4.17 ``position_ids`` buffer or ``model.safetensors``,
``config.json`` naming the remote-code ``cxr-bert`` type, ``vocab.txt``), imported, and compared:

- model only: the same tensor (hi-ml's transform of a real radiograph) into both models;
- full pipeline: hi-ml's ``load_image`` + ``create_chest_xray_transform_for_inference(512, 480|448)``
  + model vs cxrtool's ``encode_images([path])``, on square and non-square real images;
- text: hi-ml's two ``TextInput`` steps by hand (``rstrip("!?.")``, the tokenizer call; its
  ``batch_encode_plus`` is gone in transformers 5) + ``get_projected_text_embeddings`` vs
  ``encode_texts``, on real report sentences.

The text tower is small (2 layers, 64 wide, a vocabulary written here); the image towers are the
real ResNet-50, since hi-ml hard-codes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("health_multimodal.image.data.io",
                    reason="hi-ml-multimodal (BioViL's upstream code) is not installed: pip install 'cxrtool[parity]'")

from health_multimodal.image.data.io import load_image  # noqa: E402
from health_multimodal.image.data.transforms import create_chest_xray_transform_for_inference  # noqa: E402
from health_multimodal.image.model.model import ImageModel  # noqa: E402
from health_multimodal.text.model import CXRBertConfig, CXRBertModel, CXRBertTokenizer  # noqa: E402
from PIL import Image  # noqa: E402

from cxrtool.errors import CheckpointMismatchError, ModelError  # noqa: E402
from cxrtool.model import load_model_dir  # noqa: E402
from cxrtool.model.imports.biovil import VARIANTS, import_biovil  # noqa: E402
from cxrtool.model.transform import preprocess  # noqa: E402

from .conftest import ARCHIVE  # noqa: E402
from .test_sources import SHARED  # noqa: E402

COS = 0.99999
# hi-ml's own zero-shot prompts (test_zero_shot_classification.py) and report sentences; OpenI
# findings are added below when the project's open-data folder is present.
TEXTS = ["Findings consistent with pneumonia", "There is no pneumonia.", "No evidence of acute pneumonia",
         "Small left pleural effusion!", "Is there a pneumothorax?", "The heart size is within normal limits.",
         "Stable cardiomegaly with mild pulmonary vascular congestion."]
BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
        "max_position_embeddings": 512, "projection_size": 128}
MARKER = "biovil_remote_code_ran"


def _openi_sentences(n: int = 6) -> list[str]:
    tgz = SHARED / "openi_reports" / "NLMCXR_reports.tgz"
    if not tgz.is_file():
        return []
    out: list[str] = []
    with tarfile.open(tgz) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            xml = tar.extractfile(member).read().decode("utf-8", "replace")
            found = re.search(r'<AbstractText Label="FINDINGS">([^<]+)</AbstractText>', xml)
            if found:
                out.append(found.group(1).split(". ")[0].strip())
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return TEXTS + _openi_sentences()


def _write_vocab(path: Path, texts: list[str]) -> Path:
    words = sorted({w for t in texts for w in re.findall(r"[a-z]+|[^a-z\s]", t.lower())})
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?-()/'"))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars if c.isalnum()],
              *[w for w in words if w not in chars]]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return path


def _randomise(module: torch.nn.Module, gen: torch.Generator, sample: torch.Tensor | None = None) -> None:
    """Seeded random values for what the default init leaves trivial (norm weights, biases, BioViL-T's
    missing-prior embedding). For an image model, BatchNorm statistics are first measured on a real
    radiograph (so a random ResNet-50 tells images apart instead of mapping all of them near one
    vector), then randomised around those values."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point or "running_" in name:
                continue
            if sample is None and t.ndim == 2:  # the text model: weights wider than BERT's 0.02 init, so that
                t.copy_(torch.randn(t.shape, generator=gen) / t.shape[-1] ** 0.5)  # texts are told apart
            elif name.endswith(".bias") or "missing_previous_emb" in name:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.05)
            elif t.ndim == 1:  # norm weights
                t.copy_(torch.rand(t.shape, generator=gen) * 0.4 + 0.8)
        if sample is not None:
            norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a plain average over the calibration pass
            module.train()
            module(sample)
            for m in norms:
                m.momentum = 0.1
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=gen) * 0.05)
                m.running_var.mul_(torch.rand(m.running_var.shape, generator=gen) * 0.4 + 0.8)
    module.eval()


def _images(tmp: Path) -> list[Path]:
    """Real radiographs: a Hannover PNG 640x599, an NIH JPEG 512x512, crops of it to
    512x400 and 361x512 (where flooring and rounding part ways), and from ../shared/data a TBX11K
    radiograph stored as an RGB PNG and a 2,373-px COVID JPEG (decoded at full size for this rule,
    where a DCT-scaled decode gave cos 0.9995) when the folder is present."""
    nih = sorted((ARCHIVE / "nih").rglob("*.jpg"))[0]
    paths = [sorted((ARCHIVE / "hannover").rglob("*.png"))[0], nih]
    im = Image.open(nih).convert("L")
    for name, box in (("crop_512x400.png", (0, 60, 512, 460)), ("crop_361x512.png", (101, 0, 462, 512))):
        im.crop(box).save(tmp / name)
        paths.append(tmp / name)
    for name in ("tb0005.png", "covid-19-pneumonia-58-prior.jpg"):  # an RGB PNG; a JPEG over 2,000 px
        if (SHARED / "misc_cxr_images" / name).is_file():
            paths.append(SHARED / "misc_cxr_images" / name)
    return paths


@pytest.fixture(scope="module")
def image_paths(module_tmp) -> list[Path]:
    return _images(module_tmp.mktemp("biovil-images"))


def _cxr_bert_tokenizer(vocab: Path) -> CXRBertTokenizer:
    """hi-ml's tokenizer class over a local vocab.txt (transformers 5 names the argument ``vocab``; 4.x
    ``vocab_file``, which 5 silently ignores, leaving only the special tokens)."""
    import inspect

    keyword = "vocab_file" if "vocab_file" in inspect.signature(CXRBertTokenizer.__init__).parameters else "vocab"
    tok = CXRBertTokenizer(**{keyword: str(vocab)}, do_lower_case=True)
    assert len(tok) == len(vocab.read_text().split()), "the upstream tokenizer did not read the vocabulary"
    return tok


def _hi_ml_tokens(tokenizer, prompts: list[str]):
    """hi-ml's TextInput.tokenize_input_prompts without batch_encode_plus (gone in transformers 5)."""
    prompts = [p.rstrip("!?.") for p in prompts]
    return tokenizer(prompts, add_special_tokens=True, padding="longest", return_tensors="pt")


class Upstream:
    """hi-ml's models and the snapshot folder written from them."""

    def __init__(self, variant: str, root: Path, texts: list[str]) -> None:
        v = VARIANTS[variant]
        self.variant, self.v, self.dir = variant, v, root / "snapshot"
        self.dir.mkdir()
        gen = torch.Generator().manual_seed(26 + len(variant))
        torch.manual_seed(26 + len(variant))
        self.image = ImageModel(img_encoder_type=v.arch, joint_feature_size=128)
        calibration = self.pixels(sorted((ARCHIVE / "nih").rglob("*.jpg"))[-1])[None, :, ::2, ::2]
        _randomise(self.image, gen, calibration)
        vocab = _write_vocab(self.dir / "vocab.txt", texts)
        self.tokenizer = _cxr_bert_tokenizer(vocab)
        config = CXRBertConfig(vocab_size=len(self.tokenizer), **BERT)
        self.text = CXRBertModel(config)
        _randomise(self.text, gen)
        self.image_state = self.image.state_dict()
        torch.save(self.image_state, self.dir / v.image_file)
        text_state = self.text.state_dict()
        if variant == "biovil":  # the transformers-4.17 pytorch_model.bin of the hub, position_ids included
            text_state["bert.embeddings.position_ids"] = torch.arange(512)[None]
            torch.save(text_state, self.dir / "pytorch_model.bin")
        else:  # BioViL-T's hub repository also has model.safetensors, which the importer must prefer
            from safetensors.torch import save_file

            save_file({k: t.clone().contiguous() for k, t in text_state.items()}, str(self.dir / "model.safetensors"))
            (self.dir / "pytorch_model.bin").write_bytes(b"not read: model.safetensors is preferred")
        self.text_state = text_state
        config.auto_map = {"AutoModel": "modeling_cxrbert.CXRBertModel"}
        config.to_json_file(self.dir / "config.json")
        # The hub repositories carry remote code; the importer must never run it.
        (self.dir / "modeling_cxrbert.py").write_text(f"open({str(root / MARKER)!r}, 'w').close()\n")
        self.report = import_biovil(self.dir, root / "model", variant=variant)
        self.model = load_model_dir(root / "model")
        self.root = root

    @torch.no_grad()
    def image_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(x).projected_global_embedding, dim=-1)

    def pixels(self, path: Path) -> torch.Tensor:
        tf = create_chest_xray_transform_for_inference(512, self.v.input_size)
        return tf(load_image(Path(path)))

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        enc = _hi_ml_tokens(self.tokenizer, prompts)
        return self.text.get_projected_text_embeddings(enc.input_ids, enc.attention_mask)


@pytest.fixture(scope="module", params=["biovil", "biovil-t"])
def upstream(request, module_tmp, texts, image_paths) -> Iterator[Upstream]:
    root = module_tmp.mktemp(request.param)
    up = Upstream(request.param, root, texts)
    # BioViL-T differs only in the crop size: the four sample_data images suffice (time)
    up.paths = image_paths if request.param == "biovil" else image_paths[:4]
    x = torch.stack([up.pixels(p) for p in up.paths])
    up.reference_pixels = x
    up.reference = up.image_embeddings(x)
    yield up
    shutil.rmtree(root, ignore_errors=True)  # one variant's checkpoints on disk at a time


def _cos(a, b) -> np.ndarray:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return F.cosine_similarity(a.double(), b.double(), dim=-1).numpy()


def test_model_only_image_embeddings_match_hi_ml(upstream):
    """The same tensors (hi-ml's transform of a non-square and a square radiograph) into both models."""
    ours = upstream.model.encode_pixels(upstream.reference_pixels[:2])
    cos = _cos(ours, upstream.reference[:2])
    print(f"{upstream.variant} image model-only cos min {cos.min():.8f}")
    assert cos.min() >= COS, cos
    # the random model tells the images apart, so the comparison above can fail
    assert _cos(upstream.reference[:1], upstream.reference[1:]).max() < 0.99


def test_full_pipeline_from_file_matches_hi_ml(upstream):
    spec, image_paths = upstream.model.card.image, upstream.paths
    diffs = []
    for path, ref in zip(image_paths, upstream.reference_pixels, strict=True):
        ours = upstream.model.preprocess(path)
        assert ours.shape == ref.shape == (3, spec.input_size, spec.input_size), path
        diffs.append(float((ours - ref).abs().max()))
    embedded = upstream.model.encode_images(image_paths)
    cos = _cos(embedded, upstream.reference)
    print(f"{upstream.variant} full pipeline cos min {cos.min():.8f}, max abs pixel difference {max(diffs)}")
    assert max(diffs) == 0.0, dict(zip(map(str, image_paths), diffs, strict=True))
    assert cos.min() >= COS, cos


def test_a_wrong_resize_would_be_noticed(upstream):
    """torchvision's one-step short-side resize to the crop (no 512 step) moves the embedding below the bar."""
    from cxrtool.model.card import ImageSpec

    if upstream.variant != "biovil":
        pytest.skip("one variant is enough (time)")
    path = upstream.paths[0]
    one_step = ImageSpec(input_size=upstream.v.input_size, resize="torchvision_center_crop", mean=[0.0] * 3,
                         std=[1.0] * 3)
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    wrong = upstream.model.encode_pixels(preprocess(pixels, one_step)[None])
    assert _cos(wrong, upstream.reference[:1])[0] < COS


def test_text_embeddings_match_hi_ml(upstream, texts):
    ours = upstream.model.encode_texts(texts)
    ids = upstream.model.tokenize(texts)["input_ids"]
    assert upstream.tokenizer.unk_token_id not in ids.tolist()  # every word is in the vocabulary written here
    ref = upstream.text_embeddings(texts)
    cos = _cos(ours, ref)
    print(f"{upstream.variant} text cos min {cos.min():.8f}")
    assert cos.min() >= COS, cos
    # hi-ml strips trailing !?. : without it the vector moves, and [CLS] is not the mean of the tokens
    enc = upstream.tokenizer(["There is no pneumonia."], return_tensors="pt")
    with torch.no_grad():
        unstripped = upstream.text.get_projected_text_embeddings(enc.input_ids, enc.attention_mask)
    assert _cos(ours[1:2], unstripped)[0] < COS
    # one at a time equals batched (padding is masked)
    assert _cos(upstream.model.encode_texts(texts[:1]), ours[:1])[0] >= COS


def test_texts_beyond_512_tokens_are_cut_where_hi_ml_refuses(upstream):
    long = "pleural effusion " * 400 + "."
    ours = upstream.model.encode_texts([long])
    enc = upstream.tokenizer([long.rstrip("!?.")], truncation=True, max_length=512, return_tensors="pt")
    assert enc.input_ids.shape[1] == 512
    with torch.no_grad():
        ref = upstream.text.get_projected_text_embeddings(enc.input_ids, enc.attention_mask)
    assert _cos(ours, ref)[0] >= COS


def test_card_report_and_provenance(upstream):
    up, v = upstream, upstream.v
    card = json.loads((up.root / "model" / "model.json").read_text())
    image = card["image"]
    assert card["family"] == "biovil" and card["embed_dim"] == 128
    assert (image["resize"], image["pad_size"], image["input_size"], image["interpolation"]) == (
        "biovil_resize_crop", 512, v.input_size, "bilinear")
    assert image["mean"] == [0.0] * 3 and image["std"] == [1.0] * 3 and image["in_channels"] == 3
    assert image["timm_name"] == ("resnet50" if up.variant == "biovil" else "resnet50_multi_image")
    assert (card["text"]["max_length"], card["text"]["pooling"], card["text"]["padding"]) == (512, "native", "longest")
    assert card["scoring"] == {"rule": "softmax", "logit_scale": 2.0, "logit_bias": None}
    prov = card["provenance"]
    for key in ("name", "imported_from", "source_file", "source_sha256", "licence", "intended_use", "architecture",
                "preprocessing", "text", "left_out", "cxrtool_version"):
        assert prov.get(key), key
    assert prov["source_file"] == v.image_file and "MIT" in prov["licence"] and "research" in prov["intended_use"]
    assert ("vit_pooler" in prov["left_out"]) == (up.variant == "biovil-t")
    ignored = " ".join(up.report.ignored)
    assert "encoder.encoder.fc" in ignored and "cls.predictions" in ignored
    assert ("encoder.vit_pooler" in ignored) == (up.variant == "biovil-t")
    if up.variant == "biovil":
        assert up.report.dropped == ["bert.embeddings.position_ids"] and prov["text_source_file"] == "pytorch_model.bin"
    else:
        assert up.report.dropped == [] and prov["text_source_file"] == "model.safetensors"
    unused = sum(1 for k in up.image_state if k.startswith(("encoder.encoder.fc.", "encoder.vit_pooler.")))
    unused += sum(1 for k in up.text_state if k.startswith(("cls.predictions.", "bert.embeddings.position_ids")))
    assert up.report.tensors == len(up.image_state) + len(up.text_state) - unused
    assert not (up.root / MARKER).exists()  # the snapshot's modeling_cxrbert.py never ran
    assert up.model.card.fingerprint == up.report.fingerprint


# ------------------------------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def biovil_files(module_tmp, texts):
    """A BioViL snapshot's state dicts, as hi-ml's classes name and shape them (values do not matter here)."""
    root = module_tmp.mktemp("biovil-refusals")
    image = ImageModel(img_encoder_type="resnet50", joint_feature_size=128).state_dict()
    vocab = _write_vocab(root / "vocab.txt", texts)
    tok = _cxr_bert_tokenizer(vocab)
    config = CXRBertConfig(vocab_size=len(tok), **BERT)
    text = CXRBertModel(config).state_dict()
    config.to_json_file(root / "config.json")
    return root, image, text


def _snapshot(root: Path, dest: Path, image: dict, text: dict) -> Path:
    dest.mkdir()
    shutil.copy(root / "vocab.txt", dest / "vocab.txt")
    shutil.copy(root / "config.json", dest / "config.json")
    torch.save(image, dest / VARIANTS["biovil"].image_file)
    torch.save(text, dest / "pytorch_model.bin")
    return dest


@pytest.mark.parametrize("key", ["projector.model.1.running_var", "encoder.encoder.layer3.2.conv2.weight"])
def test_a_missing_image_weight_is_refused_by_name(biovil_files, tmp_path, key):
    root, image, text = biovil_files
    snap = _snapshot(root, tmp_path / "snap", {k: t for k, t in image.items() if k != key}, text)
    with pytest.raises(CheckpointMismatchError) as info:
        import_biovil(snap, tmp_path / "out")
    assert info.value.missing == [key] and key in info.value.reason
    assert not (tmp_path / "out").exists()


def test_a_missing_text_weight_is_refused_by_name(biovil_files, tmp_path):
    root, image, text = biovil_files
    key = "cls_projection_head.LayerNorm.bias"
    snap = _snapshot(root, tmp_path / "snap", image, {k: t for k, t in text.items() if k != key})
    with pytest.raises(CheckpointMismatchError) as info:
        import_biovil(snap, tmp_path / "out")
    assert info.value.missing == [key]


def test_an_extra_weight_is_refused_by_name(biovil_files, tmp_path):
    root, image, text = biovil_files
    extra_image = {**image, "encoder.encoder.layer5.0.conv1.weight": torch.zeros(1)}
    snap = _snapshot(root, tmp_path / "snap", extra_image, text)
    with pytest.raises(CheckpointMismatchError) as info:
        import_biovil(snap, tmp_path / "out")
    assert info.value.unexpected == ["encoder.encoder.layer5.0.conv1.weight"]
    # a temporal pooler weight is only known-unused in BioViL-T; in a BioViL file it is unexpected
    snap = _snapshot(root, tmp_path / "snap2", image, {**text, "bert.pooler.dense.bias": torch.zeros(64)})
    with pytest.raises(CheckpointMismatchError) as info:
        import_biovil(snap, tmp_path / "out")
    assert info.value.unexpected == ["bert.pooler.dense.bias"]


def test_a_wrongly_shaped_weight_is_refused_by_name(biovil_files, tmp_path):
    root, image, text = biovil_files
    snap = _snapshot(root, tmp_path / "snap", {**image, "projector.model.3.bias": torch.zeros(64)}, text)
    with pytest.raises(ModelError, match=r"weight projector\.model\.3\.bias has shape \(64,\)"):
        import_biovil(snap, tmp_path / "out")


def test_position_ids_must_be_what_bert_computes(biovil_files, tmp_path):
    root, image, text = biovil_files
    snap = _snapshot(root, tmp_path / "snap", image,
                     {**text, "bert.embeddings.position_ids": torch.arange(512).flip(0)[None]})
    with pytest.raises(ModelError, match="position_ids differs"):
        import_biovil(snap, tmp_path / "out")


def test_the_other_variants_image_file_is_refused_with_the_right_command(biovil_files, tmp_path):
    root, image, text = biovil_files
    snap = _snapshot(root, tmp_path / "snap", image, text)
    os.replace(snap / VARIANTS["biovil"].image_file, snap / VARIANTS["biovil-t"].image_file)
    with pytest.raises(ModelError, match="biovil") as info:
        import_biovil(snap, tmp_path / "out", variant="biovil-t")
    assert "cxrtool import biovil" in info.value.hint


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(biovil_files, tmp_path):
    root, image, text = biovil_files
    marker = tmp_path / "pwned"
    snap = _snapshot(root, tmp_path / "snap", image, text)
    torch.save({**image, "x": _Payload(marker)}, snap / VARIANTS["biovil"].image_file)
    with pytest.raises(ModelError, match="refused: unpickling it would call .*system"):
        import_biovil(snap, tmp_path / "out")
    assert not marker.exists()
    torch.save({**text, "y": _Payload(marker)}, snap / "pytorch_model.bin")
    torch.save(image, snap / VARIANTS["biovil"].image_file)
    with pytest.raises(ModelError, match="pytorch_model.bin: refused"):
        import_biovil(snap, tmp_path / "out")
    assert not marker.exists()


def test_an_incomplete_folder_names_the_files_it_needs(biovil_files, tmp_path):
    root, image, text = biovil_files
    snap = _snapshot(root, tmp_path / "snap", image, text)
    (snap / "vocab.txt").unlink()
    with pytest.raises(ModelError, match="needs vocab.txt") as info:
        import_biovil(snap, tmp_path / "out")
    assert "huggingface.co/microsoft/BiomedVLP-CXR-BERT-specialized" in info.value.hint


def test_offline_hub_name_says_how_to_download_the_files(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(ModelError, match="cannot get BioViL-T from the Hugging Face hub") as info:
        import_biovil("microsoft/BiomedVLP-BioViL-T", tmp_path / "out", variant="biovil-t")
    hint = info.value.hint
    assert "biovil_t_image_model_proj_size_128.pt" in hint and "vocab.txt" in hint and "--revision v1.0" in hint
    assert not (tmp_path / "out").exists()


def test_a_hub_name_reads_the_named_files_from_the_hugging_face_cache(upstream, tmp_path, monkeypatch):
    """Offline, with hi-ml's revision in the cache: only the named files are looked up (no .py file is
    there to run), and pytorch_model.bin is taken when the revision has no model.safetensors."""
    from huggingface_hub import constants

    if upstream.variant != "biovil":
        pytest.skip("one variant is enough for the hub path")
    v, commit = upstream.v, "0" * 40
    repo = tmp_path / "hf-cache" / f"models--{v.hub.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / v.revision).write_text(commit)
    for name in ("config.json", "vocab.txt", "pytorch_model.bin", v.image_file):
        os.symlink(upstream.dir / name, snapshot / name)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    report = import_biovil(v.hub, tmp_path / "out", variant="biovil")
    assert report.fingerprint == upstream.report.fingerprint
    assert report.source == f"hf-hub:{v.hub}@{v.revision}" and report.dropped == ["bert.embeddings.position_ids"]
