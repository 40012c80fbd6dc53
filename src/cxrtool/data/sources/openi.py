"""OpenI / Indiana University chest X-ray reports: ``NLMCXR_reports.tgz`` (or its extracted XMLs).

Each ``ecgen-radiology/N.xml`` is one study: ``AbstractText`` elements labelled COMPARISON,
INDICATION, FINDINGS, IMPRESSION; ``MeSH/major`` and ``MeSH/minor`` headings (mapped to labels by
``mesh_labels.json``: positives only, "normal" = No Finding); ``parentImage id=...`` linking the
images (``NLMCXR_png/<id>.png`` in the image release). Views come from the DICOM metadata table
(``nlmcxr_dicom_metadata.csv.gz``, column View Position) when it is given. Sides of findings come
from the findings and impression text (``data/laterality.py``).
"""

from __future__ import annotations

import csv
import json
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from cxrtool.data.laterality import sides_for_study
from cxrtool.data.manifest import Study, StudyImage
from cxrtool.data.prompts import PromptBank
from cxrtool.data.sections import clean_text
from cxrtool.data.sources.common import Reject, hashed_split, open_text
from cxrtool.errors import ManifestError

MESH_PATH = Path(__file__).resolve().parent.parent / "mesh_labels.json"


def _xml_documents(source: Path) -> Iterator[tuple[str, bytes]]:
    if source.is_dir():
        for path in sorted(source.rglob("*.xml")):
            yield path.name, path.read_bytes()
        return
    try:
        with tarfile.open(source) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if member.isfile() and member.name.endswith(".xml"):
                    yield Path(member.name).name, tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as exc:
        raise ManifestError(f"{source}: cannot read the OpenI archive ({exc})") from None


def mesh_to_labels(headings: list[str], mapping: dict[str, str]) -> dict[str, int]:
    labels: dict[str, int] = {}
    for heading in headings:
        parts = [p.strip() for p in heading.split("/")]
        head = parts[0]
        for key in [head, *(f"{head}/{q}" for q in parts[1:])]:
            if key in mapping:
                labels[mapping[key]] = 1
    if len(labels) > 1:
        labels.pop("No Finding", None)
    return labels


def _metadata_id(image_id: str) -> str:
    """Report XMLs name images 'CXR1_1_IM-0001-3001'; the DICOM table 'CXR1_IM-0001-3001'."""
    return re.sub(r"^(CXR\d+)_\d+_", r"\1_", image_id)


def _views(metadata: Path | None) -> dict[str, str]:
    if metadata is None:
        return {}
    with open_text(metadata) as fh:
        return {row["imageid"]: (row.get("View Position") or "").strip().upper() for row in csv.DictReader(fh)}


def read_openi_studies(source: str | Path, image_root: str | Path | None = None, metadata: str | Path | None = None,
                       validate_fraction: float = 0.1, test_fraction: float = 0.0, bank: PromptBank | None = None,
                       rejects: list[Reject] | None = None) -> list[Study]:
    source = Path(source)
    if not source.exists():
        raise ManifestError(f"{source}: not found")
    rejects = [] if rejects is None else rejects
    bank = bank or PromptBank.load()
    mapping = json.loads(MESH_PATH.read_text())["map"]
    views = _views(Path(metadata) if metadata else None)
    root = Path(image_root) if image_root else source.parent / "NLMCXR_png"
    studies = []
    for name, data in _xml_documents(source):
        try:
            doc = ET.fromstring(data)
        except ET.ParseError as exc:
            rejects.append(Reject(name, f"XML parse error: {exc}", "dropped"))
            continue
        uid = doc.find("uId")
        key = uid.get("id") if uid is not None else Path(name).stem
        sections = {(a.get("Label") or "").lower(): clean_text(a.text or "") for a in doc.iter("AbstractText")}
        findings, impression = sections.get("findings") or None, sections.get("impression") or None
        headings = [e.text.strip() for e in doc.iter() if e.tag in ("major", "minor") and e.text]
        labels = mesh_to_labels(headings, mapping)
        images = [StudyImage(str(root / f"{img.get('id')}.png"), views.get(_metadata_id(img.get("id")), ""))
                  for img in doc.iter("parentImage")]
        report = " ".join(f"{k.upper()}: {v}" for k, v in sections.items() if v) or None
        texts = [t for t in (findings, impression) if t]
        sides = sides_for_study(labels, text=" ".join(texts))
        text = max(texts, key=len) if texts else (bank.to_text(labels, sides=sides) if labels else "")
        study = Study(f"openi-{key}", f"openi-{key}", hashed_split(key, validate_fraction, test_fraction), "openi",
                      images, findings, impression, report, labels, text, sides)
        if not images:
            rejects.append(Reject(name, "no linked images", "kept", study.study_key))
        if not texts:
            rejects.append(Reject(name, "empty report (no findings or impression)", "kept", study.study_key))
        studies.append(study)
    return studies
