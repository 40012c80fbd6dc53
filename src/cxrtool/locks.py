"""One writer per workspace: OS file locks (``fcntl.flock``) on files in ``<workspace>/.locks/``.

Why flock and not a pid file: the kernel drops a flock when its holder dies, ``kill -9`` included,
so a lock left by a killed run is simply free for the next one (no stale-pid guessing, no clean-up
step). The lock file also records who holds it (pid, host, command, since), for the waiting message.

Lock names: ``embed-images`` (a whole-archive embed holds it exclusively; each part of a
partitioned run holds it *shared* plus its own ``embed-images.part-IIII-of-NNNN`` exclusively, so
parts run in parallel but never beside a whole-archive run or a second copy of themselves),
``embed-reports``, ``index-images``, ``index-reports``. Readers (search, serve, validate) take no
lock: writers only ever publish whole files by rename, so a reader sees an old or a new state.

Network filesystems: NFSv4 and Lustre (mounted with ``-o flock``) honour flock across machines;
older NFS, CIFS and FUSE mounts may not, or may honour it only on one machine. A workspace on such
a filesystem gets a one-line note, and a filesystem that refuses locks outright gets a one-line
error with what to do (docs/workspace.md). ``CXRTOOL_LOCKS=off`` turns locking off for users who
guarantee one writer themselves.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import datetime
from pathlib import Path

from cxrtool.errors import WorkspaceBusyError, WorkspaceError, os_error_message
from cxrtool.notes import say as _say

LOCKS_ENV = "CXRTOOL_LOCKS"
LOCK_DIR = ".locks"
# Filesystems on which flock may be unsupported or seen by one machine only.
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "gpfs", "beegfs", "glusterfs", "ceph",
                       "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "9p", "afs", "pvfs2", "orangefs")
_NO_LOCK_ERRNOS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_warned: set[str] = set()


def filesystem_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` ("ext4", "nfs4", ...; "" if unknown),
    read from /proc/self/mountinfo (the longest mount point that is a prefix of the path)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    target = os.path.realpath(path)
    best, kind = "", ""
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, right.split()[0]
    return kind


def _network_note(root: Path, say: Callable[[str], None]) -> None:
    kind = filesystem_type(root)
    if kind in NETWORK_FILESYSTEMS and str(root) not in _warned:
        _warned.add(str(root))
        say(f"note: {root} is on {kind}: its file locks may not be seen from other machines; run one embed "
            "(or one --part-index) per workspace at a time across machines (docs/workspace.md)")


def _holder(fh, patience: float = 0.5) -> str:
    """Who holds the lock, from what they wrote into the lock file. The holder writes its record
    just after taking the lock, so an empty file is read again for up to ``patience`` seconds (two
    embeds started together: the second found the lock taken and the record not yet written)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fh.seek(0)
            info = json.loads(fh.read() or "{}")
        except (OSError, ValueError):
            info = {}
        if info or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if not info:
        return "another process"
    if info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
        return "another process"
    command = info.get("command", "cxrtool")
    return f"`{command}` (pid {info.get('pid')} on {info.get('host')}, since {info.get('since')})"


def _alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)  # type: ignore[arg-type]
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _flock(fh, mode: int, path: Path) -> bool:
    """flock; False when it would block (``LOCK_NB``); one-line error where locks are unsupported."""
    try:
        fcntl.flock(fh.fileno(), mode)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_LOCK_ERRNOS:
            kind = filesystem_type(path) or "this filesystem"
            raise WorkspaceError(
                f"cannot lock {path}: {kind} does not support file locks ({os.strerror(exc.errno)})",
                f"put the workspace on a local disk, or mount with lock support (NFS: not `nolock`; Lustre: "
                f"`-o flock`); if you make sure only one writer runs, set {LOCKS_ENV}=off") from None
        raise


def _record(fh, command: str) -> None:
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                             "since": datetime.now().isoformat(timespec="seconds")}))
        fh.flush()
    except OSError:
        pass  # informational only


@contextmanager
def _one(path: Path, command: str, shared: bool, wait: bool, what: str, say: Callable[[str], None]) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - closed below; never truncated before the lock is held
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if not _flock(fh, mode | fcntl.LOCK_NB, path):
            holder = _holder(fh)
            if not wait:
                raise WorkspaceBusyError(f"{what} is in use by {holder}",
                                         "wait for it to finish, or run again without --no-wait to wait for it")
            say(f"waiting: {what} is in use by {holder} (Ctrl-C stops; --no-wait refuses instead)")
            t = time.monotonic()
            _flock(fh, mode, path)
            say(f"lock taken after {time.monotonic() - t:.0f}s")
        if not shared:
            _record(fh, command)
        yield
        if not shared:
            with suppress(OSError):
                fh.truncate(0)  # no stale holder once released (a killed holder's record is checked by pid)
    finally:
        fh.close()  # closing drops the lock


@contextmanager
def workspace_lock(root: Path, name: str, command: str, wait: bool = True, part: str | None = None,
                   say: Callable[[str], None] = _say) -> Iterator[None]:
    """Hold ``name`` for the block (with ``part``: ``name`` shared + ``name.part`` exclusive).
    ``wait`` False refuses at once with :class:`WorkspaceBusyError` when another writer holds it."""
    if os.environ.get(LOCKS_ENV, "").lower() in ("off", "0", "no", "false"):
        yield
        return
    locks = root / LOCK_DIR
    try:
        locks.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkspaceError(*os_error_message(exc, f"creating {locks}")) from None
    _network_note(root, say)
    with ExitStack() as stack:
        what = f"workspace {root} ({name})"
        stack.enter_context(_one(locks / f"{name}.lock", command, part is not None, wait, what, say))
        if part is not None:
            stack.enter_context(_one(locks / f"{name}.{part}.lock", command, False, wait, f"{what} ({part})", say))
        yield
