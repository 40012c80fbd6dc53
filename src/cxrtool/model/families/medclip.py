"""The ``medclip`` family: MedCLIP (Wang et al., EMNLP 2022), ResNet-50 or Swin-T + Bio_ClinicalBERT.

The modules rebuild ``medclip.modeling_medclip`` (medclip 0.0.3) in plain PyTorch, under the
same names one level down (``image.model.*`` is upstream's ``vision_model.model.*``, ``text.bert.*``
its ``text_model.model.*``), so every tensor has one obvious source:

- image, ``timm_name`` "resnet50" (``MedCLIPVisionModel``): torchvision's ResNet-50 whose ``fc`` is
  the projection, ``Linear(2048, 512, bias=False)`` after the average pool;
- image, ``timm_name`` "swin_tiny" (``MedCLIPVisionModelViT``): transformers' ``SwinModel`` with
  the config of ``microsoft/swin-tiny-patch4-window7-224``, its ``pooler_output`` (final LayerNorm,
  mean over tokens) through ``projection_head``, ``Linear(768, 512, bias=False)``;
- text (``MedCLIPTextModel``): a BERT (Bio_ClinicalBERT) whose hidden states after layers 1, 2
  and the last are each averaged over the sequence, then averaged together and projected by
  ``projection_head``, ``Linear(768, 512, bias=False)``.

Both embeddings are L2-normalised. Upstream averages over *every* position of the padded batch,
pad tokens included, so its text vector depends on what it was batched with; here the average
runs over the real tokens only (the attention mask), which is upstream's result at batch size 1
(one unpadded text) and does not change with batching. Upstream feeds one grey channel and the
model repeats it to three; the card's preprocessing replicates it, which is the same input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cxrtool.errors import ModelError
from cxrtool.model.card import ModelCard
from cxrtool.model.families.seed import SeedEncoder, seed_family

RESNET50, SWIN_TINY = "resnet50", "swin_tiny"
HIDDEN_LAYERS = (1, 2, -1)  # MedCLIPTextModel: output['hidden_states'][1], [2] and [-1]
# microsoft/swin-tiny-patch4-window7-224 (the config MedCLIPVisionModelViT starts from).
SWIN_TINY_CONFIG: dict[str, Any] = {
    "patch_size": 4, "num_channels": 3, "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
    "window_size": 7, "mlp_ratio": 4.0, "qkv_bias": True, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "use_absolute_embeddings": False, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.1,
}


def swin_tiny_config(image_size: int) -> Any:
    """transformers ``SwinConfig`` of Swin-T at ``image_size``."""
    from transformers import SwinConfig

    return SwinConfig(image_size=image_size, **SWIN_TINY_CONFIG)


class MedCLIPResNet(nn.Module):
    """``MedCLIPVisionModel``: torchvision ResNet-50, ``fc`` = the bias-free projection."""

    def __init__(self, feature_dim: int, embed_dim: int) -> None:
        import torchvision

        super().__init__()
        self.model = torchvision.models.resnet50(weights=None)
        self.model.fc = nn.Linear(feature_dim, embed_dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


class MedCLIPSwin(nn.Module):
    """``MedCLIPVisionModelViT``: Swin-T ``pooler_output`` -> bias-free projection."""

    def __init__(self, image_size: int, feature_dim: int, embed_dim: int) -> None:
        from transformers import SwinModel

        super().__init__()
        self.model = SwinModel(swin_tiny_config(image_size))
        self.projection_head = nn.Linear(feature_dim, embed_dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.model(pixel_values=pixels).pooler_output)


class MedCLIPText(nn.Module):
    """``MedCLIPTextModel``: mean of hidden states 1, 2 and last (each averaged over the real
    tokens), bias-free projection."""

    def __init__(self, bert: nn.Module, feature_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.bert = bert
        self.projection_head = nn.Linear(feature_dim, embed_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = torch.stack([out.hidden_states[i] for i in HIDDEN_LAYERS], dim=1)  # N x 3 x L x D
        mask = attention_mask[:, None, :, None].to(hidden.dtype)
        per_layer = (hidden * mask).sum(2) / mask.sum(2).clamp(min=1.0)  # N x 3 x D
        return self.projection_head(per_layer.mean(1))


class MedCLIPEncoder(SeedEncoder):
    """MedCLIP behind the DualEncoder interface (512-d unit vectors for images and texts; the modules
    give the embeddings, SeedEncoder normalises them)."""


def build(card: ModelCard, bert: nn.Module, tokenizer: Any) -> MedCLIPEncoder:
    """MedCLIP's modules with random weights, as the card describes them."""
    spec = card.image
    if spec.timm_name == RESNET50:
        image: nn.Module = MedCLIPResNet(spec.feature_dim or 2048, card.embed_dim)
    elif spec.timm_name == SWIN_TINY:
        image = MedCLIPSwin(spec.input_size, spec.feature_dim or 768, card.embed_dim)
    else:
        raise ModelError(f"model card: MedCLIP image tower {spec.timm_name!r} is neither {RESNET50!r} nor "
                         f"{SWIN_TINY!r}")
    hidden = int(bert.config.hidden_size)
    if card.text.feature_dim and card.text.feature_dim != hidden:
        raise ModelError(f"model card: text feature_dim {card.text.feature_dim} but text/config.json has "
                         f"hidden_size {hidden}")
    return MedCLIPEncoder(card, image, MedCLIPText(bert, hidden, card.embed_dim), tokenizer)


FAMILY = seed_family("medclip", build)
