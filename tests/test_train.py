"""Training: config resolution, study sampling, accumulation, and exact resume after a real kill."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrtool.data.manifest import Study, StudyImage, write_manifest
from cxrtool.data.prompts import PromptBank
from cxrtool.data.sources.csv_table import read_csv_studies
from cxrtool.train import TrainConfig, resolve_config, train
from cxrtool.train.config import ConfigError, parse_overrides
from cxrtool.train.data import EpochBatches, StudyDataset, collate, shuffle_sentences
from cxrtool.train.loop import Stepper, Towers, apply_freezing, param_groups, warmup_cosine

from .conftest import REPO, SAMPLE

NIH_LABELS = ["atelectasis", "cardiomegaly", "effusion", "pneumothorax", "no_finding"]


# ---------------------------------------------------------------------------------------- config
def test_config_precedence_defaults_preset_file_overrides(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[train]\npreset = "cxr-clip-r50"\nlr = 1e-3\nepochs = 2\nfreeze_text_layers = 4\n')
    cfg = resolve_config(config_file=f, overrides=parse_overrides(["epochs=7", "false_negatives=false"]))
    assert cfg.image_model == "resnet50" and cfg.pooling == "eos" and cfg.max_length == 256  # preset
    assert cfg.lr == 1e-3 and cfg.freeze_text_layers == 4  # file beats preset
    assert cfg.epochs == 7 and cfg.false_negatives is False  # overrides beat the file
    assert TrainConfig().batch_size == resolve_config().batch_size


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        resolve_config(overrides={"learning_rate": "1"})
    with pytest.raises(ConfigError, match="epochs='many'"):
        resolve_config(overrides={"epochs": "many"})
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config(preset="cxr-clip-vit")
    with pytest.raises(ConfigError, match="multiple of accum_steps"):
        resolve_config(overrides={"batch_size": "10", "accum_steps": "4"})
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3")
    with pytest.raises(ConfigError, match="cannot parse"):
        resolve_config(config_file=bad)


def test_schedule_warms_up_then_follows_a_cosine():
    f = warmup_cosine(total=100, warmup=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=1e-6) and f(99) < 0.01


# ------------------------------------------------------------------------------------ sampling
def _png(path, value: float, size=(80, 96)):
    Image.fromarray(np.full(size, int(value * 255), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def spec(tiny_model):
    return tiny_model.card.image


def _ds(studies, spec, **kw):
    return StudyDataset(studies, spec, PromptBank.load(), seed=3, progress=False, clahe_p=0.0, **kw)


def test_two_views_come_from_two_different_images(tmp_path, spec):
    dark, light = _png(tmp_path / "a.png", 0.0), _png(tmp_path / "b.png", 1.0)
    two = Study("s2", "p", "train", "t", [StudyImage(dark, "PA"), StudyImage(light, "LATERAL")], labels={"Edema": 1})
    one = Study("s1", "p", "train", "t", [StudyImage(light, "PA")], labels={"Edema": 1})
    ds = _ds([two, one], spec)
    for epoch in range(4):
        ds.set_epoch(epoch)
        a = ds[0]
        assert abs(float(a.img1.mean()) - float(a.img2.mean())) > 2.0  # one dark, one light view
        b = ds[1]  # one image: two augmentations of it
        assert not torch.equal(b.img1, b.img2) and abs(float(b.img1.mean()) - float(b.img2.mean())) < 1.0


def test_texts_two_sections_or_a_real_sentence_shuffle_or_two_prompt_draws(tmp_path, spec):
    img = _png(tmp_path / "a.png", 0.5)
    both = Study("a", "p", "train", "t", [StudyImage(img)], findings="Heart is normal.", impression="No effusion.")
    single = Study("b", "p", "train", "t", [StudyImage(img)], findings="One. Two. Three. Four.")
    labels = Study("c", "p", "train", "t", [StudyImage(img)], labels={"Cardiomegaly": 1, "Edema": 0, "Atelectasis": 1})
    ds = _ds([both, single, labels], spec)
    s = ds[0]
    assert {s.text1, s.text2} == {"Heart is normal.", "No effusion."}
    s = ds[1]
    assert s.text1 == "One. Two. Three. Four." and s.text2 != s.text1
    assert sorted(s.text2.split()) == sorted(s.text1.split())
    draws = set()
    for epoch in range(5):
        ds.set_epoch(epoch)
        s = ds[2]
        draws |= {s.text1, s.text2}
        assert s.keys[0] == s.keys[1]  # both draws mean the same label set
    assert len(draws) > 2
    assert shuffle_sentences("Only one sentence.", random.Random(0)) == "Only one sentence."


def test_samples_are_reproducible_per_epoch_and_study(tmp_path, spec):
    imgs = [_png(tmp_path / f"{i}.png", i / 4) for i in range(3)]
    studies = [Study(f"s{i}", "p", "train", "t", [StudyImage(p)], labels={"Edema": i % 2}) for i, p in enumerate(imgs)]
    ds = _ds(studies, spec)
    ds.set_epoch(2)
    first = [ds[i] for i in (2, 0, 1)]
    again = [ds[i] for i in (0, 1, 2)]  # another order, same draws
    assert torch.equal(first[0].img1, again[2].img1) and first[0].text1 == again[2].text1
    ds.set_epoch(3)
    assert not torch.equal(ds[2].img1, first[0].img1)


def test_epoch_batches_split_one_global_batch_over_ranks_and_resume_midway():
    single = list(EpochBatches(40, 8, seed=1))
    ranks = [list(EpochBatches(40, 8, seed=1, rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == single
    later = EpochBatches(40, 8, seed=1)
    later.set_position(0, 3)
    assert list(later) == single[3:] and len(later) == 2
    other = EpochBatches(40, 8, seed=1)
    other.set_position(1, 0)
    assert list(other) != single


# ------------------------------------------------------------------------- optimisation pieces
def test_no_weight_decay_on_biases_norms_and_temperature(tiny_model):
    model = copy.deepcopy(tiny_model)
    groups = param_groups(model, TrainConfig(weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            no_decay = p.ndim < 2 or n == "logit_scale"
            assert g["weight_decay"] == (0.0 if no_decay else 0.1), n


def test_freezing_lower_layers(tiny_model):
    model = copy.deepcopy(tiny_model)
    apply_freezing(model, TrainConfig(freeze_text_layers=1, freeze_image_layers=1))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(".layer.0." in n for n in frozen) and not any(".layer.1." in n for n in frozen)
    assert any(n.startswith("text_backbone.embeddings.") for n in frozen)
    assert any(n.startswith("image_backbone.conv_stem") for n in frozen)
    assert not any(n.startswith("image_proj") or n.startswith("text_proj") for n in frozen)


def test_accumulated_gradients_equal_the_whole_batch(tmp_path, tiny_model):
    imgs = [_png(tmp_path / f"{i}.png", (i % 5) / 5) for i in range(8)]
    studies = [Study(f"s{i}", f"p{i}", "train", "t", [StudyImage(p)], labels={"Edema": i % 2, "Mass": i % 3 == 0})
               for i, p in enumerate(imgs)]
    studies[1].findings, studies[6].findings = "Small left pleural effusion.", "Right apical pneumothorax."
    batch = collate([_ds(studies, tiny_model.card.image, side_negatives=True)[i] for i in range(8)])
    assert batch.extra_rows.tolist() == [1, 6]
    grads = {}
    for accum in (1, 4):
        model = copy.deepcopy(tiny_model).eval()  # eval: no dropout, fixed norm statistics
        cfg = TrainConfig(accum_steps=accum, batch_size=8, side_negatives=True, side_weight=1.0)
        opt = torch.optim.AdamW(param_groups(model, cfg))
        stepper = Stepper(model, Towers(model), cfg, torch.device("cpu"), opt,
                          torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), torch.amp.GradScaler("cpu",
                                                                                                      enabled=False))
        terms = stepper.backward(batch)
        grads[accum] = ({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                        float(terms.total.detach()))
        assert terms.side is not None
    assert grads[1][1] == pytest.approx(grads[4][1], rel=1e-5)
    assert grads[1][0].keys() == grads[4][0].keys()
    for name, g in grads[1][0].items():
        # float32 sums in another order (micro-batches pad texts to other lengths): ~1e-5 apart;
        # a real accumulation bug (a term counted per micro-batch) is off by integer factors
        assert torch.allclose(g, grads[4][0][name], rtol=1e-3, atol=1e-4), name


# ------------------------------------------------------------------------------ whole runs
@pytest.fixture(scope="module")
def sample_manifest(module_tmp):
    studies = read_csv_studies(SAMPLE / "labels.csv", patient_col="patient_id", view_col="view",
                               label_cols=NIH_LABELS, image_root=SAMPLE / "archive", validate_fraction=0.15)
    return write_manifest(studies, module_tmp.mktemp("manifest") / "m.parquet")


def _overrides(tiny_model_dir, **extra) -> dict:
    return {"init_from": str(tiny_model_dir), "epochs": 3, "batch_size": 8, "max_steps": 4, "checkpoint_every": 1,
            "log_every": 1, "threads": 1, **extra}


def _cli_train(manifest, out, settings: dict, *flags) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cxrtool.cli", "train", str(manifest), "--out", str(out), "--device", "cpu"]
    for k, v in settings.items():
        cmd += ["--set", f"{k}={v}"]
    return subprocess.Popen([*cmd, *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})


def _stop_mid_epoch(proc: subprocess.Popen, last, timeout: float = 300.0) -> dict:
    """SIGSTOP the run as soon as a mid-epoch checkpoint is on disk, then SIGKILL it there."""
    deadline = time.time() + timeout
    seen = None
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it could be killed:\n{proc.stderr.read()}")
        if last.is_file() and last.stat().st_mtime_ns != seen:
            os.kill(proc.pid, signal.SIGSTOP)
            ck = torch.load(last, map_location="cpu", weights_only=False)
            if ck["batch"] > 0:  # inside an epoch
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return ck
            seen = last.stat().st_mtime_ns
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no mid-epoch checkpoint appeared")


def test_killed_run_resumes_exactly(tmp_path, sample_manifest, tiny_model_dir):
    settings = _overrides(tiny_model_dir)
    whole = train(sample_manifest, tmp_path / "whole", resolve_config(overrides=settings), progress=False)
    assert whole.steps == 12 and len(whole.history) == 3

    out = tmp_path / "killed"
    ck = _stop_mid_epoch(_cli_train(sample_manifest, out, settings), out.parent / "killed.run" / "checkpoints" /
                         "last.pt")
    assert 0 < ck["step"] < 12 and not (out / "model.json").exists()
    with pytest.raises(Exception, match="already holds a training run"):
        train(sample_manifest, out, resolve_config(overrides=settings), progress=False)
    resumed = train(sample_manifest, out, resolve_config(overrides=settings), progress=False, resume=True)
    assert resumed.steps == 12 and resumed.best_epoch == whole.best_epoch

    from safetensors.torch import load_file

    a, b = load_file(str(whole.model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    for x, y in zip(whole.history, resumed.history, strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)
        assert x["val_total"] == pytest.approx(y["val_total"], rel=1e-4)
    rows = [json.loads(line) for line in (out.parent / "killed.run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "step"]
    assert steps == list(range(1, 13))  # no duplicated or missing rows after the resume


def test_resume_refuses_a_changed_config(tmp_path, sample_manifest, tiny_model_dir):
    settings = _overrides(tiny_model_dir, epochs=1, max_steps=2)
    train(sample_manifest, tmp_path / "m", resolve_config(overrides=settings), progress=False)
    with pytest.raises(Exception, match="other settings for: lr"):
        train(sample_manifest, tmp_path / "m", resolve_config(overrides={**settings, "lr": 1.0}), progress=False,
              resume=True)


def test_cli_run_logs_terms_and_validation_and_writes_a_loadable_model(tmp_path, sample_manifest, tiny_model_dir):
    cfg_file = tmp_path / "train.toml"
    cfg_file.write_text(f'init_from = "{tiny_model_dir}"\nepochs = 2\nbatch_size = 8\nmax_steps = 2\n'
                        "side_negatives = false\nselect_by = \"auroc\"\n")
    proc = subprocess.run([sys.executable, "-m", "cxrtool.cli", "train", str(sample_manifest), "-o",
                           str(tmp_path / "model"), "--config", str(cfg_file), "--set", "accum_steps=2", "--json"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    epoch = result["history"][-1]
    assert {"val_total", "val_clip", "val_icl", "val_tcl", "val_recall", "val_auroc"} <= set(epoch)
    rows = [json.loads(line) for line in (tmp_path / "model.run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if r["kind"] == "step")
    assert {"clip", "icl", "tcl", "lr", "samples_per_s", "data_s", "step_s"} <= set(step)
    saved = json.loads((tmp_path / "model.run" / "config.json").read_text())
    assert saved["accum_steps"] == 2 and saved["select_by"] == "auroc"

    from cxrtool.model import load_model

    model = load_model(str(tmp_path / "model"))
    assert model.card.provenance["train_config"]["accum_steps"] == 2
    assert model.encode_texts(["pleural effusion"]).shape == (1, model.card.embed_dim)


def test_training_with_flips_validates_and_exports_flip_pair_vectors(tmp_path, sample_manifest, tiny_model_dir):
    settings = _overrides(tiny_model_dir, epochs=1, max_steps=2, hflip_prob=0.5, select_by="auroc")
    result = train(sample_manifest, tmp_path / "m", resolve_config(overrides=settings), progress=False)
    assert "val_auroc" in result.history[-1] and "val_recall" in result.history[-1]

    from cxrtool.model import load_model

    model = load_model(str(tmp_path / "m"))
    assert model.card.embedding == "flip_pair" and model.card.output_dim == 2 * model.card.embed_dim
    assert model.encode_texts(["left pleural effusion"]).shape == (1, model.card.output_dim)


def test_torchrun_two_cpu_processes_train_one_model(tmp_path, sample_manifest, tiny_model_dir):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "cxrtool.cli", "train",
           str(sample_manifest), "-o", str(tmp_path / "ddp"), "--device", "cpu", "--json"]
    for k, v in _overrides(tiny_model_dir, epochs=1, max_steps=2, side_negatives="false").items():
        cmd += ["--set", f"{k}={v}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # one report (rank 0), not one per process
    assert result["steps"] == 2 and result["best_epoch"] == 1
    assert (tmp_path / "ddp" / "model.json").is_file()


# ---------------------------------------------------------------------------------- laterality
def _half_bright(path, left_bright: bool):
    a = np.zeros((80, 96), dtype=np.uint8)
    if left_bright:
        a[:, :48] = 255
    else:
        a[:, 48:] = 255
    Image.fromarray(a).save(path)
    return str(path)


def test_a_flip_swaps_the_sides_of_the_texts_with_the_image(tmp_path, spec):
    img = _half_bright(tmp_path / "a.png", left_bright=True)
    labelled = Study("a", "p", "train", "t", [StudyImage(img)], labels={"Pleural Effusion": 1})
    labelled.sides = {"Pleural Effusion": "left"}
    report = Study("b", "p", "train", "t", [StudyImage(img)], findings="Small left pleural effusion. No pneumothorax.")
    plain = _ds([labelled, report], spec)
    flipped = _ds([labelled, report], spec, hflip_prob=1.0)
    for ds, side, other in ((plain, "left", "right"), (flipped, "right", "left")):
        s = ds[0]
        assert side in s.text1.lower() and other not in s.text1.lower()
        assert side in ds[1].text1.lower() and other not in ds[1].text1.lower()
        width = s.img1.shape[-1]
        left_half, right_half = float(s.img1[..., : width // 2].mean()), float(s.img1[..., width // 2 :].mean())
        assert (left_half > right_half) == (side == "left")  # the bright half moved with the flip
    # a flipped label-only study means "right effusion": its key changes with it
    assert plain[0].keys != flipped[0].keys


def test_side_negatives_are_the_same_text_with_the_other_side(tmp_path, spec):
    img = _png(tmp_path / "a.png", 0.5)
    lateral = Study("a", "p", "train", "t", [StudyImage(img)], findings="Large right pneumothorax.")
    neutral = Study("b", "p", "train", "t", [StudyImage(img)], findings="Heart size is normal.")
    ds = _ds([lateral, neutral], spec, side_negatives=True)
    s = ds[0]
    assert s.swapped and "left" in s.swapped.lower() and "right" not in s.swapped.lower()
    assert ds[1].swapped is None
    batch = collate([ds[1], ds[0], ds[1], ds[0]])
    assert batch.extra_texts == [s.swapped, s.swapped] and batch.extra_rows.tolist() == [1, 3]
    first, second = batch.split(2)
    assert first.extra_rows.tolist() == [1] and second.extra_rows.tolist() == [1]
    assert first.extra_texts == [s.swapped] and second.extra_keys.shape == (1,)
