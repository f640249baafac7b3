"""Writing output files so that no reader ever sees half of one, with the usual permissions.

Every file CREward writes (head files, scores, manifests, heatmaps, feature shards) is written
to a temporary name in the same folder and renamed into place when complete. The finished file
gets the permissions a newly created file normally gets (``0666`` minus the umask, usually
``0644``): temporary files and safetensors' writer create ``0600`` files, which a ComfyUI
running as another user could not read.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def default_file_mode(folder: bool = False) -> int:
    """``0666`` (``0777`` for a folder) minus the process umask: the mode ``open(path, "w")``
    (``mkdir``) would give; ``tempfile`` makes ``0600`` files and ``0700`` folders."""
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write the file to.

    When the block finishes, the file gets the default permissions and replaces ``path``; when
    it raises (or is interrupted), the temporary file is removed and ``path`` is untouched. The
    parent folder is created if needed.

    Example::

        with atomic_output("scores.csv") as temporary:
            temporary.write_text(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_output`; returns the path."""
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding=encoding, newline="") as stream:
            stream.write(text)
    return Path(path)
