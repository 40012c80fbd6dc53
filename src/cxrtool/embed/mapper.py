"""The mapper: a work item's bytes -> its shard row and vector.

Decoding (:class:`ImageDecoder`) is a small picklable object, so a distributor can run it in other
processes: each file is read once, hashed, header-checked and decoded from those same bytes.
Screening and encoding (:class:`ImageMapper`) run where the model is. Every file that is not
embedded comes back as data, ``(kind, stage, reason)``, so one bad file never stops a run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cxrtool.embed.manifest_join import ManifestJoin
from cxrtool.embed.shards import content_hash, image_id
from cxrtool.errors import DecodeError, NotAnImageError
from cxrtool.io.classify import HeaderFilter
from cxrtool.io.decode import decode_image
from cxrtool.io.dicom_header import read_dicom_header
from cxrtool.io.dicomweb import RemoteReadError
from cxrtool.io.discover import ArchiveFile
from cxrtool.io.layouts import raster_identity
from cxrtool.model.card import ImageSpec
from cxrtool.model.dual import DualEncoder
from cxrtool.model.transform import preprocess
from cxrtool.privacy import pseudonym

# (preprocessed tensor or None, shard row or {"path"}, None or (kind, stage, reason))
Decoded = tuple[torch.Tensor | None, dict[str, Any], tuple[str, str, str] | None]


def image_record(f: ArchiveFile, meta: dict, shape: tuple[int, ...], digest: str, identity: dict | None = None,
                 pseudonym_key: str | None = None, entry: dict | None = None) -> dict:
    """Shard row metadata for one image, from PHI-safe header fields (+ pseudonyms); ``digest`` is
    the :func:`~cxrtool.embed.shards.content_hash` of the file's bytes. Without a StudyInstanceUID
    (PNG/JPEG), study, patient and view come from the path's layout (:mod:`cxrtool.io.layouts`);
    ``study_rule`` says which rule gave the study (the writer counts it; it is not a column). A
    manifest ``entry`` (:mod:`cxrtool.embed.manifest_join`) gives study, patient, view and labels first."""
    study, view, rule = meta.get("StudyInstanceUID"), str(meta.get("ViewPosition", "") or ""), "dicom"
    identity = dict(identity or {})
    labels = None
    if entry is not None:
        study, rule, labels = entry["study_key"] or study, "manifest" if entry["study_key"] else rule, entry["labels"]
        view = entry["view"] or view
        identity["patient_key"] = entry["patient_key"] or identity.get("patient_key")
    if not study:
        found = raster_identity(f.rel)
        study, view, rule = found.study, view or found.view, found.rule
        if found.patient and pseudonym_key and not identity.get("patient_key"):
            identity["patient_key"] = pseudonym(found.patient, pseudonym_key)
    return {
        "id": image_id(f.rel),
        "path": f.rel,
        "study_key": study,
        "study_rule": rule,
        "series_uid": meta.get("SeriesInstanceUID"),
        "sop_uid": meta.get("SOPInstanceUID"),
        "view": view.upper(),
        "modality": meta.get("Modality", "") or "",
        "body_part": str(meta.get("BodyPartExamined", "") or "").upper(),
        "file_format": f.kind,
        "transfer_syntax": meta.get("TransferSyntaxUID"),
        "rows": int(meta.get("Rows") or shape[0]),  # the stored size, not the reduced decode's
        "columns": int(meta.get("Columns") or shape[1]),
        "content_hash": digest,
        "labels": labels or None,
        **identity,
    }


class ImageDecoder:
    """One file -> :data:`Decoded`: one read of its bytes, content hash, header check, decode at the
    resolution the model needs + the card's eval transform."""

    def __init__(self, spec: ImageSpec, header_filter: HeaderFilter, pseudonym_key: str | None = None,
                 keep_study_date: bool = False, manifest: ManifestJoin | None = None) -> None:
        self.spec = spec
        self.filter = header_filter
        self.pseudonym_key = pseudonym_key
        self.keep_study_date = keep_study_date
        self.manifest = manifest

    def __call__(self, f: ArchiveFile) -> Decoded:
        try:
            data = f.read_bytes()
        except RemoteReadError as exc:  # the server's answer for this instance (HTTP status)
            return None, {"path": f.rel}, ("error", "read", f"cannot retrieve the instance ({exc.reason})")
        except OSError as exc:  # reason without the file name: absolute paths stay out of outputs
            return None, {"path": f.rel}, ("error", "read",
                                           f"cannot read the file ({exc.strerror or type(exc).__name__})")
        entry = None
        if self.manifest is not None:
            entry = self.manifest.lookup(f.rel, f.path)
            if entry is None:
                reason = f"not in the manifest {self.manifest.name}"
                return None, {"path": f.rel}, ("skipped", "discover", reason)
        identity = None
        stage = "header"
        try:
            digest = content_hash(data)
            if f.kind == "dicom":
                header = read_dicom_header(f.path, self.pseudonym_key, self.keep_study_date, data=data)
                identity = {k: header.get(k) for k in ("patient_key", "accession_key", "study_date")}
                reason = self.filter.skip_reason(header)
                if reason:
                    kind = "not_image" if reason.startswith("not an image") else "skipped"
                    return None, {"path": f.rel}, (kind, stage, reason)
            stage = "decode"
            image = decode_image(f.path, min_side=self.spec.decode_side, data=data)
            record = image_record(f, image.meta, image.pixels.shape, digest, identity, self.pseudonym_key, entry)
            return preprocess(image.pixels, self.spec), record, None
        except NotAnImageError as exc:
            return None, {"path": f.rel}, ("not_image", stage, exc.short_reason)
        except DecodeError as exc:
            return None, {"path": f.rel}, ("error", stage, exc.short_reason)
        except Exception as exc:  # a decoder bug must not end a million-file run
            return None, {"path": f.rel}, ("error", stage, f"{type(exc).__name__}: {exc}")


class ImageMapper:
    """Decoded images -> vectors with the model; the same DICOM instance exported twice is embedded
    once (``seen_sops``: SOPInstanceUID -> the path that has it, read back from the shards)."""

    def __init__(self, model: DualEncoder, decoder: ImageDecoder, seen_sops: dict[str, str] | None = None) -> None:
        self.model = model
        self.decode = decoder
        self.seen_sops = dict(seen_sops or {})

    def screen(self, batch: list[Decoded]) -> tuple[list[Decoded], list[Decoded]]:
        """(to encode, not embedded): decode failures, plus duplicates of an instance already seen."""
        good, failed = [], []
        for x, rec, err in batch:
            sop = rec.get("sop_uid") if err is None else None
            if sop and sop in self.seen_sops:
                failed.append((None, rec, ("skipped", "header",
                                           f"duplicate SOPInstanceUID (same instance as {self.seen_sops[sop]})")))
            elif err is None:
                if sop:
                    self.seen_sops[sop] = rec["path"]
                good.append((x, rec, None))
            else:
                failed.append((x, rec, err))
        return good, failed

    def encode(self, good: list[Decoded]) -> np.ndarray:
        return self.model.encode_pixels(torch.stack([x for x, _, _ in good]))
