"""`import_gloria`: a GLoRIA Lightning checkpoint imports strictly and embeds as GLoRIA's own code does.

GLoRIA (github.com/marshuang80/gloria @ 416466a) is not on PyPI, so the reference here is an
independent re-implementation of its forward, written from the repository's code line for line:
``vision_model.ImageEncoder`` (torchvision resnet50 with ``fc`` = Identity, ``Linear(2048, 768)``,
``Conv2d(1024, 768, 1)``, the 299-px upsample in ``resnet_forward``), ``text_model.BertEncoder``
(transformers ``BertModel`` with hidden states and upstream's token-aggregation *loop*, not the closed
form cxrtool uses), ``GLoRIA.process_text`` and ``GLoRIA.process_img`` (``cv2.imread(path, 0)``,
``_resize_img`` with OpenCV's INTER_AREA, ``np.pad``, torchvision ``CenterCrop`` / ``ToTensor`` /
``Normalize``). Its seeded random weights are saved as PyTorch Lightning 1.1 writes a ``.ckpt``
(``gloria.``-prefixed state dict, callbacks keyed by a class pickled under Lightning's module name,
an OmegaConf-style ``DictConfig`` as hyper_parameters and ``hparams_type``, optimizer state), then
imported with cxrtool and compared on real radiographs (square, non-square, smaller than 256 px) and
real report sentences. OpenCV is a test-only dependency (the ``parity`` extra).
"""

from __future__ import annotations

import collections
import math
import os
import re
import sys
import tarfile
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cxrtool.errors import ModelError
from cxrtool.model import load_model_dir
from cxrtool.model.card import ImageSpec
from cxrtool.model.families.gloria import clean_text
from cxrtool.model.imports.gloria import import_gloria
from cxrtool.model.imports.safe_pickle import read_checkpoint
from cxrtool.model.transform import _cv2_inter_area, preprocess

from .checkpoint_layouts import DictConfig, omegaconf_lookalike
from .conftest import ARCHIVE

cv2 = pytest.importorskip("cv2", reason="OpenCV is GLoRIA's resize (test-only: pip install 'cxrtool[parity]')")

# GLoRIA's process_img calls torch.tensor() on a tensor (kept verbatim here).
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COS = 0.99999
# Real report sentences (Open-i / IU X-ray style), with the punctuation, numbering and casing
# GLoRIA's cleaning has to handle.
TEXTS = [
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "1. Small left pleural effusion. 2. No pneumothorax.\nStable cardiomegaly.",
    "Interval increase in bibasilar atelectasis; no focal consolidation.",
    "Right lower lobe opacity, concerning for pneumonia. Follow-up recommended.",
    "No acute cardiopulmonary abnormality. Degenerative changes of the thoracic spine.",
    "Large right-sided pneumothorax with mediastinal shift to the left.",
]
# Words the tiny vocabulary holds whole; every other word is spelled with "##" pieces (GLoRIA's
# aggregation loop sums those), so the tokenisation has both.
WHOLE = ["the", "heart", "is", "normal", "in", "size", "mediastinum", "lungs", "are", "clear", "small", "left",
         "pleural", "no", "pneumothorax", "stable", "interval", "increase", "focal", "right", "lower", "lobe",
         "opacity", "for", "acute", "of", "with", "shift", "to", "large", "changes", "spine"]
TINY_BERT = {"hidden_size": 768, "num_hidden_layers": 5, "num_attention_heads": 12, "intermediate_size": 256,
             "max_position_embeddings": 512, "type_vocab_size": 2}


# ------------------------------------------------------------------ GLoRIA, re-implemented from its code

try:
    from nltk.tokenize import RegexpTokenizer
except ImportError:  # nltk's RegexpTokenizer(pattern).tokenize is re.findall with these flags

    class RegexpTokenizer:
        def __init__(self, pattern):
            self._regexp = re.compile(pattern, re.UNICODE | re.MULTILINE | re.DOTALL)

        def tokenize(self, text):
            return self._regexp.findall(text)


class Identity(nn.Module):
    """cnn_backbones.Identity"""

    def forward(self, x):
        return x


