"""What an evaluation reads: images (or their vectors) with labels, patient, split, text, attributes.

Two inputs give the same :class:`EvalSet`:

* a study manifest (``cxrtool prepare``): one row per image of each study; labels, sides, patient,
  split and ``text`` come from the study, ``view`` from the image; optional extra Parquet columns
  ``sex`` and ``age`` (which the manifest schema does not define) are read when present;
* a workspace's shards (``cxrtool embed``) plus a labels CSV joined on the archive-relative
  ``path``: label columns hold 1/0/-1/blank; optional ``patient_id``, ``split``, ``text`` (or
  ``report``), ``sex``, ``age``, ``view`` columns, and ``bbox_json`` (radiologist boxes: sides).

Labels: 1 present, 0 absent, -1 uncertain, NaN not mentioned; names are mapped to the prompt
bank's (``effusion`` -> ``Pleural Effusion``), two columns naming one label merged (1 > -1 > 0).
Sides: per label, the patient's side of the finding (left / right / bilateral, '' unknown).
Image vectors are cached per vector id (model fingerprint + embedding mode) under a cache folder,
keyed by path, size and modification time, so a re-run embeds only what changed.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cxrtool.data.laterality import frontal_view, parse_bbox_json, sides_for_study
from cxrtool.data.manifest import merge_label, read_manifest
from cxrtool.data.prompts import PromptBank
from cxrtool.embed.shards import read_shard_metadata, read_shard_vectors
from cxrtool.errors import CxrError, ManifestError, WorkspaceError
from cxrtool.evaluate.subgroups import age_band, normalise_sex
from cxrtool.model.dual import DualEncoder
from cxrtool.workspace import check_same_model

RESERVED_COLUMNS = {"path", "patient_id", "patient", "split", "text", "report", "sex", "age", "view", "study_key",
                    "bbox_json"}


@dataclass
class EvalSet:
    """Image-level rows; ``vectors`` is filled by :func:`embed_eval_set` (or read from shards)."""

    keys: list[str]
    paths: list[str]
    patients: np.ndarray
    splits: np.ndarray
    labels: dict[str, np.ndarray]
    texts: list[str]
    attributes: dict[str, list[str]] = field(default_factory=dict)
    vectors: np.ndarray | None = None
    vector_id: str = ""  # the vector id (model fingerprint + embedding mode) of ``vectors``
    sides: dict[str, np.ndarray] = field(default_factory=dict)  # label -> 'left'/'right'/'bilateral'/'' per row

    @property
    def fingerprint(self) -> str:
        """Old name of :attr:`vector_id`, kept for callers written before the rename."""
        return self.vector_id

    @fingerprint.setter
    def fingerprint(self, value: str) -> None:
        self.vector_id = value

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, mask: np.ndarray) -> EvalSet:
        idx = np.flatnonzero(mask)
        return EvalSet([self.keys[i] for i in idx], [self.paths[i] for i in idx], self.patients[idx],
                       self.splits[idx], {k: v[idx] for k, v in self.labels.items()}, [self.texts[i] for i in idx],
                       {k: [v[i] for i in idx] for k, v in self.attributes.items()},
                       None if self.vectors is None else self.vectors[idx], self.vector_id,
                       {k: v[idx] for k, v in self.sides.items()})


def _label_matrix(rows: list[dict[str, int]], bank: PromptBank) -> dict[str, np.ndarray]:
    merged = []
    for labels in rows:
        canon: dict[str, int] = {}
        for name, value in labels.items():
            c = bank.canonical(name)
            canon[c] = merge_label(canon.get(c), int(value))
        merged.append(canon)
    names = sorted({k for m in merged for k in m})
    return {n: np.array([m.get(n, np.nan) for m in merged], dtype=np.float64) for n in names}


def _side_matrix(rows: list[dict[str, str]], bank: PromptBank) -> dict[str, np.ndarray]:
    canon = [{bank.canonical(k): v for k, v in r.items()} for r in rows]
    names = sorted({k for c in canon for k in c})
    return {n: np.array([c.get(n, "") for c in canon], dtype=object) for n in names}


def eval_set_from_manifest(path: str | Path, bank: PromptBank | None = None) -> EvalSet:
    """Every image of every study in the manifest, with the study's labels and text."""
    bank = bank or PromptBank.load()
    studies = read_manifest(path)
    extra = {}
    names = pq.read_schema(path).names
    wanted = [c for c in ("sex", "age") if c in names]
    if wanted:
        table = pq.read_table(path, columns=["study_key", *wanted]).to_pylist()
        extra = {r["study_key"]: r for r in table}
    keys, paths, patients, splits, labels, texts, sex, age, view = [], [], [], [], [], [], [], [], []
    sides = []
    for s in studies:
        for image in s.images:
            keys.append(f"{s.study_key}/{Path(image.path).name}")
            paths.append(image.path)
            patients.append(s.patient_key)
            splits.append(s.split)
            labels.append(s.labels)
            sides.append(s.sides)
            texts.append(s.text or s.impression or s.findings or s.report or "")
            sex.append(normalise_sex(extra.get(s.study_key, {}).get("sex")))
            age.append(age_band(extra.get(s.study_key, {}).get("age")))
            view.append((image.view or "").upper())
    if not keys:
        raise ManifestError(f"{path}: the manifest lists no images")
    return EvalSet(keys, paths, np.array(patients, dtype=object), np.array(splits, dtype=object),
                   _label_matrix(labels, bank), texts, {"sex": sex, "age_band": age, "view": view},
                   sides=_side_matrix(sides, bank))


