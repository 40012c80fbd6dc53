"""Study, patient and view of a PNG/JPEG file from where it sits: the known research layouts.

A raster file has no header, so its identity comes from its path. Only layouts whose naming is
documented are trusted; anything else is one study per file, because a folder of a research set
is usually many unrelated patients (a flat NIH folder of 150 images is 150 studies, not one):

==================  ==========================================  ==========================================
rule                path (archive-relative, any prefix)          study / patient / view
==================  ==========================================  ==========================================
mimic-cxr           ``pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg``   sNNNNNNNN / NNNNNNNN / -
chexpert            ``patientNNNNN/studyN/viewN_frontal.jpg``    patientNNNNN/studyN / NNNNN / FRONTAL|LATERAL
nih                 ``NNNNNNNN_NNN.png`` (any folder)            NNNNNNNN_NNN (one study per follow-up) / NNNNNNNN / -
file                anything else                               the file's path / none / -
==================  ==========================================  ==========================================

Study keys are the datasets' own ids where they are unique within the dataset (MIMIC study_id,
NIH Image Index, CheXpert's patient/study folder), so they read as the dataset's label tables
name them, and two copies of one image are one study. Patient ids from names are returned raw
here and pseudonymised by the caller exactly as DICOM PatientIDs are (:mod:`cxrtool.privacy`);
they are never stored raw. A manifest (``embed --manifest``) overrides all of this where it has
the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

MIMIC = re.compile(r"(?:^|/)p\d{2}/p(\d{8})/(s\d{8})/[^/]+$")
CHEXPERT = re.compile(r"(?:^|/)patient(\d{5,})/(study\d+)/view\d+_(frontal|lateral)\.[a-z]+$", re.IGNORECASE)
NIH = re.compile(r"(?:^|/)(\d{8})_(\d{3})\.[a-z]+$", re.IGNORECASE)


@dataclass(frozen=True)
class RasterIdentity:
    study: str
    patient: str = ""  # raw id from the name: pseudonymise before storing
    view: str = ""
    rule: str = "file"


def raster_identity(rel: str) -> RasterIdentity:
    """The identity of an archive-relative raster path under the first rule that matches."""
    if m := MIMIC.search(rel):
        return RasterIdentity(m.group(2), m.group(1), "", "mimic-cxr")
    if m := CHEXPERT.search(rel):
        return RasterIdentity(f"patient{m.group(1)}/{m.group(2)}", m.group(1), m.group(3).upper(), "chexpert")
    if m := NIH.search(rel):
        return RasterIdentity(f"{m.group(1)}_{m.group(2)}", m.group(1), "", "nih")
    return RasterIdentity(str(PurePosixPath(rel).with_suffix("")), "", "", "file")
