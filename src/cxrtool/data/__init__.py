"""Data preparation: the study manifest, source adapters and the prompt bank."""

from cxrtool.data.manifest import MANIFEST_SCHEMA, Study, StudyImage, read_manifest, write_manifest
from cxrtool.data.prepare import PrepareSummary, prepare_csv
from cxrtool.data.prompts import PromptBank

__all__ = ["MANIFEST_SCHEMA", "PrepareSummary", "PromptBank", "Study", "StudyImage", "prepare_csv",
           "read_manifest", "write_manifest"]
