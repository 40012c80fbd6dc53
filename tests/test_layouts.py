"""Study, patient and view of PNG/JPEG archives from their layout, on real NIH images laid out as
the real datasets are: a flat NIH folder, a MIMIC-CXR-JPG tree, a CheXpert tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrtool.embed.pipeline import embed_archive
from cxrtool.embed.shards import read_shard_metadata
from cxrtool.index import Filters, Index, build_index
from cxrtool.io.layouts import raster_identity
from cxrtool.privacy import pseudonym, resolve_key

from .conftest import ARCHIVE

NIH_IMAGES = ARCHIVE / "nih"  # 148 real NIH ChestX-ray14 images, NNNNNNNN_NNN.jpg in folders of their own


@pytest.mark.parametrize("rel, study, patient, view, rule", [
    ("files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg", "s50414267", "10000032", "", "mimic-cxr"),
    ("CheXpert-v1.0/train/patient00005/study2/view2_lateral.jpg", "patient00005/study2", "00005", "LATERAL",
     "chexpert"),
    ("images_001/00000013_005.png", "00000013_005", "00000013", "", "nih"),
    ("00000013_005.png", "00000013_005", "00000013", "", "nih"),
    ("site-a/scans/chest.png", "site-a/scans/chest", "", "", "file"),
])
def test_known_layouts_and_the_rule_for_the_rest(rel, study, patient, view, rule):
    got = raster_identity(rel)
    assert (got.study, got.patient, got.view, got.rule) == (study, patient, view, rule)


def real_images(n: int) -> list[Path]:
    return sorted(NIH_IMAGES.rglob("*.jpg"), key=lambda p: p.name)[:n]


def test_a_flat_nih_folder_is_one_study_per_file_with_patients_from_names(tmp_path, tiny_model):
    flat = tmp_path / "nih_flat"
    flat.mkdir()
    images = real_images(40)
    for img in images:
        shutil.copy(img, flat / img.name)
    s = embed_archive(flat, tmp_path / "ws", tiny_model, workers=0, progress=False)
    assert s.embedded == 40 and s.study_rules == {"nih": 40}
    meta = read_shard_metadata(tmp_path / "ws" / "shards").to_pylist()
    assert len({m["study_key"] for m in meta}) == 40  # not one "study" for the folder
    key = resolve_key(None)
    expected = {img.stem: pseudonym(img.stem.split("_")[0], key) for img in images}
    assert {Path(m["path"]).stem: m["patient_key"] for m in meta} == expected
    raw = {img.stem.split("_")[0] for img in images}
    assert not raw & {m["patient_key"] for m in meta}  # never the raw id
    build_index(tmp_path / "ws")
    index = Index.open(tmp_path / "ws", model=tiny_model)
    hits = index.search(vector=index.store.vectors(np.array([0])), k=40, per_study=True, dedupe=None)
    assert len(hits) == 40 and all(h.views_in_study == 1 for h in hits)
    patient = images[0].stem.split("_")[0]
    same = [img for img in images if img.stem.startswith(patient)]
    mine = index.search(vector=index.store.vectors(np.array([0])), k=40, dedupe=None,
                        filters=Filters(patient_keys=(pseudonym(patient, key),)))
    assert len(mine) == len(same)


def test_mimic_and_chexpert_trees_give_one_study_per_study_folder(tmp_path, tiny_model):
    images = real_images(6)
    archive = tmp_path / "archive"
    mimic = [archive / "files/p10/p10000032/s50414267/a.jpg", archive / "files/p10/p10000032/s50414267/b.jpg",
             archive / "files/p10/p10000032/s53189527/c.jpg"]
    chexpert = [archive / "train/patient00001/study1/view1_frontal.jpg",
                archive / "train/patient00001/study1/view2_lateral.jpg",
                archive / "train/patient00002/study1/view1_frontal.jpg"]
    for src, dst in zip(images, mimic + chexpert, strict=True):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    s = embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, progress=False)
    assert s.study_rules == {"mimic-cxr": 3, "chexpert": 3}
    meta = {m["path"]: m for m in read_shard_metadata(tmp_path / "ws" / "shards").to_pylist()}
    studies = {p: m["study_key"] for p, m in meta.items()}
    assert studies["files/p10/p10000032/s50414267/a.jpg"] == studies["files/p10/p10000032/s50414267/b.jpg"]
    assert len(set(studies.values())) == 4  # two MIMIC studies, two CheXpert (patient00001/study1, 00002/study1)
    assert meta["train/patient00001/study1/view2_lateral.jpg"]["view"] == "LATERAL"
    assert len({m["patient_key"] for m in meta.values()}) == 3
    build_index(tmp_path / "ws")
    index = Index.open(tmp_path / "ws", model=tiny_model)
    lateral = index.search(vector=index.store.vectors(np.array([0])), k=6, dedupe=None,
                           filters=Filters(views=("LATERAL",)))
    assert [h.path for h in lateral] == ["train/patient00001/study1/view2_lateral.jpg"]


def test_a_csv_manifest_joins_studies_patients_views_labels_and_reports_both_gaps(tmp_path, tiny_model):
    images = real_images(8)
    archive = tmp_path / "flat"
    archive.mkdir()
    for img in images[:7]:  # the 8th is listed in the manifest but not in the archive
        shutil.copy(img, archive / img.name)
    shutil.copy(images[0], archive / "stray_not_listed.jpg")  # a file the manifest lacks
    manifest = tmp_path / "labels.csv"
    lines = ["path,study,patient_id,view,effusion,cardiomegaly"]
    for i, img in enumerate(images):
        lines.append(f"{img.name},visit-{i // 2},P{i // 4},{'PA' if i % 2 else 'AP'},{i % 2},{1 - i % 2}")
    manifest.write_text("\n".join(lines) + "\n")
    s = embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, manifest=manifest, progress=False)
    assert s.embedded == 7 and s.study_rules == {"manifest": 7}
    assert s.skipped == {"not in the manifest labels.csv": 1} and s.failed == 1
    assert s.failures[0]["path"] == images[7].name and "no such file in the archive" in s.failures[0]["reason"]
    meta = {m["path"]: m for m in read_shard_metadata(tmp_path / "ws" / "shards").to_pylist()}
    first = meta[images[0].name]
    assert first["study_key"] == "visit-0" and first["view"] == "AP"
    assert dict(first["labels"]) == {"effusion": 0, "cardiomegaly": 1}
    assert first["patient_key"] == pseudonym("P0", resolve_key(None))  # pseudonymised like a PatientID
    assert len({m["study_key"] for m in meta.values()}) == 4
    again = embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, manifest=manifest, progress=False)
    assert again.embedded == 0 and again.failed == 0  # the missing file is reported once, not on every run
    from cxrtool.embed.errors_log import read_errors

    assert sum(r["path"] == images[7].name for r in read_errors(tmp_path / "ws")) == 1


def test_a_prepare_manifest_joins_by_absolute_path(tmp_path, tiny_model):
    from cxrtool.data.manifest import Study, StudyImage, write_manifest

    archive = tmp_path / "a" / "images"  # a different folder layout than the manifest's names suggest
    archive.mkdir(parents=True)
    images = []
    for i, img in enumerate(real_images(4)):
        images.append(archive / f"renamed_{i}.jpg")  # no NIH name: only the absolute path can join these
        shutil.copy(img, images[-1])
    studies = [Study("nih-study-a", "147", "train", "nih-chestxray14",
                     [StudyImage(str(images[0]), "PA"), StudyImage(str(images[1]), "LL")], labels={"Effusion": 1}),
               Study("nih-study-b", "pt-already-keyed", "test", "nih-chestxray14", [StudyImage(str(images[2]), "AP")])]
    write_manifest(studies, tmp_path / "m.parquet")
    images = [Path("images") / p.name for p in images]  # as the shards name them (archive-relative)
    s = embed_archive(tmp_path / "a", tmp_path / "ws", tiny_model, workers=0, manifest=tmp_path / "m.parquet",
                      progress=False)
    assert s.embedded == 3 and s.skipped == {"not in the manifest m.parquet": 1}  # images[3] is not listed
    meta = {m["path"]: m for m in read_shard_metadata(tmp_path / "ws" / "shards").to_pylist()}
    second, third, first = (meta[p.as_posix()] for p in (images[1], images[2], images[0]))
    assert second["study_key"] == "nih-study-a" and second["view"] == "LL" and dict(second["labels"]) == {"Effusion": 1}
    assert third["patient_key"] == "pt-already-keyed"
    assert first["patient_key"] == pseudonym("147", resolve_key(None))
