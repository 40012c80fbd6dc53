"""The ``biovil`` family: Microsoft's BioViL and BioViL-T (hi-ml-multimodal), single-image path.

The modules are hi-ml-multimodal's own architecture rebuilt in plain PyTorch, with hi-ml's module
names, so a released state dict places onto them key for key (under ``image.`` / ``text.``):

- image (``card.image.timm_name`` "resnet50" = BioViL, "resnet50_multi_image" = BioViL-T):
  ``encoder.encoder`` is torchvision's ResNet-50 run up to ``layer4`` (hi-ml's ``ResNetHIML``; no
  average pool, no ``fc``). BioViL-T adds ``encoder.backbone_to_vit`` (1x1 conv 2048 -> 256, no bias)
  and concatenates ``encoder.missing_previous_emb`` (1x256x1x1, repeated over the grid) behind it: 512
  channels, exactly what ``MultiImageEncoder`` does when no prior image is given (its temporal
  ``vit_pooler`` runs only with a prior image, so it is not part of this module). ``projector.model``
  is hi-ml's ``MLP(use_1x1_convs=True)``: 1x1 conv (no bias), BatchNorm, ReLU, 1x1 conv, applied to
  every patch; the global embedding is the mean over the patch grid of the projected patches
  (``ImageModel.forward_post_encoder``), then L2 (``ImageInferenceEngine.get_projected_global_embedding``).
- text: transformers' ``BertModel`` (CXR-BERT's BERT; hi-ml's ``CXRBertModel`` is a
  ``BertForMaskedLM`` whose ``bert`` it is) and CXR-BERT's ``cls_projection_head`` (Linear 768 ->
  128, exact GELU, LayerNorm(eps 1e-12), Linear 128 -> 128) on the last hidden state's [CLS]
  vector, then L2 (``CXRBertModel.get_projected_text_embeddings``).
- texts are cleaned as hi-ml's ``TextInput.tokenize_input_prompts`` does: trailing ``!``, ``?``
  and ``.`` are stripped, then BERT tokenisation padded to the longest text in the batch. hi-ml
  refuses texts longer than 512 tokens; cxrtool truncates them at 512 (the card says so).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrtool.errors import ModelError
from cxrtool.model.card import ModelCard
from cxrtool.model.families.seed import SeedEncoder, seed_family

SINGLE, MULTI = "resnet50", "resnet50_multi_image"  # hi-ml's ImageEncoderType values
TRUNK_DIM = 2048  # ResNet-50 layer4 channels
VIT_DIM = 256  # MultiImageEncoder's output_dim (backbone_to_vit / missing_previous_emb)
STRIP = "!?."  # TextInput.tokenize_input_prompts: prompt.rstrip("!?.")


class _Trunk(nn.Module):
    """hi-ml's ImageEncoder / MultiImageEncoder without a prior image: the patch grid it projects."""

    def __init__(self, multi_image: bool) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.encoder = resnet50(weights=None)
        del self.encoder.fc  # ResNetHIML never calls it (the released files carry it; the importer ignores it)
        self.multi_image = multi_image
        if multi_image:
            self.backbone_to_vit = nn.Conv2d(TRUNK_DIM, VIT_DIM, kernel_size=1, bias=False)
            self.missing_previous_emb = nn.Parameter(torch.zeros(1, VIT_DIM, 1, 1))

    @property
    def out_dim(self) -> int:
        return 2 * VIT_DIM if self.multi_image else TRUNK_DIM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.encoder
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        if not self.multi_image:
            return x
        patch = self.backbone_to_vit(x)
        missing = self.missing_previous_emb.expand(patch.shape[0], -1, patch.shape[2], patch.shape[3])
        return torch.cat([patch, missing.to(patch.dtype)], dim=1)


class _Projector(nn.Module):
    """hi-ml's ``MLP(input_dim, output_dim, hidden_dim, use_1x1_convs=True)``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(in_dim, hidden, kernel_size=1, bias=False), nn.BatchNorm2d(hidden),
                                   nn.ReLU(inplace=True), nn.Conv2d(hidden, out_dim, kernel_size=1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class BioViLImage(nn.Module):
    """Image tower: trunk patch grid -> per-patch projection -> spatial mean (unnormalised)."""

    def __init__(self, arch: str, joint_dim: int) -> None:
        super().__init__()
        if arch not in (SINGLE, MULTI):
            raise ModelError(f"model card: biovil image architecture {arch!r} is unknown; use {SINGLE} (BioViL) or "
                             f"{MULTI} (BioViL-T)")
        self.encoder = _Trunk(arch == MULTI)
        self.projector = _Projector(self.encoder.out_dim, joint_dim, joint_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(pixels)).mean(dim=(2, 3))


class BertProjectionHead(nn.Module):
    """CXR-BERT's ``cls_projection_head`` (``modelling_cxrbert.BertProjectionHead``)."""

    def __init__(self, hidden: int, projection: int) -> None:
        super().__init__()
        self.dense_to_hidden = nn.Linear(hidden, projection)
        self.LayerNorm = nn.LayerNorm(projection, eps=1e-12)
        self.dense_to_output = nn.Linear(projection, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_to_output(self.LayerNorm(F.gelu(self.dense_to_hidden(x))))


class BioViLText(nn.Module):
    """Text tower: ``bert`` (transformers BertModel, no pooler) + ``cls_projection_head`` on [CLS]."""

    def __init__(self, bert: nn.Module, joint_dim: int) -> None:
        super().__init__()
        self.bert = bert
        self.cls_projection_head = BertProjectionHead(int(bert.config.hidden_size), joint_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.cls_projection_head(hidden[:, 0])


class BioViLModel(SeedEncoder):
    """BioViL / BioViL-T behind the DualEncoder interface (128-d unit vectors, cosine scoring)."""

    def clean(self, text: str) -> str:
        """hi-ml's first step: strip trailing ``!?.`` (then BERT tokenisation padded to the longest text,
        cut at the card's max_length, 512, where hi-ml would refuse)."""
        return text.rstrip(STRIP)


def build(card: ModelCard, bert: nn.Module, tokenizer: Any) -> BioViLModel:
    """The untrained modules the card describes (weights are placed afterwards, by name)."""
    image = BioViLImage(card.image.timm_name, card.embed_dim)
    text = BioViLText(bert, card.embed_dim)
    return BioViLModel(card, image, text, tokenizer)


FAMILY = seed_family("biovil", build)