def _cell(value: str | None) -> int | None:
    v = (value or "").strip()
    if v == "":
        return None
    try:
        return int(float(v))
    except ValueError:
        return None


def eval_set_from_shards(workspace: str | Path, labels_csv: str | Path, bank: PromptBank | None = None) -> EvalSet:
    """Shard vectors joined to a labels CSV on the archive-relative path (rows without labels dropped)."""
    bank = bank or PromptBank.load()
    shards = Path(workspace) / "shards" if (Path(workspace) / "shards").is_dir() else Path(workspace)
    meta = read_shard_metadata(shards, ["id", "path", "view"]).to_pylist()
    ids, vectors, vector_id = read_shard_vectors(shards)
    if not meta:
        raise WorkspaceError(f"{workspace}: no shards", "run `cxrtool embed ARCHIVE` first")
    by_id = {int(i): n for n, i in enumerate(ids)}
    try:
        with open(labels_csv, newline="") as fh:
            reader = csv.DictReader(fh)
            header, rows = list(reader.fieldnames or []), list(reader)
    except OSError as exc:
        raise ManifestError(f"{labels_csv}: cannot read ({exc.strerror})") from None
    if "path" not in header:
        raise ManifestError(f"{labels_csv}: needs a 'path' column (archive-relative, as in the shards)")
    label_cols = [c for c in header if c.lower() not in RESERVED_COLUMNS
                  and all((r.get(c) or "").strip() in ("", "0", "1", "-1", "0.0", "1.0", "-1.0") for r in rows)]
    table = {r["path"]: r for r in rows}
    keys, pats, splits, labels, texts, sex, age, view, vec_rows = [], [], [], [], [], [], [], [], []
    sides = []
    for m in meta:
        r = table.get(m["path"])
        if r is None:
            continue
        keys.append(m["path"])
        pats.append(r.get("patient_id") or r.get("patient") or m["path"])
        splits.append(r.get("split") or "test")
        labels.append({c: v for c in label_cols if (v := _cell(r.get(c))) is not None})
        texts.append(r.get("text") or r.get("report") or "")
        sex.append(normalise_sex(r.get("sex")))
        age.append(age_band(r.get("age")))
        view.append((r.get("view") or m.get("view") or "").upper())
        vec_rows.append(by_id[int(m["id"])])
        try:
            boxes = parse_bbox_json(r.get("bbox_json")) if frontal_view(view[-1]) else []
        except ValueError as exc:
            raise ManifestError(f"{labels_csv}: {m['path']}: {exc}", "fix or empty that bbox_json cell") from None
        canon = {bank.canonical(k): v for k, v in labels[-1].items()}
        sides.append(sides_for_study(canon, boxes, r.get("report") or r.get("text")))
    if not keys:
        raise ManifestError(f"{labels_csv}: no 'path' matches a shard row", "paths must be archive-relative")
    return EvalSet(keys, list(keys), np.array(pats, dtype=object), np.array(splits, dtype=object),
                   _label_matrix(labels, bank), texts, {"sex": sex, "age_band": age, "view": view},
                   vectors[vec_rows], vector_id, _side_matrix(sides, bank))


def _file_key(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}|missing"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def embed_eval_set(model: DualEncoder, es: EvalSet, cache_dir: Path | None = None, batch_size: int = 32,
                   progress: Callable[[int], None] | None = None) -> list[tuple[str, str]]:
    """Fill ``es.vectors`` (reusing cached vectors); returns (path, reason) for images that failed to decode
    (their rows are removed from ``es``)."""
    if es.vectors is not None:
        # shards or a model that record no vector id leave nothing to compare
        check_same_model(model.card, es.vector_id if es.vector_id and model.card.vector_id else None,
                         "the shards were embedded", "pass the --model used by `cxrtool embed`, or re-embed")
        return []
    vector_id = model.card.vector_id  # one cache file per vector id (weights and embedding mode)
    cache_file = cache_dir / f"image-vectors-{model.card.vector_tag}.npz" if (cache_dir and vector_id) else None
    cached: dict[str, np.ndarray] = {}
    if cache_file and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            if z["vectors"].ndim == 2 and z["vectors"].shape[1] == model.card.output_dim:
                cached = dict(zip(z["keys"].tolist(), z["vectors"], strict=True))
    file_keys = [_file_key(p) for p in es.paths]
    todo = [i for i, k in enumerate(file_keys) if k not in cached]
    failed: list[tuple[str, str]] = []
    for start in range(0, len(todo), batch_size):
        chunk, tensors, ok = todo[start : start + batch_size], [], []
        for i in chunk:
            try:
                tensors.append(model.preprocess(es.paths[i]))
                ok.append(i)
            except CxrError as exc:
                failed.append((es.paths[i], exc.reason))
        if tensors:
            import torch

            for i, v in zip(ok, model.encode_pixels(torch.stack(tensors)), strict=True):
                cached[file_keys[i]] = v
        if progress:
            progress(len(chunk))
    if cache_file and todo:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.stem + ".tmp.npz")
        keys = sorted(cached)
        np.savez(tmp, keys=np.array(keys), vectors=np.stack([cached[k] for k in keys]))
        os.replace(tmp, cache_file)
    good = np.array([k in cached for k in file_keys], dtype=bool)
    vectors = np.stack([cached[k] for k, g in zip(file_keys, good, strict=True) if g]) if good.any() else None
    if not good.all():
        es.__dict__.update(es.subset(good).__dict__)
    es.vectors = vectors
    es.vector_id = vector_id
    return failed
