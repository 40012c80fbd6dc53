"""`classify_images`: zero-shot label probabilities for files, folders or a workspace's shards.

Files and folders are found with ``io.discover`` and decoded with the one decoder (through
``DualEncoder.preprocess``); a file that cannot be decoded becomes an error row, not a crash.
A workspace (a folder with ``shards/``, or a shards folder) is read as vectors, refused when it
was embedded with another model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrtool.embed.shards import read_shard_metadata, read_shard_vectors, shard_paths
from cxrtool.errors import CxrError, ManifestError
from cxrtool.evaluate.zero_shot import LabelPromptSet, ZeroShotClassifier
from cxrtool.io.discover import discover_archive
from cxrtool.model.dual import DualEncoder
from cxrtool.workspace import Workspace, check_same_model


@dataclass
class Classification:
    labels: list[str]
    paths: list[str] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    scoring: str = "softmax"  # the model's zero-shot rule (see evaluate/zero_shot.py)

    def rows(self) -> list[dict]:
        return [{"path": p, **{lab: round(float(v), 4) for lab, v in zip(self.labels, pr, strict=True)}}
                for p, pr in zip(self.paths, self.probabilities, strict=True)]


def _shards_dir(path: Path) -> Path | None:
    for candidate in (path / "shards", path):
        if candidate.is_dir() and shard_paths(candidate):
            return candidate
    return None


def classify_images(model: DualEncoder, inputs: Sequence[str | Path], sets: Sequence[LabelPromptSet],
                    batch_size: int = 16, progress: Callable[[int], None] | None = None) -> Classification:
    """Probabilities (rows = images, columns = ``sets``' labels) for every image under ``inputs``."""
    import torch

    clf = ZeroShotClassifier.from_prompts(model, sets)
    result = Classification(clf.labels, scoring=clf.rule)
    vectors: list[np.ndarray] = []
    files: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise ManifestError(f"{item}: no such file or folder")
        shards = _shards_dir(item) if item.is_dir() else None
        if shards is not None:
            ids, vecs, vector_id = read_shard_vectors(shards)
            # shards or a model that record no vector id leave nothing to compare
            check_same_model(model.card, vector_id if vector_id and model.card.vector_id else None,
                             f"{item}: embedded", "pass the --model used by `cxrtool embed`")
            meta = read_shard_metadata(shards, ["id", "path"]).to_pylist()
            by_id = {int(m["id"]): m["path"] for m in meta}
            result.paths += [by_id.get(int(i), str(i)) for i in ids]
            vectors.append(vecs)
            continue
        for f in discover_archive(item):
            if f.problem:
                result.errors.append((str(f.path), f.problem))
            else:
                files.append(item / f.rel if item.is_dir() else item)
    for start in range(0, len(files), batch_size):
        tensors, ok = [], []
        for path in files[start : start + batch_size]:
            try:
                tensors.append(model.preprocess(path))
                ok.append(str(path))
            except CxrError as exc:
                result.errors.append((str(path), getattr(exc, "short_reason", exc.reason)))
        if tensors:
            vectors.append(model.encode_pixels(torch.stack(tensors)))
            result.paths += ok
        if progress:
            progress(len(files[start : start + batch_size]))
    if vectors:
        result.probabilities = clf.probabilities(np.concatenate(vectors))
    else:
        result.probabilities = np.zeros((0, len(clf.labels)))
    return result


def run_classification(inputs: Sequence[str | Path], labels: Sequence[str] | None = None,
                       prompts_file: str | Path | None = None, model: str | Path | DualEncoder | None = None,
                       device: str = "cpu", batch_size: int = 16,
                       progress: Callable[[int], None] | None = None) -> Classification:
    """`cxrtool classify` as one call: the prompt sets of ``labels`` (default: every label of the bank,
    or of ``prompts_file``), the model (a name as --model takes it, or a loaded one), then
    :func:`classify_images`."""
    from cxrtool.evaluate.zero_shot import label_prompt_sets, read_prompt_file
    from cxrtool.model import load_model

    custom = read_prompt_file(prompts_file) if prompts_file else None
    if model is None:  # a workspace among the inputs names its model
        model = next((Workspace(Path(i)).model_of(None) for i in inputs if (Path(i) / "embed.json").is_file()), None)
    mdl = model if isinstance(model, DualEncoder) else load_model(None if model is None else str(model), device)
    sets = label_prompt_sets(None if labels is None else list(labels), custom=custom)
    return classify_images(mdl, inputs, sets, batch_size=batch_size, progress=progress)
