"""Import released checkpoints of other projects (CXR-CLIP, CheXzero) as cxrtool model directories.

Each importer reads its file through :mod:`cxrtool.model.imports.safe_pickle` (no code in the file
runs), places every weight by name onto cxrtool's model core (:mod:`cxrtool.model.imports.common`
refuses any missing or unexpected key by name), writes the model directory with the format's
preprocessing contract and provenance in the card, and reloads it strictly before reporting.
"""

from cxrtool.model.imports.chexzero import import_chexzero
from cxrtool.model.imports.common import ImportReport
from cxrtool.model.imports.cxr_clip import import_cxr_clip

__all__ = ["ImportReport", "import_chexzero", "import_cxr_clip"]
