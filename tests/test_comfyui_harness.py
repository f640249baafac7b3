"""The real-ComfyUI harness itself: server, HTTP API, in-process import and the web UI.

Only ComfyUI's core nodes are used here, so these tests say whether the harness works,
whatever state our own nodes are in.
"""

from __future__ import annotations

import uuid

import pytest
from PIL import Image

import comfyui_harness as harness


def empty_image_prompt(prefix: str, color: int = 0x336699, size: int = 32) -> dict:
    """API format: EmptyImage -> SaveImage."""
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": size, "height": size, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def empty_image_ui_workflow(prefix: str, color: int = 0x993366, save_type: str = "SaveImage") -> dict:
    """UI format (what the Save menu writes): EmptyImage -> SaveImage."""
    return {
        "last_node_id": 2, "last_link_id": 1,
        "nodes": [
            {"id": 1, "type": "EmptyImage", "pos": [80, 80], "size": [300, 130], "flags": {}, "order": 0,
             "mode": 0, "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
             "properties": {"Node name for S&R": "EmptyImage"}, "widgets_values": [48, 48, 1, color]},
            {"id": 2, "type": save_type, "pos": [440, 80], "size": [300, 300], "flags": {}, "order": 1,
             "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
             "properties": {"Node name for S&R": save_type}, "widgets_values": [prefix]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
        "groups": [], "config": {}, "extra": {}, "version": 0.4,
    }


@pytest.mark.integration
def test_server_starts_with_our_pack_linked(comfyui_server):
    log = comfyui_server.log_text()
    assert "ComfyUI version: 0.3.75" in log
    assert f"custom_nodes/{harness.PACK_LINK_NAME}" in log, "our pack was not among the custom nodes"
    assert harness.import_failures(log) == []
    info = comfyui_server.object_info()
    assert {"EmptyImage", "SaveImage", "VAELoader", "CLIPVisionLoader"} <= set(info)
    assert comfyui_server.object_info("EmptyImage")["output"] == ["IMAGE"]


@pytest.mark.integration
def test_import_failures_are_detected_in_a_log():
    log = (
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nImportError: boom\n"
        f"Cannot import /b/custom_nodes/{harness.PACK_LINK_NAME} module for custom nodes: boom\n"
        f"   0.0 seconds (IMPORT FAILED): /b/custom_nodes/{harness.PACK_LINK_NAME}\n"
        "   0.0 seconds (IMPORT FAILED): /b/custom_nodes/someone-else\n"
    )
    failures = harness.import_failures(log)
    assert any("ImportError: boom" in line for line in failures)
    assert not any("someone-else" in line for line in failures)


@pytest.mark.integration
def test_core_workflow_runs_through_the_http_api(comfyui_server):
    prefix = f"harness/api-{uuid.uuid4().hex[:8]}"
    history = comfyui_server.run(empty_image_prompt(prefix))
    (path,) = comfyui_server.output_files(history, "2")
    with Image.open(path) as image:
        assert image.size == (32, 32)
        assert image.getpixel((0, 0))[:3] == (0x33, 0x66, 0x99)


@pytest.mark.integration
def test_pack_web_directory_and_example_workflows_are_served(comfyui_server):
    # Whatever the pack holds today: every listed extension and example workflow must load.
    for url in comfyui_server.extensions():
        assert comfyui_server.get(url).status_code == 200, url
    for name, workflow in comfyui_server.example_workflows().items():
        assert isinstance(workflow, dict) and workflow, name


@pytest.mark.integration
def test_invalid_prompt_raises_with_node_errors(comfyui_server):
    prompt = empty_image_prompt("harness/invalid")
    prompt["1"]["inputs"]["width"] = "not a number"
    with pytest.raises(harness.ComfyUIPromptError) as raised:
        comfyui_server.queue(prompt)
    assert "1" in raised.value.details["node_errors"]


@pytest.mark.integration
def test_execution_error_raises_with_node_and_message(comfyui_server):
    prompt = empty_image_prompt(f"../escape-{uuid.uuid4().hex[:8]}")  # SaveImage refuses to leave output/
    with pytest.raises(harness.ComfyUIPromptError) as raised:
        comfyui_server.run(prompt)
    message = str(raised.value)
    assert "SaveImage" in message and "outside the output folder" in message


@pytest.mark.integration
def test_comfyui_imports_in_process(comfy_inprocess, comfy_base_dir):
    nodes = comfy_inprocess
    assert harness.PACK_LINK_NAME in nodes.LOADED_MODULE_DIRS
    import folder_paths

    assert folder_paths.base_path == str(comfy_base_dir.resolve())
    (image,) = nodes.NODE_CLASS_MAPPINGS["EmptyImage"]().generate(8, 4, 2, 0xFF0000)
    assert tuple(image.shape) == (2, 4, 8, 3)
    assert image[0, 0, 0].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.integration
@pytest.mark.browser
def test_ui_loads_and_runs_a_core_workflow(browser_page, comfyui_server):
    prefix = f"harness/ui-{uuid.uuid4().hex[:8]}"
    loaded = harness.load_workflow_in_ui(browser_page, comfyui_server.base_url, empty_image_ui_workflow(prefix))
    assert loaded["missing_node_types"] == []
    assert not loaded["missing_nodes_dialog"], loaded["dialogs"]
    assert loaded["graph_node_count"] == 2
    assert harness.graph_to_prompt(browser_page)["2"]["inputs"]["filename_prefix"] == prefix

    history = harness.run_in_ui(browser_page, comfyui_server)
    (path,) = comfyui_server.output_files(history, "2")
    assert path.is_file()
    browser_page.wait_for_timeout(300)  # let the UI draw the finished run
    assert harness.save_screenshot(browser_page, "ui-core-workflow").stat().st_size > 0


@pytest.mark.integration
@pytest.mark.browser
def test_ui_reports_missing_node_types(browser_page, comfyui_server):
    workflow = empty_image_ui_workflow("harness/missing", save_type="CREwardNoSuchNode")
    loaded = harness.load_workflow_in_ui(browser_page, comfyui_server.base_url, workflow)
    assert loaded["missing_node_types"] == ["CREwardNoSuchNode"]
    assert loaded["missing_nodes_dialog"], loaded["dialogs"]
