"""Loading the user's private key from disk, refused when others can read it (as OpenSSH does).

OpenSSH's ``sshkey_perm_ok`` ignores a private key file that its group or others may read,
in these words::

    @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
    @         WARNING: UNPROTECTED PRIVATE KEY FILE!          @
    @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
    Permissions 0644 for '/home/alice/.ssh/id_ed25519' are too open.
    It is required that your private key files are NOT accessible by others.
    This private key will be ignored.

Every place the client reads a private key (``jumpgate ssh``/``scp``/``ls``/``config``, the
session daemon, ``jumpgate ctl --identity``) goes through :func:`load_private_key_file`,
which checks the mode of the file it opened (``fstat``: no window between check and read)
and says the same in one line. A key whose mode others can read is already exposed: it is
not used, and no looser mode is accepted for convenience (docs/security.md F2).
"""
from __future__ import annotations

import os
import stat

from ssh_proto.errors import KeyFormatError
from ssh_proto.keys import PrivateKey, load_private_key

__all__ = ["MAX_KEY_FILE", "UnprotectedKeyError", "load_private_key_file", "unprotected_key_problem"]

MAX_KEY_FILE = 64 * 1024


class UnprotectedKeyError(KeyFormatError):
    """The key file's group or others may read or write it; ``str()`` is OpenSSH's warning."""


def unprotected_key_problem(path: os.PathLike | str, mode: int) -> str | None:
    """OpenSSH's warning for a key file of ``mode`` (group/other bits set), else None."""
    if not mode & 0o077:
        return None
    return (f"WARNING: UNPROTECTED PRIVATE KEY FILE! Permissions {stat.S_IMODE(mode):04o} for "
            f"'{os.fspath(path)}' are too open. It is required that your private key files are NOT "
            f"accessible by others. This private key will be ignored (chmod 600 it, or run `jumpgate login` "
            f"for a fresh one)")


def load_private_key_file(path: os.PathLike | str) -> PrivateKey:
    """The private key in ``path``; :class:`UnprotectedKeyError` when others may read it,
    KeyFormatError when it is not a key, OSError when it cannot be read."""
    with open(path, "rb") as f:
        problem = unprotected_key_problem(path, os.fstat(f.fileno()).st_mode)
        if problem is not None:
            raise UnprotectedKeyError(problem)
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise KeyFormatError(f"{os.fspath(path)}: too large to be a private key")
    return load_private_key(data)