class ImageEncoder(nn.Module):
    """vision_model.ImageEncoder with cnn_backbones.resnet_50 (cfg: embedding_dim 768)."""

    def __init__(self, output_dim=768):
        from torchvision import models as models_2d

        super().__init__()
        self.output_dim = output_dim
        model = models_2d.resnet50(weights=None)
        feature_dims = model.fc.in_features
        model.fc = Identity()
        self.model, self.feature_dim, self.interm_feature_dim = model, feature_dims, 1024
        self.global_embedder = nn.Linear(self.feature_dim, self.output_dim)
        self.local_embedder = nn.Conv2d(self.interm_feature_dim, self.output_dim, kernel_size=1, stride=1, padding=0,
                                        bias=False)
        self.pool = nn.AdaptiveAvgPool2d(output_size=(1, 1))

    def forward(self, x, get_local=False):
        global_ft, local_ft = self.resnet_forward(x, extract_features=True)
        if get_local:
            return global_ft, local_ft
        return global_ft

    def generate_embeddings(self, global_features, local_features):
        global_emb = self.global_embedder(global_features)
        local_emb = self.local_embedder(local_features)
        return global_emb, local_emb

    def resnet_forward(self, x, extract_features=False):
        x = nn.Upsample(size=(299, 299), mode="bilinear", align_corners=True)(x)
        x = self.model.conv1(x)
        x = self.model.bn1(x)
        x = self.model.relu(x)
        x = self.model.maxpool(x)
        x = self.model.layer1(x)
        x = self.model.layer2(x)
        x = self.model.layer3(x)
        local_features = x
        x = self.model.layer4(x)
        x = self.pool(x)
        x = x.view(x.size(0), -1)
        return x, local_features


class BertEncoder(nn.Module):
    """text_model.BertEncoder with the published config (last_n_layers 4, sum, agg_tokens, norm false)."""

    def __init__(self, config, tokenizer):
        from transformers import BertModel

        super().__init__()
        self.last_n_layers, self.aggregate_method, self.norm = 4, "sum", False
        self.embedding_dim, self.agg_tokens = 768, True
        config.output_hidden_states = True
        self.model = BertModel(config)  # AutoModel.from_pretrained(bert_type, output_hidden_states=True)
        self.tokenizer = tokenizer
        self.idxtoword = {v: k for k, v in self.tokenizer.get_vocab().items()}
        self.emb_global, self.emb_local = None, None

    def aggregate_tokens(self, embeddings, caption_ids):
        batch_size, num_layers, num_words, dim = embeddings.shape
        embeddings = embeddings.permute(0, 2, 1, 3)
        agg_embs_batch = []
        sentences = []
        for embs, caption_id in zip(embeddings, caption_ids, strict=True):
            agg_embs = []
            token_bank = []
            words = []
            word_bank = []
            for word_emb, word_id in zip(embs, caption_id, strict=True):
                word = self.idxtoword[word_id.item()]
                if word == "[SEP]":
                    new_emb = torch.stack(token_bank)
                    new_emb = new_emb.sum(axis=0)
                    agg_embs.append(new_emb)
                    words.append("".join(word_bank))
                    agg_embs.append(word_emb)
                    words.append(word)
                    break
                if not word.startswith("##"):
                    if len(word_bank) == 0:
                        token_bank.append(word_emb)
                        word_bank.append(word)
                    else:
                        new_emb = torch.stack(token_bank)
                        new_emb = new_emb.sum(axis=0)
                        agg_embs.append(new_emb)
                        words.append("".join(word_bank))
                        token_bank = [word_emb]
                        word_bank = [word]
                else:
                    if word.startswith("##"):
                        token_bank.append(word_emb)
                        word_bank.append(word[2:])
            agg_embs = torch.stack(agg_embs)
            padding_size = num_words - len(agg_embs)
            paddings = torch.zeros(padding_size, num_layers, dim)
            paddings = paddings.to(agg_embs.device)
            words = words + ["[PAD]"] * padding_size
            agg_embs_batch.append(torch.cat([agg_embs, paddings]))
            sentences.append(words)
        agg_embs_batch = torch.stack(agg_embs_batch)
        agg_embs_batch = agg_embs_batch.permute(0, 2, 1, 3)
        return agg_embs_batch, sentences

    def forward(self, ids, attn_mask, token_type):
        outputs = self.model(ids, attn_mask, token_type)
        all_embeddings = outputs[2]  # (last_hidden_state, pooler_output, hidden_states)
        embeddings = torch.stack(all_embeddings[-self.last_n_layers :])
        embeddings = embeddings.permute(1, 0, 2, 3)
        embeddings, sents = self.aggregate_tokens(embeddings, ids)
        sent_embeddings = embeddings.mean(axis=2)
        word_embeddings = embeddings.sum(axis=1)
        sent_embeddings = sent_embeddings.sum(axis=1)
        batch_dim, num_words, feat_dim = word_embeddings.shape
        word_embeddings = word_embeddings.view(batch_dim * num_words, feat_dim)
        word_embeddings = word_embeddings.view(batch_dim, num_words, self.embedding_dim)
        word_embeddings = word_embeddings.permute(0, 2, 1)
        return word_embeddings, sent_embeddings, sents


