"""`run_evaluation`: the whole `cxrtool evaluate` chain as one call, shared by the CLI and the scripts.

Input (a manifest, or shards + a labels CSV) -> :class:`EvalSet` -> the model's image vectors
(cached) -> :func:`evaluate_model` -> optionally the measured sides into the model's card and the
output files. One function, so the command and the experiment scripts cannot drift apart in how
a model is scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cxrtool.errors import ManifestError
from cxrtool.evaluate.eval_set import EvalSet, embed_eval_set, eval_set_from_manifest, eval_set_from_shards
from cxrtool.evaluate.laterality import record_in_card
from cxrtool.evaluate.outputs import write_outputs
from cxrtool.evaluate.run import EvalOptions, EvalResult, evaluate_model, pick_split
from cxrtool.evaluate.zero_shot import read_prompt_file
from cxrtool.model.dual import DualEncoder

Progress = Callable[[str, int], Callable[[int], None]]


@dataclass
class Evaluation:
    """What :func:`run_evaluation` produced; the scripts read ``eval_set`` and ``model`` for extra figures."""

    result: EvalResult
    eval_set: EvalSet  # the rows scored, with their vectors
    model: DualEncoder
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of images that did not decode
    outputs: dict[str, Path] = field(default_factory=dict)  # name -> file written (empty without out_dir)

    @property
    def summary(self) -> dict:
        return self.result.summary


def _check_inputs(manifest: object, shards: object, labels_csv: object) -> None:
    if (manifest is None) == (shards is None) or (shards is not None and labels_csv is None):
        raise ManifestError("give a MANIFEST, or --shards WORKSPACE with --labels-csv FILE")


def load_eval_set(manifest: str | Path | None = None, shards: str | Path | None = None,
                  labels_csv: str | Path | None = None) -> EvalSet:
    """A manifest, or a workspace's shards with a labels CSV: exactly one of the two inputs."""
    _check_inputs(manifest, shards, labels_csv)
    return eval_set_from_manifest(manifest) if manifest else eval_set_from_shards(shards, labels_csv)


def _record_target(model: str | Path | DualEncoder | None) -> Path:
    """The model directory --record-sides may write into: one of the user's own, never the bundled
    model (its card is the shipped measurement) or a hub download (a cache, replaced on update)."""
    from cxrtool.model import resolve_model

    if isinstance(model, DualEncoder):
        raise ValueError("record_sides needs the model by name (its directory), not a loaded model")
    target = resolve_model(None if model is None else str(model))
    if target.directory is None or target.is_bundled:
        raise ManifestError("--record-sides writes into a model directory of your own, not the bundled model "
                            "or a hub download", "copy the model directory (cp -r) and pass --model COPY")
    return target.directory


def run_evaluation(manifest: str | Path | None = None, *, shards: str | Path | None = None,
                   labels_csv: str | Path | None = None, model: str | Path | DualEncoder | None = None,
                   options: EvalOptions | None = None, prompts_file: str | Path | None = None,
                   device: str = "cpu", batch_size: int = 32, cache_dir: Path | None = None,
                   out_dir: Path | None = None, record_sides: bool = False,
                   progress: Progress | None = None) -> Evaluation:
    """Score ``model`` (a name as --model takes it, or a loaded model) on a manifest or on shards + labels CSV.

    Without a probe (``options.probe_fractions`` empty) only the evaluated split is embedded: the
    train rows would be embedded for nothing. ``prompts_file`` fills ``options.custom_prompts``.
    Vectors are cached in ``cache_dir`` (default ``out_dir/cache``); with ``out_dir`` the summary,
    report, predictions and plots are written there. ``record_sides`` writes the measured
    left-vs-right AUROCs into the model directory's card, so search warns about sides it does not
    tell. ``progress(description, total)`` may return a per-step callback, as for :func:`evaluate_model`.
    """
    from cxrtool.model import load_model

    opt = options or EvalOptions()
    _check_inputs(manifest, shards, labels_csv)  # usage errors first, before any model is resolved or loaded
    target = _record_target(model) if record_sides else None
    es = load_eval_set(manifest, shards, labels_csv)
    if not opt.probe_fractions:
        es = es.subset(pick_split(es, opt.split)[1])
    mdl = model if isinstance(model, DualEncoder) else load_model(None if model is None else str(model), device)
    if cache_dir is None and out_dir is not None:
        cache_dir = out_dir / "cache"
    failed = embed_eval_set(mdl, es, cache_dir, batch_size, progress("embedding", len(es)) if progress else None)
    if prompts_file:
        opt = replace(opt, custom_prompts=read_prompt_file(prompts_file))
    result = evaluate_model(mdl, es, opt, progress=progress)
    source = manifest if manifest is not None else shards
    result.summary["data"]["input"] = str(source)
    result.summary["data"]["undecodable_images"] = len(failed)
    if target is not None and result.summary.get("laterality"):
        record_in_card(target, result.summary["laterality"],
                       f"cxrtool evaluate, {Path(str(source)).name}, split {opt.split}")
    outputs = write_outputs(result, out_dir) if out_dir is not None else {}
    return Evaluation(result, es, mdl, failed, outputs)
