"""Files only this OS user may read: generated secrets (the embedded PostgreSQL's password, the dashboard's
access token, the accounts' encryption key) and the services' log files, which can hold personal data.

Invariants: a private directory is created with mode 0700 and a private file with mode 0600 *at creation* (the
mode is given to open(), never fixed afterwards with chmod, so there is no moment where another user could
open it). An existing directory or file that another user owns, or that group/others may write, is refused
with an error saying what to fix — a secret in a place someone else controls is not a secret.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO


class PrivateFileError(Exception):
    """A private file or directory that is not private; the message says which and what to do."""


def private_dir(path: Path) -> Path:
    """`path` as a directory only this user can enter (created 0700 if missing)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_owned(path, forbidden=stat.S_IRWXG | stat.S_IRWXO, fix=f"chmod 700 {path}")
    return path


def _check_owned(path: Path, forbidden: int, fix: str) -> None:
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise PrivateFileError(f"{path} belongs to another user (uid {info.st_uid}); crmsync keeps secrets only "
                               "in files of its own user: remove it or point crmsync elsewhere")
    if stat.S_IMODE(info.st_mode) & forbidden:
        raise PrivateFileError(f"{path} can be read or written by other users (mode "
                               f"{stat.S_IMODE(info.st_mode):o}); fix it with `{fix}`")


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write `data` to `path` with mode 0600 (atomically, through a temporary file in the same directory).
    With `exclusive`, an existing file is kept and False is returned (another process got there first)."""
    path = Path(path)
    private_dir(path.parent)
    if exclusive:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return True
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    temporary.replace(path)
    return True


def read_private(path: Path) -> bytes:
    """The content of a private file; refused when other users may read or change it."""
    path = Path(path)
    _check_owned(path, forbidden=stat.S_IRWXG | stat.S_IRWXO, fix=f"chmod 600 {path}")
    return path.read_bytes()


def generated_secret(path: Path, nbytes: int = 32) -> str:
    """The secret stored in `path`, generated (URL-safe text, `nbytes` of randomness) on first use."""
    write_private(path, secrets.token_urlsafe(nbytes).encode(), exclusive=True)
    return read_private(path).decode().strip()


def open_log(path: Path) -> BinaryIO:
    """A log file opened for appending, created 0600 (an older, wider file is narrowed to 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")
