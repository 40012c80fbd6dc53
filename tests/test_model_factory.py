"""The model factory's path: following --model to the loaded weights passes through each of
cxrtool's files once (the file-to-file call graph of a load has no loop), and $CXRTOOL_MODEL,
directories and hub names resolve in one place."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import cxrtool
from cxrtool.errors import ModelError
from cxrtool.model import DEFAULT_MODEL_DIR, load_model, resolve_model

from .test_layering import cycles

PACKAGE = Path(cxrtool.__file__).resolve().parent


def _file_calls(fn) -> tuple[dict[str, set[str]], list[str]]:
    """(caller file -> callee files, files in the order first entered) for cxrtool's own files."""
    edges: dict[str, set[str]] = {}
    order: list[str] = []

    def rel(frame) -> str | None:
        path = Path(frame.f_code.co_filename)
        return str(path.relative_to(PACKAGE)) if path.is_relative_to(PACKAGE) else None

    def tracer(frame, event, arg):
        if event == "call":
            callee = rel(frame)
            caller = frame.f_back
            while caller is not None and rel(caller) is None:
                caller = caller.f_back  # through library code (torch, transformers) back to ours
            if callee is not None:
                if callee not in order:
                    order.append(callee)
                if caller is not None and rel(caller) != callee:
                    edges.setdefault(rel(caller), set()).add(callee)
        return None

    sys.setprofile(None)
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    for targets in list(edges.values()):
        for t in targets:
            edges.setdefault(t, set())
    return edges, order


@pytest.mark.parametrize("which", ["bundled", "tiny"])
def test_loading_a_model_passes_through_each_file_once(which, tiny_model_dir):
    name = None if which == "bundled" else str(tiny_model_dir)
    load_model(name)  # untraced first: imports of torch/transformers under a tracer take minutes
    edges, order = _file_calls(lambda: load_model(name))
    assert cycles(edges) == [], edges  # no file calls back into a file that called it
    assert order[0] == "model/factory.py" and "model/families/cxrtool.py" in order


def test_the_environment_variable_is_read_in_one_place(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CXRTOOL_MODEL", str(tiny_model_dir))
    assert resolve_model(None).directory == tiny_model_dir
    assert resolve_model(str(DEFAULT_MODEL_DIR)).is_bundled
    monkeypatch.delenv("CXRTOOL_MODEL")
    assert resolve_model(None).is_bundled


def test_a_hub_name_without_a_copy_is_not_fetched_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRTOOL_MODELS", str(tmp_path))
    ref = resolve_model("someorg/not-here")
    assert ref.directory is None and ref.hub_name == "someorg/not-here"
    (tmp_path / "someorg" / "not-here").mkdir(parents=True)
    assert resolve_model("someorg/not-here").directory == tmp_path / "someorg" / "not-here"
    with pytest.raises(ModelError, match="neither a directory nor a hub name"):
        resolve_model("not a model name")
