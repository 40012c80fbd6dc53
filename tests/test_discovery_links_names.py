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


def _mixed_archive(tmp_path):
    """Real images beside everything else a real archive folder holds."""
    archive = tmp_path / "archive"
    shutil.copytree(ARCHIVE / "hannover" / "case01", archive / "case01")
    shutil.copy(ARCHIVE / "pacs/PAT0001/STUDY0001/SERIES01/IM000001", archive / "IM000001")  # DICOM, no extension
    (archive / "README.txt").write_text("exported 2026-12-01\n")
    (archive / "labels.csv").write_text("path,label\ncase01/x.png,0\n")
    (archive / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (archive / ".git").mkdir()
    (archive / ".git" / "config").write_text("[core]\n")
    (archive / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a link to nothing
    os.mkfifo(archive / "pipe")  # opening it to sniff for DICM would wait forever
    return archive


def test_every_file_ends_embedded_skipped_or_failed_and_validate_agrees(tmp_path, tiny_model):
    from cxrtool.embed.validate import archive_entries, validate_workspace

    archive = _mixed_archive(tmp_path)
    s = embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, progress=False)
    rows = {r["path"]: r for r in read_errors(tmp_path / "ws")}
    embedded = set(read_shard_metadata(tmp_path / "ws" / "shards", ["path"]).column("path").to_pylist())
    assert embedded == {"IM000001", next(p.relative_to(archive).as_posix() for p in archive.rglob("*.png")
                                         if not p.is_symlink())}
    assert {p: (r["kind"], r["reason"].split(" (")[0]) for p, r in rows.items()} == {
        "README.txt": ("not_image", "not an image"), "labels.csv": ("not_image", "not an image"),
        ".DS_Store": ("skipped", "hidden file"), ".git": ("skipped", "hidden folder"),
        "gone.png": ("error", "cannot read the file"), "pipe": ("skipped", "not a regular file")}
    assert archive_entries(archive) == embedded | set(rows)  # every entry, exactly one row each
    assert s.embedded == 2 and s.not_images == 2 and s.failed == 1 and s.found == 8 and s.other_files == 5
    report = validate_workspace(archive, tmp_path / "ws")
    assert report.ok and report.files == 8, report
    again = embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, progress=False)
    assert again.already_done == 8 and again.embedded == 0 and len(read_errors(tmp_path / "ws")) == 6


def test_validate_walks_the_archive_itself_and_finds_what_discovery_missed(tmp_path, tiny_model, monkeypatch):
    """A discovery blind spot (simulated: one real PNG dropped from discovery's list) is reported by
    validate as missing, because validate does not ask discovery what the archive holds."""
    import cxrtool.embed.readers as readers
    from cxrtool.embed.validate import validate_workspace

    archive = tmp_path / "archive"
    shutil.copytree(ARCHIVE / "hannover", archive)
    blind = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*.png"))[3]
    real = readers.discover_archive
    monkeypatch.setattr(readers, "discover_archive", lambda root, **kw: (f for f in real(root, **kw) if f.rel != blind))
    s = embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, progress=False)
    assert s.embedded == 7 and s.failed == 0
    report = validate_workspace(archive, tmp_path / "ws")
    assert not report.ok and report.missing == [blind]


def test_an_archive_of_other_files_only_says_no_images(tmp_path, tiny_model_dir):
    archive = tmp_path / "notes"
    archive.mkdir()
    (archive / "README.txt").write_text("nothing here\n")
    proc = cli("embed", str(archive), "--workspace", str(tmp_path / "ws"), "--model", str(tiny_model_dir))
    assert proc.returncode == 3 and "no DICOM, PNG or JPEG files found" in proc.stdout, (proc.stdout, proc.stderr)
    assert "1 not images" in proc.stdout


def test_a_link_to_a_pipe_is_never_opened(tmp_path, tiny_model):
    archive = tmp_path / "archive"
    shutil.copytree(ARCHIVE / "hannover" / "case01", archive)
    os.mkfifo(tmp_path / "fifo")
    (archive / "linked.png").symlink_to(tmp_path / "fifo")  # opening it to read would wait forever
    s = embed_archive(archive, tmp_path / "ws", tiny_model, workers=0, progress=False)
    rows = {r["path"]: r for r in read_errors(tmp_path / "ws")}
    assert rows["linked.png"]["kind"] == "skipped" and "not a regular file" in rows["linked.png"]["reason"]
    assert s.embedded == 1
