"""Contrastive training of the dual encoder from a study manifest (CLIP + CXR-CLIP's ICL/TCL)."""

from cxrtool.train.config import PRESETS, TrainConfig, parse_overrides, resolve_config
from cxrtool.train.loop import TrainResult, default_run_dir, train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "default_run_dir", "parse_overrides", "resolve_config", "train"]
