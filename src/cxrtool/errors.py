"""Typed, user-facing errors. Each carries a one-line reason and, where useful, a hint.

The CLI prints ``reason`` and ``hint`` and exits non-zero; it shows a traceback only with --debug.
"""

from __future__ import annotations


class CxrError(Exception):
    """Base class: a problem the user can act on."""

    hint: str = ""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        if hint:
            self.hint = hint


class DecodeError(CxrError):
    """An image or DICOM file could not be turned into pixels."""

    def __init__(self, path: object, reason: str, hint: str = "") -> None:
        super().__init__(f"{path}: {reason}", hint)
        self.path = str(path)
        self.short_reason = reason


class NotAnImageError(DecodeError):
    """A DICOM object without pixels (SR, presentation state, ...) or a non-image file."""


class ModelError(CxrError):
    """A model directory, card or checkpoint is missing, malformed or does not match."""


class WeightMismatchError(ModelError):
    """Weights do not cover the model exactly: names the missing/unexpected keys."""

    def __init__(self, missing: list[str], unexpected: list[str], source: str) -> None:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weight(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} weight(s), e.g. {', '.join(unexpected[:3])}")
        super().__init__(
            f"{source}: weights do not match the model card: " + "; ".join(parts),
            "the weights were saved from a different architecture or were truncated; "
            "re-export the model with `cxrtool train` / save_model_dir, or point at the right directory",
        )
        self.missing = missing
        self.unexpected = unexpected


class CheckpointMismatchError(WeightMismatchError):
    """A foreign checkpoint does not have exactly its format's weights: names them (checkpoint names)."""

    def __init__(self, missing: list[str], unexpected: list[str], source: str, layout: str) -> None:
        super().__init__(missing, unexpected, source)
        parts = [f"{what} {len(keys)} weight(s): {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        self.reason = f"{source}: not a complete {layout} checkpoint: " + "; ".join(parts)
        self.args = (self.reason,)
        self.hint = ("a weight was removed or renamed, or the file holds another model; cxrtool imports only "
                     "checkpoints whose every weight it can place, so nothing was written")


class ManifestError(CxrError):
    """An input table or manifest does not have what is needed."""


class WorkspaceError(CxrError):
    """The workspace (shards, index) is missing, stale or belongs to another model/archive."""


class UnknownIdError(WorkspaceError):
    """An id that is not in the index (the web page answers 404)."""


class WorkspaceBusyError(WorkspaceError):
    """Another writer holds the workspace (and the caller asked not to wait)."""


# errno -> (what happened, what to do): the everyday OS errors a run meets, said in one line.
_OS_ERRORS = {
    "ENOSPC": ("the disk is full", "free space (or use a --workspace on a disk with room); the next run resumes "
               "where this one stopped, nothing written so far is lost"),
    "EDQUOT": ("the disk quota is exceeded", "free space or raise the quota; the next run resumes"),
    "EROFS": ("the filesystem is read-only", "use a --workspace on a writable disk"),
    "EACCES": ("permission denied", "check the owner and permissions of the path, or use another --workspace"),
    "EPERM": ("operation not permitted", "check the owner and permissions of the path, or use another --workspace"),
    "ENOENT": ("no such file or folder", "check the path"),
    "ENOTDIR": ("a path component is not a folder", "check the path"),
    "EISDIR": ("is a folder, not a file", "check the path"),
    "EIO": ("input/output error (a failing disk or a lost network mount)", "check the disk or mount, then run again"),
    "ESTALE": ("stale network file handle", "remount the network filesystem, then run again"),
    "EMFILE": ("too many open files", "raise the limit (`ulimit -n`) or use fewer --workers"),
}


def os_error_message(exc: OSError, doing: str = "") -> tuple[str, str]:
    """(one-line reason with the path, hint) for an OSError; ``doing`` says what was under way."""
    import errno as errno_mod

    name = errno_mod.errorcode.get(exc.errno or 0, "")
    what, hint = _OS_ERRORS.get(name, (exc.strerror or str(exc), "run again with --debug for the details"))
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p)
    where = f"{paths}: " if paths else ""
    return f"{where}{what}" + (f" ({doing})" if doing else ""), hint
