"""Data preparation: the study manifest, source adapters and the prompt bank."""

from typing import TYPE_CHECKING

from cxrtool.lazy import lazy_exports

if TYPE_CHECKING:  # the names as type checkers and editors see them
    from cxrtool.data.manifest import MANIFEST_SCHEMA, Study, StudyImage, read_manifest, write_manifest
    from cxrtool.data.prepare import (
        PrepareSummary,
        manifest_stats,
        prepare_chexpert,
        prepare_csv,
        prepare_dicom_folder,
        prepare_mimic,
        prepare_nih,
        prepare_openi,
    )
    from cxrtool.data.prompts import PromptBank

# Imported on first use: importing a light submodule must not import torch (cxrtool/lazy.py).
_EXPORTS = {
    "MANIFEST_SCHEMA": "cxrtool.data.manifest",
    "Study": "cxrtool.data.manifest",
    "StudyImage": "cxrtool.data.manifest",
    "read_manifest": "cxrtool.data.manifest",
    "write_manifest": "cxrtool.data.manifest",
    "PrepareSummary": "cxrtool.data.prepare",
    "manifest_stats": "cxrtool.data.prepare",
    "prepare_chexpert": "cxrtool.data.prepare",
    "prepare_csv": "cxrtool.data.prepare",
    "prepare_dicom_folder": "cxrtool.data.prepare",
    "prepare_mimic": "cxrtool.data.prepare",
    "prepare_nih": "cxrtool.data.prepare",
    "prepare_openi": "cxrtool.data.prepare",
    "PromptBank": "cxrtool.data.prompts",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["MANIFEST_SCHEMA", "PrepareSummary", "PromptBank", "Study", "StudyImage", "manifest_stats",
           "prepare_chexpert", "prepare_csv", "prepare_dicom_folder", "prepare_mimic", "prepare_nih",
           "prepare_openi", "read_manifest", "write_manifest"]
