"""`cxrtool embed --engine ray`: a real local Ray cluster (loopback, 2 CPUs) runs decode tasks and an
encode actor pool; the driver writes the shards. Same vectors, rows and error rows as the local
engine; a killed actor or driver loses and duplicates nothing; no other command imports ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cxrtool.embed.errors_log import read_errors
from cxrtool.embed.pipeline import embed_archive
from cxrtool.embed.shards import read_shard_metadata, read_shard_vectors
from cxrtool.embed.validate import validate_workspace

from .conftest import ARCHIVE
from .test_integrity import cli, one_line_error

ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install -e '.[ray]' (make test does)")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(module_tmp) -> Path:
    """Real images of every kind the sample has, plus files that fail or are not images."""
    root = module_tmp.mktemp("ray") / "archive"
    shutil.copytree(ARCHIVE / "hannover", root / "hannover")
    shutil.copytree(ARCHIVE / "pacs", root / "pacs")
    for jpg in sorted((ARCHIVE / "nih").rglob("*.jpg"))[:12]:
        dest = root / "nih" / jpg.relative_to(ARCHIVE / "nih")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(jpg, dest)
    data = (ARCHIVE / "pacs/PAT0004/STUDY0001/SERIES07/IM000001").read_bytes()
    (root / "cut.dcm").write_bytes(data[:5000])
    (root / "notes.txt").write_text("not an image\n")
    return root


def _by_path(ws: Path) -> dict[str, np.ndarray]:
    ids, vecs, _ = read_shard_vectors(ws / "shards")
    paths = {int(r["id"]): r["path"] for r in read_shard_metadata(ws / "shards", ["id", "path"]).to_pylist()}
    return {paths[int(i)]: v for i, v in zip(ids, vecs, strict=True)}


def _rows(ws: Path) -> dict[str, dict]:
    return {r["path"]: r for r in read_shard_metadata(ws / "shards").to_pylist()}


def _errors(ws: Path) -> dict[str, tuple]:
    return {r["path"]: (r["kind"], r["stage"], r["reason"]) for r in read_errors(ws)}


def test_ray_writes_the_local_engines_rows_vectors_and_errors(cluster, archive, tmp_path, tiny_model):
    local = embed_archive(archive, tmp_path / "local", tiny_model, workers=0, progress=False, shard_rows=16)
    remote = embed_archive(archive, tmp_path / "ray", tiny_model, progress=False, shard_rows=16, engine="ray")
    for field in ("found", "embedded", "failed", "not_images", "skipped", "other_files"):
        assert getattr(remote, field) == getattr(local, field), field
    a, b = _by_path(tmp_path / "local"), _by_path(tmp_path / "ray")
    assert set(a) == set(b) and len(a) == local.embedded
    worst = max(float(np.abs(a[p] - b[p]).max()) for p in a)
    assert worst <= 1e-5, worst  # float32 rounding: batches are cut differently, so CPU kernels sum differently
    drop = ("content_hash",)
    ra, rb = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert {p: {k: v for k, v in r.items() if k not in drop} for p, r in ra.items()} == \
        {p: {k: v for k, v in r.items() if k not in drop} for p, r in rb.items()}
    assert _errors(tmp_path / "ray") == _errors(tmp_path / "local") and len(_errors(tmp_path / "local")) >= 3
    assert validate_workspace(archive, tmp_path / "ray").ok
    runs = [json.loads(x) for x in (tmp_path / "ray" / "embed-runs.jsonl").read_text().splitlines()]
    assert runs[-1]["engine"] == "ray" and runs[-1]["embedded"] == local.embedded


def _encoder_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "_Encoder" in cmd and "ray::" in cmd:
                pids.append(int(proc.name))
    return pids


def test_a_killed_encode_actor_loses_and_duplicates_nothing(cluster, archive, tmp_path, tiny_model):
    """SIGKILL to the encode actor's process once the first shard is written: Ray restarts the actor
    and retries its batches; the driver keeps one result per file."""
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            shards = list((tmp_path / "ws" / "shards").glob("shard-*.parquet"))
            pids = _encoder_pids()
            if shards and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    s = embed_archive(archive, tmp_path / "ws", tiny_model, progress=False, shard_rows=4, batch_size=2,
                      engine="ray")
    thread.join()
    assert killed, "the encode actor was never seen to kill"
    paths = read_shard_metadata(tmp_path / "ws" / "shards", ["path"]).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == s.embedded
    assert validate_workspace(archive, tmp_path / "ws").ok


def test_a_killed_driver_resumes_with_no_duplicates(tmp_path, tiny_model_dir):
    """The driver (the real CLI, with its own local Ray cluster) is killed mid-run; the re-run
    embeds exactly what is missing."""
    archive = tmp_path / "archive"
    shutil.copytree(ARCHIVE / "hannover", archive / "hannover")
    ws = tmp_path / "ws"
    proc = subprocess.Popen([sys.executable, "-m", "cxrtool.cli", "embed", str(archive), "--workspace", str(ws),
                             "--model", str(tiny_model_dir), "--engine", "ray", "--shard-rows", "2",
                             "--batch-size", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((ws / "shards").glob("shard-*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the cluster it started
    proc.wait()
    kept = read_shard_metadata(ws / "shards", ["path"]).column("path").to_pylist()
    assert kept
    again = cli("embed", str(archive), "--workspace", str(ws), "--model", str(tiny_model_dir), "--engine", "ray",
                "--json")
    assert again.returncode == 0, again.stderr
    paths = read_shard_metadata(ws / "shards", ["path"]).column("path").to_pylist()
    assert len(paths) == len(set(paths)) and json.loads(again.stdout)["already_done"] >= len(kept)
    assert cli("validate", str(archive), "--workspace", str(ws)).returncode == 0


def test_no_command_but_engine_ray_imports_ray(tmp_path, tiny_model_dir):
    script = f"""
