"""Library notes for the person at the terminal (a lock waited for, a shard left out, an index
answered around): one line each on stderr, so stdout stays machine-readable with --json."""

from __future__ import annotations

import sys


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def note(message: str) -> None:
    say(f"note: {message}")
