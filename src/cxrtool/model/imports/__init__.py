"""Import released checkpoints of other projects (CXR-CLIP, CheXzero, BioViL / BioViL-T, MedCLIP,
GLoRIA) as cxrtool model directories.

Each importer reads its file through :mod:`cxrtool.model.imports.safe_pickle` (no code in the file
runs), places every weight by name onto cxrtool's model core (:mod:`cxrtool.model.imports.common`
refuses any missing or unexpected key by name), writes the model directory with the format's
preprocessing contract, licence and provenance in the card, and reloads it strictly before reporting.
"""

from cxrtool.model.imports.biovil import import_biovil
from cxrtool.model.imports.chexzero import import_chexzero
from cxrtool.model.imports.common import ImportReport
from cxrtool.model.imports.cxr_clip import import_cxr_clip
from cxrtool.model.imports.gloria import import_gloria
from cxrtool.model.imports.medclip import import_medclip

__all__ = ["ImportReport", "import_biovil", "import_chexzero", "import_cxr_clip", "import_gloria", "import_medclip"]