class GLoRIA(nn.Module):
    """gloria_model.GLoRIA: the parts inference uses (process_text, process_img, the two encoders)."""

    def __init__(self, config, tokenizer):
        super().__init__()
        self.text_encoder = BertEncoder(config, tokenizer)
        self.img_encoder = ImageEncoder()
        self.tokenizer = tokenizer
        self.ixtoword = {v: k for k, v in self.tokenizer.get_vocab().items()}
        self.word_num, self.imsize, self.crop_size = 97, 256, 224

    def text_encoder_forward(self, caption_ids, attention_mask, token_type_ids):
        return self.text_encoder(caption_ids, attention_mask, token_type_ids)

    def image_encoder_forward(self, imgs):
        img_feat_g, img_emb_l = self.img_encoder(imgs, get_local=True)
        img_emb_g, img_emb_l = self.img_encoder.generate_embeddings(img_feat_g, img_emb_l)
        return img_emb_l, img_emb_g

    @staticmethod
    def clean(t):
        """The string process_text hands the tokenizer (its loop, verbatim)."""
        t = t.replace("\n", " ")
        splitter = re.compile(r"[0-9]+\.")
        captions = splitter.split(t)
        captions = [point.split(".") for point in captions]
        captions = [sent for point in captions for sent in point]
        all_sents = []
        for t in captions:
            t = t.replace("\ufffd\ufffd", " ")
            tokenizer = RegexpTokenizer(r"\w+")
            tokens = tokenizer.tokenize(t.lower())
            if len(tokens) <= 1:
                continue
            included_tokens = []
            for t in tokens:
                t = t.encode("ascii", "ignore").decode("ascii")
                if len(t) > 0:
                    included_tokens.append(t)
            all_sents.append(" ".join(included_tokens))
        return " ".join(all_sents)

    def process_text(self, text, device):
        if type(text) is str:
            text = [text]
        processed_text_tensors = []
        for t in text:
            t = self.clean(t)
            text_tensors = self.tokenizer(t, return_tensors="pt", truncation=True, padding="max_length",
                                          max_length=self.word_num)
            processed_text_tensors.append(text_tensors)
        caption_ids = torch.stack([x["input_ids"] for x in processed_text_tensors])
        attention_mask = torch.stack([x["attention_mask"] for x in processed_text_tensors])
        token_type_ids = torch.stack([x["token_type_ids"] for x in processed_text_tensors])
        return {"caption_ids": caption_ids.squeeze(1).to(device),
                "attention_mask": attention_mask.squeeze(1).to(device),
                "token_type_ids": token_type_ids.squeeze(1).to(device)}

    def process_img(self, paths, device, interpolation=None):
        from torchvision import transforms

        transform = transforms.Compose([transforms.CenterCrop(self.crop_size), transforms.ToTensor(),
                                        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
        all_imgs = []
        for p in paths:
            x = cv2.imread(str(p), 0)
            x = self._resize_img(x, self.imsize, interpolation or cv2.INTER_AREA)
            img = Image.fromarray(x).convert("RGB")
            img = transform(img)
            all_imgs.append(torch.tensor(img))
        return torch.stack(all_imgs).to(device)

    def _resize_img(self, img, scale, interpolation):
        size = img.shape
        max_dim = max(size)
        max_ind = size.index(max_dim)
        if max_ind == 0:
            wpercent = scale / float(size[0])
            hsize = int(float(size[1]) * float(wpercent))
            desireable_size = (scale, hsize)
        else:
            hpercent = scale / float(size[1])
            wsize = int(float(size[0]) * float(hpercent))
            desireable_size = (wsize, scale)
        resized_img = cv2.resize(img, desireable_size[::-1], interpolation=interpolation)
        if max_ind == 0:
            pad_size = scale - resized_img.shape[1]
            left = int(np.floor(pad_size / 2))
            right = int(np.ceil(pad_size / 2))
            top = 0
            bottom = 0
        else:
            pad_size = scale - resized_img.shape[0]
            top = int(np.floor(pad_size / 2))
            bottom = int(np.ceil(pad_size / 2))
            left = 0
            right = 0
        return np.pad(resized_img, [(top, bottom), (left, right)], "constant", constant_values=0)


# --------------------------------------------------------------------- Lightning checkpoint look-alike


class ModelCheckpoint:
    pass


class EarlyStopping:
    pass


class _Payload:
    """Unpickling it would call ``call(*args)`` (the classic malicious __reduce__)."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@contextmanager
def lightning_lookalike():
    """While active, the callback classes pickle as pytorch_lightning.callbacks.*.* (PL 1.1's names)."""
    names = {"pytorch_lightning.callbacks.model_checkpoint": ModelCheckpoint,
             "pytorch_lightning.callbacks.early_stopping": EarlyStopping}
    added = ["pytorch_lightning", "pytorch_lightning.callbacks", *names]
    assert not any(n in sys.modules for n in added)
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    saved = {cls: cls.__module__ for cls in names.values()}
    for module, cls in names.items():
        setattr(sys.modules[module], cls.__name__, cls)
        cls.__module__ = module
    try:
        with omegaconf_lookalike():
            yield
    finally:
        for n in added:
            sys.modules.pop(n, None)
        for cls, module in saved.items():
            cls.__module__ = module


def _hparams(**override):
    """GLoRIA's configs/chexpert_pretrain_config.yaml as the nested DictConfig save_hyperparameters keeps."""
    text = {"bert_type": "emilyalsentzer/Bio_ClinicalBERT", "last_n_layers": 4, "aggregate_method": "sum",
            "norm": False, "embedding_dim": 768, "freeze_bert": False, "agg_tokens": True}
    cfg = {"experiment_name": "gloria_pretrain", "phase": "pretrain",
           "model": {"norm": False, "gloria": {"local_loss_weight": 1.0, "global_loss_weight": 1.0, "temp1": 4.0,
                                               "temp2": 5.0, "temp3": 10.0},
                     "vision": {"model_name": "resnet_50", "freeze_cnn": False, "pretrained": True}, "text": text},
           "data": {"dataset": "chexpert", "text": {"word_num": 97, "captions_per_image": 5, "full_report": False},
                    "image": {"imsize": 256}},
           "transforms": {"norm": "half", "random_crop": {"crop_size": 224}}}
    for path, value in override.items():
        *head, last = path.split("__")
        node = cfg
        for key in head:
            node = node[key]
        node[last] = value

    def wrap(d):
        return DictConfig({k: wrap(v) if isinstance(v, dict) else v for k, v in d.items()})

    return wrap(cfg)


def save_lightning_ckpt(path: Path, state: dict, *, extra: dict | None = None, hparams=None) -> Path:
    """torch.save of a PL 1.1 dump_checkpoint dict, globals named as the real file names them."""
    params = [torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.Adam(params, lr=5e-5, weight_decay=1e-6)
    params[0].grad = torch.ones(4)
    opt.step()
    with lightning_lookalike():
        hp = _hparams() if hparams is None else hparams
        ckpt = {"epoch": 13, "global_step": 41314, "pytorch-lightning_version": "1.1.4",
                "callbacks": {ModelCheckpoint: {"monitor": "val_loss", "best_model_score": torch.tensor(2.5),
                                                "best_model_path": "/data/ckpt/epoch=13.ckpt",
                                                "current_score": torch.tensor(2.5), "dirpath": "/data/ckpt"},
                              EarlyStopping: {"wait_count": 0, "stopped_epoch": 0, "best_score": torch.tensor(2.5),
                                              "patience": 10}},
                "optimizer_states": [opt.state_dict()],
                "lr_schedulers": [{"mode": "min", "factor": 0.5, "best": 2.5, "num_bad_epochs": 0,
                                   "_last_lr": [5e-5]}],
                "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                             "growth_interval": 2000, "_growth_tracker": 3},
                "state_dict": collections.OrderedDict(state), "hyper_parameters": hp, "hparams_type": type(hp),
                **(extra or {})}
        torch.save(ckpt, path)
    return path


# ------------------------------------------------------------------------------------------- fixtures


def _write_text_encoder(folder: Path) -> Path:
    """A Bio_ClinicalBERT-shaped --text-encoder folder: config.json (small BERT, hidden 768) + vocab.txt."""
    from transformers import BertConfig

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters),
             *sorted(set(WHOLE)), "##usion", "##ion", "##ing", "##al", "##ed", "##ity", "##ic", "##ia", ".", ",", ";",
             "-"]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertConfig(vocab_size=len(vocab), **TINY_BERT).to_json_file(folder / "config.json")
    return folder


def _randomise(ref: GLoRIA, gen: torch.Generator) -> None:
    """Seeded random weights, BatchNorm running statistics and affine parameters included."""
    for module in ref.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            module.weight.data.copy_(0.5 + 0.5 * torch.rand(n, generator=gen))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
            module.num_batches_tracked.fill_(1000)
    for p in ref.text_encoder.model.parameters():
        p.data.copy_(0.05 * torch.randn(p.shape, generator=gen) if p.ndim > 1 else p.data + 0.05 * torch.randn(
            p.shape, generator=gen))


def _images(root: Path) -> dict[str, Path]:
    """Name -> an 8-bit grey PNG of a real radiograph: square, non-square both ways, smaller than 256."""
    out = {}
    for png in sorted((ARCHIVE / "hannover").rglob("*.png"))[:1]:  # 640 x 599 (scale 2.5)
        out[f"hannover {Image.open(png).size}"] = png
    nih = Image.open(sorted((ARCHIVE / "nih").rglob("*.jpg"))[0]).convert("L")  # 512 x 512
    crops = {"nih 512x512 (2x2 fast path)": nih, "nih crop 512x400": nih.crop((0, 60, 512, 460)),
             "nih crop 361x512": nih.crop((75, 0, 436, 512)), "nih crop 180x240 (enlarged)": nih.crop((160, 130, 340,
                                                                                                          370))}
    for name, im in crops.items():
        path = root / (name.split(" (")[0].replace(" ", "_") + ".png")
        im.save(path)
        out[name] = path
    shared = sorted((SHARED / "misc_cxr_images").glob("0*.png"))[:1] if SHARED.is_dir() else []
    for png in shared:  # ../shared/data: a real 512 x 512 NIH PNG
        out[f"shared {png.name}"] = png
    return out


@pytest.fixture(scope="module")
def setup(module_tmp):
    """Upstream model with seeded random weights -> Lightning .ckpt -> cxrtool import (once per module)."""
    from transformers import AutoTokenizer, BertConfig

    root = module_tmp.mktemp("gloria")
    text_dir = _write_text_encoder(root / "Bio_ClinicalBERT")
    tokenizer = AutoTokenizer.from_pretrained(text_dir)  # GLoRIA: AutoTokenizer.from_pretrained(bert_type)
    assert len(tokenizer) == BertConfig.from_pretrained(text_dir).vocab_size and tokenizer.do_lower_case
    torch.manual_seed(int(os.environ.get("CXRTOOL_TEST_SEED", "0")))
    gen = torch.Generator().manual_seed(26 + int(os.environ.get("CXRTOOL_TEST_SEED", "0")))
    ref = GLoRIA(BertConfig.from_pretrained(text_dir), tokenizer).eval()
    _randomise(ref, gen)
    images = _images(root)
    with torch.no_grad():  # centre the random global embedder on real images, so that they differ by direction
        feats = ref.img_encoder(ref.process_img(list(images.values())[:2], "cpu"))
        ref.img_encoder.global_embedder.bias.copy_(-ref.img_encoder.global_embedder.weight @ feats.mean(0))
    state = {f"gloria.{k}": v for k, v in ref.state_dict().items()}
    # transformers 4.2.1 (GLoRIA's pin) saved BERT's position_ids buffer.
    state["gloria.text_encoder.model.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    ckpt = save_lightning_ckpt(root / "chexpert_resnet50.ckpt", state)
    report = import_gloria(ckpt, root / "model", text_encoder=str(text_dir))
    return {"ref": ref, "report": report, "model": load_model_dir(root / "model"), "ckpt": ckpt, "state": state,
            "text_dir": text_dir, "images": images, "root": root}


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------------------------------- parity


def test_image_embeddings_match_upstream_model_only_and_full_pipeline(setup):
    ref, model, images = setup["ref"], setup["model"], setup["images"]
    paths = list(images.values())
    upstream_pixels = ref.process_img(paths, "cpu")  # upstream's loader + transform
    ours_pixels = torch.stack([model.preprocess(p) for p in paths])  # cxrtool's decode + card rule
    # cxrtool's pixels are GLoRIA's, exactly (8-bit grey PNGs; normalised units, 1 grey level = 2/255).
    diff = (ours_pixels - upstream_pixels).abs().amax(dim=(1, 2, 3))
    print("\nGLoRIA max abs pixel difference (normalised units):", float(diff.max()))
    assert float(diff.max()) < 1e-6, dict(zip(images, diff.tolist(), strict=True))
    with torch.no_grad():
        upstream = ref.image_encoder_forward(upstream_pixels)[1].numpy()
    model_only = model.encode_pixels(upstream_pixels)  # the same tensor fed to both models
    full = model.encode_images(paths)  # from the files, through cxrtool's whole pipeline
    cos_model, cos_full = _cos(upstream, model_only), _cos(upstream, full)
    print("\nGLoRIA image cos (model-only / full pipeline):",
          {n: f"{a:.9f} / {b:.9f}" for n, a, b in zip(images, cos_model, cos_full, strict=True)})
    assert cos_model.min() >= COS and cos_full.min() >= COS
    # The comparison can fail: the images differ by direction, and a different resize is detected.
    others = _cos(full, np.roll(full, 1, axis=0))
    assert others.max() < 0.99, others
    with torch.no_grad():
        linear = ref.image_encoder_forward(ref.process_img(paths[:1], "cpu", interpolation=cv2.INTER_LINEAR))[1]
    assert _cos(linear.numpy(), full[:1])[0] < COS


def test_text_embeddings_match_upstream_token_loop(setup):
    ref, model = setup["ref"], setup["model"]
    batch = ref.process_text(TEXTS, "cpu")
    ours = model.tokenize(TEXTS)
    assert torch.equal(ours["input_ids"], batch["caption_ids"])
    assert torch.equal(ours["attention_mask"], batch["attention_mask"])
    assert any(ref.text_encoder.idxtoword[i].startswith("##") for i in batch["caption_ids"].flatten().tolist())
    with torch.no_grad():
        _, upstream, _ = ref.text_encoder_forward(batch["caption_ids"], batch["attention_mask"],
                                                  batch["token_type_ids"])
    got = model.encode_texts(TEXTS)
    cos = _cos(upstream.numpy(), got)
    print("\nGLoRIA text cos:", [f"{c:.9f}" for c in cos])
    assert cos.min() >= COS
    with torch.no_grad():  # the comparison can fail: the last layer alone is not GLoRIA's pooling
        out = model.text.bert(**ours, output_hidden_states=True)
        last_only = (out.last_hidden_state * ours["attention_mask"][..., None]).sum(1).numpy()
    assert _cos(upstream.numpy(), last_only).max() < COS
    assert _cos(got, np.roll(got, 1, axis=0)).max() < 0.99  # different reports point different ways
    # one text at a time, as GLoRIA's process_text tokenises them: the same vectors
    single = np.concatenate([model.encode_texts([t]) for t in TEXTS[:2]])
    np.testing.assert_allclose(single, got[:2], atol=1e-5)


def _openi_texts(limit: int = 40) -> list[str]:
    """Findings/impressions of real Open-i reports (../shared/data), when present."""
    tgz = SHARED / "openi_reports" / "NLMCXR_reports.tgz"
    if not tgz.is_file():
        return []
    out = []
    with tarfile.open(tgz) as tar:
        for member in tar:
            if not member.name.endswith(".xml"):
                continue
            xml = tar.extractfile(member).read().decode("utf-8", "replace")
            out += [m.strip() for m in re.findall(r'Label="(?:FINDINGS|IMPRESSION)">([^<]+)<', xml)]
            if len(out) >= limit:
                break
    return out


def test_text_cleaning_is_glorias_and_one_word_queries_are_kept():
    texts = [*TEXTS, *_openi_texts(), "Heart size normal.\ufffd\ufffdLungs clear. 3. Électrode  noted on  the chest.",
             "No\npneumothorax", "", "...", "1. 2. 3.", "Cardiomegaly.", "Effusion. Edema. No pneumothorax."]
    for text in texts:
        assert clean_text(text, keep_one_word=False) == GLoRIA.clean(text), text
        if GLoRIA.clean(text):
            assert clean_text(text) == GLoRIA.clean(text), text  # cxrtool differs only where upstream is empty
    assert GLoRIA.clean("Cardiomegaly.") == ""  # upstream: every one-word query is the empty text
    assert clean_text("Cardiomegaly.") == "cardiomegaly" and clean_text("Effusion. Edema.") == "effusion edema"
    assert clean_text("...") == ""


def test_one_word_queries_get_their_own_vectors(setup):
    model = setup["model"]
    v = model.encode_texts(["cardiomegaly", "pneumothorax", "Cardiomegaly."])
    assert _cos(v[:1], v[1:2])[0] < 0.999  # upstream would give both the [CLS][SEP] vector
    np.testing.assert_allclose(v[0], v[2], atol=1e-6)


# ------------------------------------------------------------------------------------- preprocessing


def _gloria_sizes(h: int, w: int, pad: int = 256) -> tuple[int, int]:
    if h >= w:
        return pad, max(1, int(float(w) * (pad / float(h))))
    return max(1, int(float(h) * (pad / float(w)))), pad


def test_inter_area_resize_is_opencvs_bit_for_bit():
    """cv2.resize(INTER_AREA) on uint8: general fractional scales, whole-number factors (2x2 SIMD
    rounding and others), enlargements (OpenCV's bilinear area mode) and GLoRIA's own sizes."""
    rng = np.random.default_rng(int(os.environ.get("CXRTOOL_TEST_SEED", "0")))
    cases = []
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(2, 700, 2))
        img = rng.integers(0, 256, (h, w), dtype=np.uint8)
        cases += [(img, *_gloria_sizes(h, w)), (img, int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))),
                  (img, int(rng.integers(1, 2 * h + 2)), int(rng.integers(1, 2 * w + 2)))]
    for fx, fy in ((2, 2), (3, 3), (4, 4), (2, 3), (1, 2), (5, 1)):
        h, w = fy * int(rng.integers(1, 150)), fx * int(rng.integers(1, 150))
        cases.append((rng.integers(0, 256, (h, w), dtype=np.uint8), h // fy, w // fx))
    for path in [*sorted((ARCHIVE / "hannover").rglob("*.png"))[:3], *sorted((ARCHIVE / "nih").rglob("*.jpg"))[:3]]:
        img = np.asarray(Image.open(path).convert("L"))
        for top, left in ((0, 0), (0, 111), (151, 0), (300, 350)):
            crop = np.ascontiguousarray(img[top:, left:])
            cases.append((crop, *_gloria_sizes(*crop.shape)))
    worst = 0
    for img, oh, ow in cases:
        ref = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_AREA)
        got = _cv2_inter_area(img, oh, ow)
        assert got.shape == ref.shape and got.dtype == np.uint8
        worst = max(worst, int(np.abs(got.astype(int) - ref.astype(int)).max()))
    print(f"\nINTER_AREA: {len(cases)} resizes, max abs difference from cv2 {cv2.__version__}: {worst}")
    assert worst == 0


def test_the_card_rule_is_process_img_on_odd_and_tiny_shapes(tmp_path):
    """The card rule alone (no model): random 8-bit images of many shapes vs _resize_img + CenterCrop."""
    spec = ImageSpec(timm_name="resnet50", resize="gloria_area_pad_crop", pad_size=256, input_size=224,
                     interpolation="area", mean=[0.5] * 3, std=[0.5] * 3)

    class Loader:  # GLoRIA's loader without the model
        imsize, crop_size = 256, 224
        process_img, _resize_img = GLoRIA.process_img, GLoRIA._resize_img

    ref = Loader()
    rng = np.random.default_rng(7)
    paths = []
    for i, (h, w) in enumerate(((256, 256), (257, 255), (255, 257), (100, 30), (30, 100), (1000, 13), (512, 512),
                                (768, 1024), (301, 299))):
        path = tmp_path / f"r{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(path)
        paths.append(path)
    upstream = ref.process_img(paths, "cpu")
    ours = torch.stack([preprocess(np.asarray(Image.open(p), dtype=np.float32) / 255.0, spec) for p in paths])
    assert float((ours - upstream).abs().max()) < 1e-6


# -------------------------------------------------------------------------------------------- the import


def test_the_import_reports_and_records_what_it_did(setup):
    report, model = setup["report"], setup["model"]
    card = model.card
    assert card.family == "gloria" and card.embed_dim == 768 and card.text.max_length == 97
    assert (card.image.resize, card.image.pad_size, card.image.input_size) == ("gloria_area_pad_crop", 256, 224)
    assert card.image.mean == card.image.std == [0.5, 0.5, 0.5] and card.image.in_channels == 3
    assert card.text.padding == "max_length" and card.scoring.logit_scale == 10.0
    assert report.epoch == 13 and report.fingerprint == card.fingerprint and report.format == "gloria"
    assert report.tensors == len(setup["state"]) - 4  # all but position_ids, local_embedder, BERT's pooler (2)
    assert report.dropped == ["gloria.text_encoder.model.embeddings.position_ids"]
    for entry in ("callbacks", "optimizer_states", "lr_schedulers", "native_amp_scaling_state", "hparams_type",
                  "state_dict: gloria.img_encoder.local_embedder.weight",
                  "state_dict: gloria.text_encoder.model.pooler.dense.weight"):
        assert entry in report.ignored, entry
    prov = card.provenance
    for key in ("name", "imported_from", "source_file", "source_sha256", "licence", "intended_use", "architecture",
                "preprocessing", "text", "left_out", "text_cleaning", "cxrtool_version"):
        assert prov.get(key), key
    assert "Apache-2.0" in prov["licence"] and "local" in prov["left_out"]
    assert not any(k.startswith("image.local") for k in model.state_dict())
    assert "pytorch_lightning" not in sys.modules and "omegaconf" not in sys.modules


def test_the_lightning_metadata_reads_as_inert_stand_ins(setup):
    ckpt = read_checkpoint(setup["ckpt"])
    assert [getattr(k, "foreign_name", "") for k in ckpt["callbacks"]] == [
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "pytorch_lightning.callbacks.early_stopping.EarlyStopping"]
    assert getattr(ckpt["hparams_type"], "foreign_name", "") == "omegaconf.dictconfig.DictConfig"
    assert "pytorch_lightning" not in sys.modules


def _expect_refusal(setup, tmp_path, state, needle, **kwargs):
    path = save_lightning_ckpt(tmp_path / "chexpert_resnet50.ckpt", state, **kwargs)
    with pytest.raises(ModelError) as info:
        import_gloria(path, tmp_path / "out", text_encoder=str(setup["text_dir"]))
    assert needle in str(info.value.reason), info.value.reason
    assert not (tmp_path / "out").exists()
    return info.value


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "text shape", "local shape"])
def test_a_checkpoint_that_is_not_exactly_glorias_is_refused_naming_the_key(setup, tmp_path, case):
    state = dict(setup["state"])
    key = {"missing": "gloria.img_encoder.global_embedder.bias", "extra": "gloria.img_encoder.extra.weight",
           "shape": "gloria.img_encoder.model.layer3.2.conv2.weight",
           "text shape": "gloria.text_encoder.model.encoder.layer.4.attention.self.key.weight",
           "local shape": "gloria.img_encoder.local_embedder.weight"}[case]
    if case == "missing":
        del state[key]
    elif case == "extra":
        state[key] = torch.zeros(3)
    else:
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    _expect_refusal(setup, tmp_path, state, key)


