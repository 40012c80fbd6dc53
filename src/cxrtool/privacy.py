"""Identity handling in one place: what of a patient's identity may reach an output, and how.

Patient names, birth dates, raw IDs, accession numbers and dates are never written. Patient ID
and accession number are written as keyed hashes (HMAC-SHA256) with a secret: ``--pseudonym-key``
or $CXRTOOL_PSEUDONYM_KEY, else one random secret per installation, created on first use in the
user's config folder with owner-only permissions (its location is printed once). Never a public or
default key: anyone could recompute a pseudonym from a guessed ID. The same key links the same
patient across runs (``prepare`` and ``embed`` share it, so manifest and shard keys match). The
study date is kept only when explicitly asked for. The header fields themselves are read (and
hashed) only in ``io/dicom_header.py``. Sharing outside the hospital goes through
``cxrtool export --deidentify`` (:mod:`cxrtool.export`), which re-keys with a fresh secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cxrtool.errors import CxrError
from cxrtool.notes import note

PSEUDONYM_ENV = "CXRTOOL_PSEUDONYM_KEY"
CONFIG_ENV = "CXRTOOL_CONFIG"  # the config folder (default: $XDG_CONFIG_HOME/cxrtool, else ~/.config/cxrtool)
KEY_FILE = "pseudonym.key"
MIN_KEY_LENGTH = 12
# Keys anyone could guess: the defaults of this and similar tools, placeholders from docs.
PUBLIC_KEYS = {"cxrtool", "secret", "changeme", "password", "key", "test", "default", "pseudonym"}


def pseudonym(value: str, key: str, prefix: str = "pt-") -> str:
    """Keyed (HMAC-SHA256) pseudonym: stable per key, not reversible without it."""
    return prefix + hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def config_dir() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(base).expanduser() / "cxrtool"


def installation_key() -> str:
    """This installation's secret, created on first use (O_EXCL, mode 0600, folder 0700): two
    processes starting at once end with the same key."""
    path = config_dir() / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)  # another process made it first
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    note(f"created this installation's pseudonym key in {path} (owner-only). Patient keys are derived "
         f"from it: keep it secret and back it up, or set {PSEUDONYM_ENV} to your own")
    return _read_key(path)


def _read_key(path: Path) -> str:
    key = path.read_text().strip()
    if path.stat().st_mode & 0o077:
        raise CxrError(f"{path}: the pseudonym key is readable by other users", f"chmod 600 {path}")
    return check_key(key, str(path))


def check_key(key: str, where: str = "the pseudonym key") -> str:
    if key.lower() in PUBLIC_KEYS or len(key) < MIN_KEY_LENGTH:
        raise CxrError(f"{where}: a pseudonym key must be a secret of at least {MIN_KEY_LENGTH} characters, "
                       "not a guessable word", "leave it unset (a random key per installation is made) or use "
                       "e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`")
    return key


def resolve_key(key: str | None) -> str:
    """--pseudonym-key, else $CXRTOOL_PSEUDONYM_KEY, else this installation's secret; never a public one."""
    given = key or os.environ.get(PSEUDONYM_ENV)
    return check_key(given) if given else installation_key()

