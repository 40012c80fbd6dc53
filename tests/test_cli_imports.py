"""The CLI stays thin: `--help` of every command loads no torch or scikit-learn, every option explains
itself, renamed options still work (with a note), and the light copies of option defaults agree with
the library. Timings are not asserted here: `python benchmarks/cli_help.py` measures them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.errors import WorkspaceError

runner = CliRunner()

HEAVY = ("torch", "sklearn")

# Runs in a fresh interpreter: walks the command tree, shows every --help, reports which of the modules
# named on its command line got imported.
WALK_HELP = r"""
import contextlib, io, json, sys
import typer
from cxrtool.cli.main import app

root = typer.main.get_command(app)
paths = []
def walk(cmd, path):
    paths.append(path)
    if hasattr(cmd, "commands"):  # a group (typer may bring its own copy of click: no isinstance)
        for name in sorted(cmd.commands):
            walk(cmd.commands[name], [*path, name])
walk(root, [])
codes = {}
for path in paths:
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        codes[" ".join(path)] = (root.main([*path, "--help"], prog_name="cxrtool", standalone_mode=False),
                                 "Usage" in buf.getvalue())
print(json.dumps({"help": codes, "heavy": [m for m in sys.argv[1:] if m in sys.modules]}))
"""


def test_help_of_every_command_imports_no_torch_or_sklearn():
    proc = subprocess.run([sys.executable, "-c", WALK_HELP, *HEAVY], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    commands = report["help"]
    assert {"", "embed", "evaluate", "search", "serve", "train", "prepare", "prepare csv", "prepare dicom",
            "import", "import cxr-clip", "import chexzero"} <= set(commands)
    assert all(code == 0 and usage for code, usage in commands.values()), commands
    assert report["heavy"] == [], f"--help imported {report['heavy']}"


def _commands(cmd, path=()):
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name, sub in sorted(cmd.commands.items()):
            yield from _commands(sub, (*path, name))


def test_every_option_and_argument_has_help_text():
    import typer

    missing = [f"{' '.join(path)} {p.name}" for path, cmd in _commands(typer.main.get_command(app))
               for p in cmd.params if not getattr(p, "hidden", False) and not (getattr(p, "help", None) or "").strip()]
    assert missing == []


def test_light_copies_of_option_defaults_agree_with_the_library():
    from cxrtool import constants
    from cxrtool.embed.reports import TEXT_FIELDS
    from cxrtool.evaluate.bootstrap import N_RESAMPLES
    from cxrtool.evaluate.classification import THRESHOLD
    from cxrtool.evaluate.laterality import LATERALITY_KS
    from cxrtool.index.build import KINDS
    from cxrtool.index.search import DEDUPE_COSINE
    from cxrtool.io.classify import RADIOGRAPH_MODALITIES
    from cxrtool.model.imports.cxr_clip import DEFAULT_TEXT_ENCODER
    from cxrtool.train import PRESETS, TrainConfig

    assert (THRESHOLD, N_RESAMPLES, LATERALITY_KS) == (constants.THRESHOLD, constants.N_RESAMPLES,
                                                       constants.LATERALITY_KS)
    assert KINDS == constants.INDEX_KINDS and DEDUPE_COSINE == constants.DEDUPE_COSINE
    assert TEXT_FIELDS == constants.REPORT_TEXT_FIELDS
    assert RADIOGRAPH_MODALITIES == constants.RADIOGRAPH_MODALITIES
    assert tuple(PRESETS) == constants.TRAIN_PRESETS and DEFAULT_TEXT_ENCODER == constants.CXR_CLIP_TEXT_ENCODER
    # `train --help` quotes the config's defaults
    text = " ".join(runner.invoke(app, ["train", "--help"], terminal_width=400).output.split())
    cfg = TrainConfig()
    for name, value in (("epochs", cfg.epochs), ("batch_size", cfg.batch_size), ("lr", cfg.lr), ("seed", cfg.seed)):
        assert f"default {value}" in text, name


def _stop(calls: list):
    def fake(*args, **kwargs):
        calls.append(kwargs)
        raise WorkspaceError("stopped by the test")

    return fake


@pytest.mark.parametrize("old", [True, False])
def test_embed_takes_num_parts_and_the_old_num_shards_with_a_note(monkeypatch, tmp_path, old):
    import cxrtool.embed.pipeline

    calls: list = []
    monkeypatch.setattr(cxrtool.embed.pipeline, "embed_archive", _stop(calls))
    flags = ["--num-shards", "3", "--shard-index", "2"] if old else ["--num-parts", "3", "--part-index", "2"]
    res = runner.invoke(app, ["embed", str(tmp_path), *flags])
    assert res.exit_code == 2 and "stopped by the test" in res.stderr
    assert (calls[0]["num_parts"], calls[0]["part_index"]) == (3, 2)
    notes = [line for line in res.stderr.splitlines() if "deprecated" in line]
    if old:
        assert notes == ["note: --num-shards is deprecated; use --num-parts",
                         "note: --shard-index is deprecated; use --part-index"]
    else:
        assert notes == []


def test_embed_reports_takes_report_col_and_the_old_text_col_with_a_note(monkeypatch, tmp_path):
    import cxrtool.embed.reports

    calls: list = []
    monkeypatch.setattr(cxrtool.embed.reports, "embed_reports", _stop(calls))
    res = runner.invoke(app, ["embed-reports", str(tmp_path / "r.csv"), "--text-col", "findings"])
    assert res.exit_code == 2 and calls[0]["text_col"] == "findings"
    assert "note: --text-col is deprecated; use --report-col" in res.stderr
    res = runner.invoke(app, ["embed-reports", str(tmp_path / "r.csv"), "--report-col", "impression"])
    assert calls[1]["text_col"] == "impression" and "deprecated" not in res.stderr