def test_a_resnet18_checkpoint_is_refused_in_one_line(setup, tmp_path):
    from torchvision.models import resnet18

    state = {f"gloria.img_encoder.model.{k}": v for k, v in resnet18(weights=None).state_dict().items()
             if not k.startswith("fc.")}
    state["gloria.img_encoder.global_embedder.weight"] = torch.zeros(768, 512)
    error = _expect_refusal(setup, tmp_path, state, "ResNet-18")
    assert "\n" not in error.reason and "broken" in error.reason


def test_a_configuration_cxrtool_does_not_implement_is_refused(setup, tmp_path):
    state = {"gloria.img_encoder.global_embedder.weight": torch.zeros(768, 2048)}
    _expect_refusal(setup, tmp_path, state, "model.text.last_n_layers", hparams=_hparams(model__text__last_n_layers=1))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(setup, tmp_path):
    marker = tmp_path / "MARKER"
    state = dict(setup["state"])
    evil = {"callbacks_extra": {"best": _Payload(os.system, (f"touch {marker}",))}}
    error = _expect_refusal(setup, tmp_path, state, "system", extra=evil)
    assert "nothing was run" in error.reason and not marker.exists()


def test_the_imported_directory_loads_and_embeds_through_the_library(setup):
    model = setup["model"]  # load_model_dir(out) in the fixture
    assert type(model).__name__ == "GLoRIAModel" and model.card.fingerprint == setup["report"].fingerprint
    v = model.encode_images(list(setup["images"].values())[:1])
    t = model.encode_texts(["small left pleural effusion"])
    assert v.shape == (1, 768) and t.shape == (1, 768)
    assert math.isclose(float(np.linalg.norm(v)), 1.0, rel_tol=1e-5)


class _Touching:
    """A 'Lightning class' whose construction has a visible effect."""

    def __init__(self, path):
        Path(path).touch()


def test_a_lightning_name_used_as_a_call_is_neutralised_even_where_lightning_is_installed(tmp_path):
    marker, path = tmp_path / "MARKER", tmp_path / "callbacks.ckpt"
    module = types.ModuleType("pytorch_lightning")
    module.Callback = _Touching
    saved, _Touching.__module__, _Touching.__qualname__ = _Touching.__module__, "pytorch_lightning", "Callback"
    sys.modules["pytorch_lightning"] = module
    try:
        torch.save({"callbacks": {"state": _Payload(_Touching, (str(marker),))}}, path)
        assert not marker.exists()
        got = read_checkpoint(path)  # "pytorch_lightning" is importable right now, and is still not called
        assert not marker.exists()
        assert got["callbacks"]["state"].args == (str(marker),)
        torch.load(path, weights_only=False)  # an unrestricted load does call it: the payload is live
        assert marker.exists()
    finally:
        sys.modules.pop("pytorch_lightning", None)
        _Touching.__module__, _Touching.__qualname__ = saved, "_Touching"
