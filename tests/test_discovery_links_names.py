"""No file lost without a word: directory symlinks followed (loops reported, never followed twice,
never a hang), any byte-string file name embedded with a lossless path, decoder warnings kept off
the console. Real files and real symlinks; the real `cxrtool` command where the console matters."""

from __future__ import annotations

import os
import shutil
from collections import Counter

from cxrtool.embed.errors_log import read_errors
from cxrtool.embed.pipeline import embed_archive
from cxrtool.embed.shards import image_id, read_shard_metadata
from cxrtool.io.discover import archive_path, discover_archive

from .conftest import ARCHIVE
from .test_integrity import cli


def test_directory_symlinks_are_followed_and_loops_reported_once(tmp_path, tiny_model):
    outside = tmp_path / "data" / "nih_images"  # research data linked into the archive
    shutil.copytree(ARCHIVE / "nih" / "00001993", outside / "00001993")
    archive = tmp_path / "archive"
    shutil.copytree(ARCHIVE / "hannover" / "case01", archive / "hannover" / "case01")
    (archive / "nih").symlink_to(outside, target_is_directory=True)
    (archive / "hannover" / "case01" / "loop").symlink_to(archive, target_is_directory=True)  # back up: a loop
    (archive / "again").symlink_to(archive / "hannover", target_is_directory=True)  # a second way in
    files = list(discover_archive(archive))
    linked = [f.rel for f in files if f.rel.startswith("nih/") and not f.problem]
    assert linked and len(linked) == len(list(outside.rglob("*.jpg")))
    problems = {f.rel: f.problem for f in files if f.problem}
    assert "a loop" in problems["hannover/case01/loop"] and "second way" in problems["again"]
    s = embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, progress=False)
    rows = read_shard_metadata(tmp_path / "ws" / "shards", ["path"]).column("path").to_pylist()
    assert len(rows) == len(set(rows)) == s.embedded == len(linked) + len(list((ARCHIVE / "hannover/case01").iterdir()))
    skipped = {r["path"]: r for r in read_errors(tmp_path / "ws") if r["kind"] == "skipped"}
    assert set(skipped) == {"hannover/case01/loop", "again"} and s.failed == 0


def test_a_file_name_that_is_not_utf8_is_embedded_losslessly(tmp_path, tiny_model):
    archive = tmp_path / "archive"
    archive.mkdir()
    png = next((ARCHIVE / "hannover").rglob("*.png"))
    odd = os.fsdecode(b"caf\xe9-latin1.png")  # a Latin-1 byte: not valid UTF-8
    shutil.copy(png, archive / odd)
    shutil.copy(png, archive / "plain.png")
    s = embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, progress=False)
    assert s.embedded == 2 and s.failed == 0
    paths = read_shard_metadata(tmp_path / "ws" / "shards", ["id", "path"]).to_pylist()
    stored = next(p for p in paths if p["path"] != "plain.png")
    assert stored["path"] == "caf%E9-latin1.png" and stored["id"] == image_id(stored["path"])
    assert archive_path(archive, stored["path"]) == archive / odd and archive_path(archive, "plain.png").is_file()
    assert embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, progress=False).embedded == 0  # resumes


def test_decoder_warnings_stay_off_the_console(tmp_path, tiny_model_dir):
    archive = tmp_path / "archive"
    archive.mkdir()
    data = (ARCHIVE / "pacs/PAT0004/STUDY0001/SERIES07/IM000001").read_bytes()
    (archive / "IM000001").write_bytes(data[:4000])  # pixels cut short: pydicom warns while reading it
    shutil.copy(next((ARCHIVE / "hannover").rglob("*.png")), archive / "ok.png")
    proc = cli("embed", str(archive), "--workspace", str(tmp_path / "ws"), "--model", str(tiny_model_dir))
    assert proc.returncode == 1  # the cut file failed, with its reason in errors.jsonl
    assert "WARNING" not in proc.stderr and "pydicom" not in proc.stderr.lower(), proc.stderr
    assert Counter(r["kind"] for r in read_errors(tmp_path / "ws")) == {"error": 1}


def test_a_dicom_without_preamble_is_found_and_decoded_like_the_original(tmp_path, tiny_model):
    """Older modalities and some toolkits write no 128-byte preamble and no 'DICM': found by content
    (its first bytes are a DICOM element), decoded to the same pixels, embedded to the same vector."""
    import numpy as np

    from cxrtool.embed.shards import read_shard_vectors
    from cxrtool.io.decode import decode_image

    archive = tmp_path / "archive"
    archive.mkdir()
    original = ARCHIVE / "pacs/PAT0001/STUDY0001/SERIES01/IM000001"
    data = original.read_bytes()
    assert data[128:132] == b"DICM"
    shutil.copy(original, archive / "WITH_PREAMBLE")
    (archive / "BARE").write_bytes(data[132:])  # file meta onwards, no preamble, no prefix
    (archive / "NOTES").write_bytes(b"\x02\x00 not a dicom, just bytes")  # not an element: not taken for one
    kinds = {f.rel: f.kind for f in discover_archive(archive)}
    assert kinds == {"BARE": "dicom", "WITH_PREAMBLE": "dicom"}
    assert np.array_equal(decode_image(archive / "BARE").pixels, decode_image(original).pixels)
    both = embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, progress=False)
    # the same SOPInstanceUID twice: one embedded, the other skipped as its duplicate, by header
    assert both.embedded == 1 and both.failed == 0 and sum(both.skipped.values()) == 1
    (archive / "WITH_PREAMBLE").unlink()
    alone = embed_archive(archive, tmp_path / "ws2", tiny_model, workers=0, progress=False)
    assert alone.embedded == 1 and alone.failed == 0
    bare = read_shard_vectors(tmp_path / "ws2" / "shards")[1][0]
    full = tiny_model.encode_images([original])[0]
    assert float(bare @ full) > 0.99999
