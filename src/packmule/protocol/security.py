"""The shared secret, and the CurveZMQ keys derived from it.

Manager and workers hold the same secret (a password file, or the
``PACKMULE_PASSWORD`` environment variable; never a command-line argument).
Both CURVE key pairs, the manager's and the workers', are derived from it, so:

* a worker only completes the handshake if it knows the manager's public key,
  i.e. holds the secret (and traffic is encrypted);
* the manager's ZAP handler admits only the derived worker key.

Nothing is unpickled before that handshake: an unauthenticated peer never
gets a message through to the manager's socket at all.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.utils.z85

from ..errors import AuthenticationError

PASSWORD_ENV = "PACKMULE_PASSWORD"


@dataclass(frozen=True)
class CurveKeys:
    """The server pair (manager) and client pair (workers), z85-encoded."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes


def _pair(secret: bytes, role: bytes) -> tuple[bytes, bytes]:
    raw = hashlib.blake2b(secret, digest_size=32, person=b"packmule-" + role).digest()
    sec = zmq.utils.z85.encode(raw)
    return zmq.curve_public(sec), sec


def derive_keys(secret: bytes) -> CurveKeys:
    """Derive both CURVE key pairs from the shared secret."""
    if not secret:
        raise AuthenticationError("the password is empty; put a secret of some length in it")
    spub, ssec = _pair(secret, b"server")
    cpub, csec = _pair(secret, b"client")
    return CurveKeys(spub, ssec, cpub, csec)


def read_password_file(path: str | os.PathLike[str]) -> bytes:
    """The secret in a password file (one trailing newline is ignored)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AuthenticationError(
            f"cannot read password file {p}: {exc.strerror}; "
            "pass the manager's password file with --password-file"
        ) from None
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    if not data:
        raise AuthenticationError(f"password file {p} is empty; write the shared secret into it")
    return data


def load_secret(password_file: str | os.PathLike[str] | None) -> bytes | None:
    """The secret from a file, else from ``$PACKMULE_PASSWORD``, else None."""
    if password_file is not None:
        return read_password_file(password_file)
    env = os.environ.get(PASSWORD_ENV)
    return env.encode() if env else None


def write_new_password_file(path: Path) -> bytes:
    """Create a fresh random secret in ``path`` readable by the owner only (0600)."""
    secret = secrets.token_urlsafe(32).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)  # also when the file already existed
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    return secret
