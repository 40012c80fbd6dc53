"""The ``gloria`` family: GLoRIA (Huang et al., ICCV 2021), ResNet-50 + Bio_ClinicalBERT, global embeddings.

The modules rebuild GLoRIA's own code (github.com/marshuang80/gloria @ 416466a) in plain PyTorch,
under upstream's names one level down (``image.model.*`` is upstream's ``img_encoder.model.*``,
``image.global_embedder.*`` its ``img_encoder.global_embedder.*``, ``text.bert.*`` its
``text_encoder.model.*``):

- image (``vision_model.ImageEncoder`` with ``cnn_backbones.resnet_50``): the model input (224 px,
  see the card's ``gloria_area_pad_crop`` rule) is upsampled to 299 x 299 (bilinear,
  ``align_corners=True``: ``resnet_forward``'s first line), run through torchvision's ResNet-50
  (``fc`` = identity) to the average-pooled ``layer4`` features (2048), then ``global_embedder``,
  ``Linear(2048, 768)``. GLoRIA compares global embeddings by cosine similarity
  (``get_global_similarities``), so they are L2-normalised here.
- text (``text_model.BertEncoder`` with the published config: ``last_n_layers`` 4,
  ``aggregate_method`` "sum", ``agg_tokens`` true, ``norm`` false, no projection): upstream stacks
  the hidden states of the last 4 BERT layers, sums each word's word-pieces into one vector, keeps
  [CLS] .. the first [SEP], zero-pads back to the padded length L (97), averages over the L positions
  and sums over the 4 layers. The word grouping does not change that sum, so the global vector is
  ``sum over the last 4 layers of (sum of the hidden states from [CLS] to the first [SEP]) / L``,
  computed here in that closed form (the parity test checks it against upstream's token loop),
  then L2-normalised.
- texts are cleaned as ``GLoRIA.process_text`` does (:func:`clean_text`) and tokenised with
  ``padding="max_length"``, ``truncation=True``, ``max_length`` 97.

**One-word queries.** Upstream drops every sentence of at most one word, so a query such as
"cardiomegaly" becomes the empty text ([CLS] [SEP]) and every one-word query gets the same vector.
cxrtool keeps upstream's cleaning whenever it leaves any text; only when it would leave nothing
are the one-word sentences kept (``"Cardiomegaly."`` -> ``"cardiomegaly"``). The card's
provenance records this (``text_cleaning``).

GLoRIA's local (word-region) branch, ``img_encoder.local_embedder`` (a 1x1 conv on ``layer3``), is
not part of this family: search, classification and evaluation use the global embeddings only.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrtool.errors import ModelError
from cxrtool.model.card import ModelCard
from cxrtool.model.families.seed import SeedEncoder, seed_family

RESNET50 = "resnet50"  # the only backbone whose released checkpoint works upstream (resnet_18's is broken)
TRUNK_DIM = 2048  # ResNet-50 pooled layer4 features
UPSAMPLE = 299  # vision_model.ImageEncoder.resnet_forward: nn.Upsample(size=(299, 299), bilinear, align_corners)
LAST_N_LAYERS = 4  # configs/chexpert_pretrain_config.yaml model.text.last_n_layers
_NUMBERED = re.compile(r"[0-9]+\.")  # process_text: splitter = re.compile("[0-9]+\.")
_WORD = re.compile(r"\w+")  # nltk RegexpTokenizer(r"\w+").tokenize == re.findall(r"\w+", ...)


def _sentences(text: str, min_words: int) -> list[str]:
    """``GLoRIA.process_text`` on one text, keeping sentences of at least ``min_words`` words (upstream: 2)."""
    text = text.replace("\n", " ")
    pieces = [sent for point in _NUMBERED.split(text) for sent in point.split(".")]
    kept = []
    for sent in pieces:
        tokens = _WORD.findall(sent.replace("\ufffd\ufffd", " ").lower())
        if len(tokens) < min_words:
            continue
        ascii_tokens = [t.encode("ascii", "ignore").decode("ascii") for t in tokens]
        kept.append(" ".join(t for t in ascii_tokens if t))
    return kept


def clean_text(text: str, keep_one_word: bool = True) -> str:
    """GLoRIA's text cleaning: newlines to spaces, split at ``N.`` and ``.``, ``\\w+`` words lower-cased,
    sentences of one word dropped, non-ASCII characters removed, sentences joined by spaces.

    ``keep_one_word``: when upstream's cleaning leaves nothing (a one-word query), keep the one-word
    sentences instead of returning "" (see the module docstring); ``False`` is upstream exactly."""
    cleaned = " ".join(_sentences(str(text), 2))
    if not cleaned and keep_one_word:
        cleaned = " ".join(_sentences(str(text), 1))
    return cleaned


class GLoRIAImage(nn.Module):
    """``ImageEncoder`` up to the global embedding: upsample to 299, ResNet-50, average pool, Linear."""

    def __init__(self, embed_dim: int) -> None:
        import torchvision

        super().__init__()
        self.model = torchvision.models.resnet50(weights=None)
        self.model.fc = nn.Identity()  # cnn_backbones.resnet_50: fc = Identity()
        self.global_embedder = nn.Linear(TRUNK_DIM, embed_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(pixels, size=(UPSAMPLE, UPSAMPLE), mode="bilinear", align_corners=True)
        r = self.model
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        return self.global_embedder(torch.flatten(r.avgpool(x), 1))


class GLoRIAText(nn.Module):
    """``BertEncoder``'s sentence embedding: the last 4 layers' hidden states summed over [CLS]..[SEP], / L."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        layers = torch.stack(out.hidden_states[-LAST_N_LAYERS:]).sum(0)  # B x L x H
        # The real tokens are exactly [CLS] .. the first [SEP] (GLoRIA's cleaned text holds no "[SEP]").
        keep = attention_mask.unsqueeze(-1).to(layers.dtype)
        return (layers * keep).sum(1) / input_ids.shape[1]


class GLoRIAModel(SeedEncoder):
    """GLoRIA's global embeddings behind the DualEncoder interface (768-d unit vectors, cosine scoring)."""

    def clean(self, text: str) -> str:
        """``process_text``'s cleaning (:func:`clean_text`); the card pads every text to max_length (97)."""
        return clean_text(text)


def build(card: ModelCard, bert: nn.Module, tokenizer: Any) -> GLoRIAModel:
    """The untrained modules the card describes (weights are placed afterwards, by name)."""
    if card.image.timm_name != RESNET50:
        raise ModelError(f"model card: gloria image architecture {card.image.timm_name!r} is unknown; use {RESNET50}")
    hidden = int(bert.config.hidden_size)
    if hidden != card.embed_dim:
        raise ModelError(f"model card: GLoRIA's text embedding is BERT's hidden state ({hidden}), but embed_dim is "
                         f"{card.embed_dim}")
    if int(bert.config.num_hidden_layers) < LAST_N_LAYERS:
        raise ModelError(f"model card: GLoRIA pools the last {LAST_N_LAYERS} BERT layers; text/ has "
                         f"{bert.config.num_hidden_layers}")
    return GLoRIAModel(card, GLoRIAImage(card.embed_dim), GLoRIAText(bert), tokenizer)


FAMILY = seed_family("gloria", build)
