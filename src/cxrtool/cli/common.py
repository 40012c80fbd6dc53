"""What every subcommand shares: error rendering, JSON output, device choice, option wording.

Light on purpose: every command module imports it at start-up, and `cxrtool --help` must not pay
for torch or scikit-learn (library imports go inside the command functions).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from cxrtool.errors import CxrError, os_error_message

console = Console(stderr=True)
out = Console()
T = TypeVar("T")

DEBUG = {"on": bool(os.environ.get("CXRTOOL_DEBUG"))}

# Help texts of options several commands share, worded once so the commands agree.
WORKSPACE_HELP = "Workspace folder (env CXRTOOL_WORKSPACE; default ./cxrtool_workspace)."
MODEL_HELP = ("Model directory or hub name, e.g. google/medsiglip-448 (default: the model the workspace was "
              "embedded with, else env CXRTOOL_MODEL, else the bundled model; see `cxrtool models`).")
WORKSPACE_MODEL_HELP = ("Model directory or hub name (default: the one the workspace was embedded with; another is "
                        "refused).")
DEVICE_HELP = "cpu, cuda, cuda:1 ... or auto."
PSEUDONYM_KEY_HELP = ("Secret for the keyed hashes of PatientID / AccessionNumber (prefer the env var: a command line "
                      "is visible to other users; default: this installation's own random key).")
NO_WAIT_HELP = "If another run is writing this workspace, refuse at once instead of waiting for it."


def run(fn: Callable[[], T]) -> T:
    """Call library code; turn its typed errors, and the everyday OS errors (disk full, read-only,
    permission denied, not found), into one readable line + hint and exit code 2 (--debug: the
    traceback instead)."""
    try:
        return fn()
    except CxrError as exc:
        if DEBUG["on"]:
            raise
        _error(exc.reason, exc.hint)
    except OSError as exc:  # pyarrow's and faiss' I/O errors too (ArrowIOError is an OSError)
        if DEBUG["on"]:
            raise
        _error(*os_error_message(exc))
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130) from None


def _error(reason: str, hint: str) -> NoReturn:
    """One line each (never wrapped: scripts and log greps read them whole); the texts are printed as
    written (escaped: a hint such as pip install 'cxrtool[ray]' is not rich markup)."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(reason)}", highlight=False, soft_wrap=True)
    if hint:
        console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def renamed(value: T, old_value: T | None, old: str, new: str) -> T:
    """The value of an option that was renamed: ``old_value`` (given under the old name ``old``) wins,
    with a one-line note on stderr, so scripts written for the old name keep working."""
    if old_value is None:
        return value
    console.print(f"note: {old} is deprecated; use {new}", highlight=False, markup=False)
    return old_value


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
