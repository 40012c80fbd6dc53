"""Multi-class prompt grids (CheXpert 5x200 style): severity x subtype x location, kept as JSON data.

A class's prompts are the Cartesian product of its phrase lists, taken in the class's ``order``
(default severity, subtype, location), each prompt the chosen phrases joined by single spaces with
empty phrases skipped; duplicates are dropped, the first kept. So Atelectasis with 3 severities
("", "mild", "minimal") x 7 subtypes x 10 locations gives 210 prompts, the first three being
"subsegmental atelectasis at the mid lung zone", "subsegmental atelectasis at the upper lung zone", ...
and the 71st "mild subsegmental atelectasis at the mid lung zone".
"""

from __future__ import annotations

import itertools
import json
from functools import lru_cache
from pathlib import Path

from cxrtool.errors import ManifestError

GRID_PATH = Path(__file__).resolve().parents[1] / "data" / "prompt_grid_5x200.json"
DEFAULT_ORDER = ("severity", "subtype", "location")


def expand_grid(spec: dict) -> list[str]:
    """One class's phrase lists -> its prompts (product in ``order``, spaces, no empties, no duplicates)."""
    order = spec.get("order", DEFAULT_ORDER)
    parts = [spec.get(name) or [""] for name in order]
    prompts: dict[str, None] = {}
    for combo in itertools.product(*parts):
        text = " ".join(p.strip() for p in combo if p.strip())
        if text:
            prompts.setdefault(text, None)
    return list(prompts)


def load_prompt_grid(path: str | Path | None = None) -> dict[str, list[str]]:
    """Class name -> expanded prompts, from the bundled 5x200 grid or a JSON file of the same shape."""
    return dict(_load(str(path or GRID_PATH)))


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[tuple[str, list[str]], ...]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable prompt-grid JSON ({exc})") from None
    classes = data.get("classes", data)
    return tuple((name, expand_grid(spec)) for name, spec in classes.items() if not name.startswith("_"))
