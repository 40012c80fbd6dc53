"""Data preparation: the study manifest, source adapters and the prompt bank."""

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

__all__ = ["MANIFEST_SCHEMA", "PrepareSummary", "PromptBank", "Study", "StudyImage", "manifest_stats",
           "prepare_chexpert", "prepare_csv", "prepare_dicom_folder", "prepare_mimic", "prepare_nih",
           "prepare_openi", "read_manifest", "write_manifest"]