import sys
from typer.testing import CliRunner
from cxrtool.cli.main import app
r = CliRunner()
ws = {str(tmp_path / 'ws')!r}
for args in (["embed", {str(ARCHIVE / 'hannover')!r}, "--workspace", ws, "--model", {str(tiny_model_dir)!r}],
             ["index", "--workspace", ws], ["search", "effusion", "--workspace", ws],
             ["validate", {str(ARCHIVE / 'hannover')!r}, "--workspace", ws], ["models"], ["embed", "--help"]):
    result = r.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
assert "ray" not in sys.modules, "ray was imported"
print("no ray")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "no ray" in proc.stdout, proc.stderr[-2000:]


def test_without_ray_the_engine_says_what_to_install(tmp_path, tiny_model_dir):
    script = f"""
import sys
sys.modules["ray"] = None  # as if the extra were not installed
from cxrtool.cli.main import app
sys.argv = ["cxrtool", "embed", {str(ARCHIVE / 'hannover')!r}, "--workspace", {str(tmp_path / 'ws')!r},
            "--model", {str(tiny_model_dir)!r}, "--engine", "ray"]
app()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    one_line_error(proc, "--engine ray needs Ray")
    assert "pip install 'cxrtool[ray]'" in proc.stderr


def test_a_cxrtool_error_inside_a_ray_task_is_found_for_the_one_line(cluster):
    """Ray wraps a task's exception; the engine digs the CxrError out so the CLI prints one line."""
    from ray.exceptions import RayTaskError

    from cxrtool.embed.ray_engine import _cxr_error_in
    from cxrtool.io.dicomweb import DicomWebUnavailable

    inner = DicomWebUnavailable("the DICOMweb server at http://127.0.0.1:1/dicom-web did not answer")
    wrapped = RayTaskError("MapBatches(decode_batch)", "Traceback ...", inner)
    try:
        raise RuntimeError("the dataset failed") from wrapped
    except RuntimeError as exc:
        assert _cxr_error_in(exc) is inner or str(_cxr_error_in(exc)) == str(inner)
    assert _cxr_error_in(ValueError("no")) is None
