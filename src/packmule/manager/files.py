"""Names under which cacheable input files are kept on workers."""

from __future__ import annotations

import hashlib
import os


def cache_name(local_path: str) -> str:
    """A name that changes when the file's path, size or modification time changes."""
    st = os.stat(local_path)
    ident = f"{os.path.abspath(local_path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    digest = hashlib.sha256(ident).hexdigest()[:24]
    return f"file-{digest}-{os.path.basename(local_path)}"
