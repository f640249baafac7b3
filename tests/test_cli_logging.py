"""The ComfyUI-hosted commands print each CREward log line once (ComfyUI's import-time
``logging.info`` would otherwise install a second, root handler), and ComfyUI's warnings still show."""

from __future__ import annotations

import subprocess
import sys


def test_creward_lines_are_printed_once_after_comfyui_is_imported(comfyui_path):
    code = (
        "import logging\n"
        "from creward.cli.main import configure_logging\n"
        "from creward.diffusion.host import setup_comfyui\n"
        "configure_logging(False)\n"
        f"setup_comfyui({str(comfyui_path)!r}, cpu=True)\n"
        "import comfy.model_management\n"  # logs with logging.info() at import
        "logging.getLogger('creward.diffusion.test').info('steering line')\n"
        "logging.getLogger('comfy.test').warning('comfy warning')\n"
        "logging.getLogger('comfy.test').info('comfy info')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if "steering line" in line] == ["INFO: steering line"], lines
    assert [line for line in lines if "comfy warning" in line] == ["WARNING comfy.test: comfy warning"], lines
    assert not [line for line in lines if "comfy info" in line], lines
