"""The safe checkpoint reader: code named by a pickle never runs; weights and OmegaConf configs still load."""

from __future__ import annotations

import builtins
import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrtool.errors import ModelError
from cxrtool.model.imports import import_cxr_clip
from cxrtool.model.imports.safe_pickle import plain, read_checkpoint

from .checkpoint_layouts import cxr_clip_config, omegaconf_lookalike

DATA = Path(__file__).parent / "data"


class _Payload:
    """An object whose unpickling calls ``call(*args)`` (the classic malicious __reduce__)."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    cmd = f"touch {marker}"
    return {
        "os.system": _Payload(os.system, (cmd,)),
        "builtins.exec": _Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.eval": _Payload(builtins.eval, (f"open({str(marker)!r}, 'w')",)),
        "builtins.open": _Payload(builtins.open, (str(marker), "w")),
        "subprocess.check_call": _Payload(subprocess.check_call, (["touch", str(marker)],)),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "builtins.eval", "builtins.open",
                                  "subprocess.check_call"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, name, legacy):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.tar"
    torch.save({"model": {"logit_scale": torch.tensor(1.0)}, "config": _payloads(marker)[name]}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ModelError) as info:
        read_checkpoint(path)
    assert "refused" in info.value.reason and "nothing was run" in info.value.reason and info.value.hint
    assert name.split(".")[-1] in info.value.reason
    assert not marker.exists()


def test_the_payload_is_live_so_the_refusal_test_can_fail(tmp_path):
    """An unrestricted torch.load of the same file does run it (in a child process)."""
    marker = tmp_path / "MARKER"
    torch.save({"config": _payloads(marker)["os.system"]}, tmp_path / "evil.tar")
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(tmp_path / 'evil.tar')!r}, "
                    "weights_only=False)"], check=True, capture_output=True)
    assert marker.exists()


def test_the_importer_refuses_a_malicious_checkpoint_before_writing_anything(tmp_path, tiny_text_dir):
    marker = tmp_path / "MARKER"
    torch.save({"model": {"logit_scale": torch.tensor(1.0)}, "optimizer": _payloads(marker)["os.system"]},
               tmp_path / "swint_m.tar")
    with pytest.raises(ModelError, match="system"):
        import_cxr_clip(tmp_path / "swint_m.tar", tmp_path / "out", text_encoder=str(tiny_text_dir))
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_weights_optimizer_state_and_plain_containers_load_unchanged(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params)
    params[0].grad = torch.ones(3)
    opt.step()
    payload = {"model": collections.OrderedDict(w=torch.randn(2, 3), h=torch.arange(4, dtype=torch.int64),
                                                f16=torch.randn(5).half()),
               "optimizer": opt.state_dict(), "misc": (1, 2.5, "s", b"bytes", {3, 4}, None, True, [1j])}
    torch.save(payload, tmp_path / "ok.pt")
    got = read_checkpoint(tmp_path / "ok.pt")
    assert list(got["model"]) == ["w", "h", "f16"]
    assert all(torch.equal(got["model"][k], payload["model"][k]) for k in payload["model"])
    assert got["model"]["f16"].dtype == torch.float16
    assert torch.equal(got["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert got["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert got["misc"] == payload["misc"]


def test_a_real_omegaconf_config_loads_as_plain_data_without_omegaconf():
    """tests/data/omegaconf-2.3-config.pt was written by real OmegaConf 2.3 (see make_omegaconf_fixture.py)."""
    assert "omegaconf" not in sys.modules
    got = plain(read_checkpoint(DATA / "omegaconf-2.3-config.pt"))
    assert "omegaconf" not in sys.modules
    assert got["config"]["transform"]["train"]["RandomResizedCrop"] == {"size": 224, "scale": [0.8, 1.1]}
    assert got["config"]["data_train"]["mimic_cxr"]["text_key"] == ["findings", "impression"]
    assert got["config"]["model"]["text_encoder"]["pooling"] == "eos" and got["epoch"] == 3


def test_the_lookalike_config_names_the_same_globals_as_real_omegaconf(tmp_path):
    """The synthetic checkpoints' OmegaConf stand-in pickles exactly like the real file (same globals)."""
    import pickletools
    import zipfile

    def globals_in(path):
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}

    with omegaconf_lookalike():
        torch.save({"config": cxr_clip_config("swin", 224, 256)}, tmp_path / "look.pt")
    assert globals_in(tmp_path / "look.pt") == globals_in(DATA / "omegaconf-2.3-config.pt")


def test_a_file_that_is_not_a_checkpoint_is_one_readable_error(tmp_path):
    (tmp_path / "r50_m.tar").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ModelError) as info:
        read_checkpoint(tmp_path / "r50_m.tar")
    assert "not a readable torch checkpoint" in info.value.reason and "\n" not in info.value.reason
