"""Write omegaconf-2.3-config.pt: a config saved the way CXR-CLIP's trainer saves it, made with real OmegaConf.

CXR-CLIP resolves its Hydra config, converts DictConfig nodes to dicts (convert_dictconfig_to_dict) and
torch.saves the result, so ListConfig values (with their DictConfig parents, metadata and nodes) stay
OmegaConf objects inside the checkpoint. Run once with omegaconf installed (not a cxrtool dependency):
    pip install --target /tmp/oc omegaconf==2.3.0 && PYTHONPATH=/tmp/oc python tests/data/make_omegaconf_fixture.py
"""

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

cfg = OmegaConf.create({
    "base": {"seed": 1234, "amp": True, "image_size": 224, "text_max_length": 256, "loss_best": "contrastive"},
    "transform": {"train": {"RandomResizedCrop": {"size": "${base.image_size}", "scale": [0.8, 1.1]}}},
    "model": {"name": "clip_custom", "temperature": 0.07, "image_encoder": {"name": "swin", "model_type": "swin"},
              "text_encoder": {"name": "emilyalsentzer/Bio_ClinicalBERT", "pooling": "eos"}},
    "data_train": {"mimic_cxr": {"data_path": "mimic_train.csv", "text_key": ["findings", "impression"]}},
})
OmegaConf.set_struct(cfg, True)
OmegaConf.resolve(cfg)


def convert_dictconfig_to_dict(c):
    return {k: convert_dictconfig_to_dict(v) for k, v in c.items()} if isinstance(c, DictConfig) else c


torch.save({"config": convert_dictconfig_to_dict(cfg), "epoch": 3, "train_loss": 0.5},
           Path(__file__).with_name("omegaconf-2.3-config.pt"))
