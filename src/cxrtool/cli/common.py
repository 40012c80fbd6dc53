"""What every subcommand shares: error rendering, JSON output, device choice."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from cxrtool.errors import CxrError

console = Console(stderr=True)
out = Console()
T = TypeVar("T")

DEBUG = {"on": bool(os.environ.get("CXRTOOL_DEBUG"))}


def run(fn: Callable[[], T]) -> T:
    """Call library code; turn its typed errors into one readable line + hint and exit code 2."""
    try:
        return fn()
    except CxrError as exc:
        if DEBUG["on"]:
            raise
        console.print(f"[bold red]error:[/] {exc.reason}", highlight=False)
        if exc.hint:
            console.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
