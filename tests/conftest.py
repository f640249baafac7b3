"""Shared fixtures. The real work lives in ``comfyui_harness``; add new fixtures below.

ComfyUI fixtures (all build or reuse ComfyUI 0.3.75 via ``comfyui_setup``; none skips):

- ``comfyui_path`` (session): the ComfyUI folder (``COMFYUI_PATH`` or ``.cache/comfyui``).
- ``comfy_base_dir`` (session): the ``--base-directory`` shared by the server and in-process
  ComfyUI, with ``custom_nodes/comfyui-creward`` linked to this repository.
- ``comfyui_servers`` (session): ``start(extra_args=(), base_dir=None) -> ComfyUIClient`` for
  extra servers (``--cache-none``...); all are stopped at the end of the session.
- ``comfyui_server`` (session): the shared server's ``ComfyUIClient`` (the front end ComfyUI
  0.3.75 pins, 1.32.9, from site-packages).
- ``comfyui_server_newest_frontend`` (session): a second server on the same base directory
  serving the newest front end (``comfyui_setup.NEWEST_FRONTEND_VERSION``) with
  ``--front-end-root``.
- ``comfy_inprocess`` (session): ComfyUI's ``nodes`` module imported into the test process.
- ``browser`` (session) / ``browser_page`` (function): Playwright on Debian's Chromium; the
  page gets a screenshot and console log in ``artifacts/`` when its test fails. Skipped when
  Chromium is missing, except on CI (``CI=true``), where that fails.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # so tests/ helpers import under any import mode

import comfyui_harness as harness  # noqa: E402
from comfyui_setup import ComfyUISetupError, ensure_comfyui, ensure_frontend  # noqa: E402

_REPORTS = pytest.StashKey[dict]()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    item.stash.setdefault(_REPORTS, {})[report.when] = report


def _failed(request) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(report.failed for report in reports.values())


@pytest.fixture(scope="session")
def comfyui_path():
    try:
        return ensure_comfyui()
    except ComfyUISetupError as error:
        pytest.fail(f"could not build ComfyUI: {error}", pytrace=False)


@pytest.fixture(scope="session")
def comfy_base_dir(tmp_path_factory):
    return harness.make_base_dir(tmp_path_factory.mktemp("comfy_base"))


@pytest.fixture(scope="session")
def comfyui_servers(comfyui_path, comfy_base_dir):
    servers: list[harness.ComfyUIServer] = []

    def start(extra_args=(), base_dir=None) -> harness.ComfyUIClient:
        server = harness.ComfyUIServer(comfyui_path, base_dir or comfy_base_dir, extra_args=extra_args)
        servers.append(server)
        try:
            return server.start()
        except RuntimeError as error:
            pytest.fail(str(error), pytrace=False)

    start.servers = servers
    yield start
    for server in servers:
        server.stop()
        if server.log_path.is_file():  # CI keeps artifacts/: the logs help after a failure
            harness.artifact_path(f"comfyui-server-{server.port}.log").write_text(
                server.client.log_text() if server.client else "")


@pytest.fixture(scope="session")
def comfyui_server(comfyui_servers):
    client = comfyui_servers()
    failures = harness.import_failures(client.log_text())
    if failures:
        pytest.fail("ComfyUI could not import our pack:\n" + "\n".join(failures), pytrace=False)
    return client


@pytest.fixture(scope="session")
def comfyui_server_newest_frontend(comfyui_servers):
    try:
        frontend = ensure_frontend()
    except ComfyUISetupError as error:
        pytest.fail(f"could not install the newest front end: {error}", pytrace=False)
    return comfyui_servers(extra_args=("--front-end-root", str(frontend)))


@pytest.fixture(scope="session")
def comfy_inprocess(comfyui_path, comfy_base_dir):
    try:
        return harness.load_comfyui_inprocess(comfyui_path, comfy_base_dir)
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def browser():
    if harness.chromium_executable() is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if harness.in_ci():
            pytest.fail(message + "; CI must have it", pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = harness.launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def browser_page(browser, request):
    context = browser.new_context(viewport=harness.VIEWPORT)
    page = context.new_page()
    page.console_log = harness.attach_console_log(page)
    yield page
    if _failed(request):
        name = request.node.nodeid.split("::", 1)[-1]
        try:
            harness.save_screenshot(page, f"failed-{name}")
        except Exception as error:  # the page may be gone; the test's own error matters more
            page.console_log.append(f"(no screenshot: {error})")
        harness.artifact_path(f"failed-{name}.console.txt").write_text("\n".join(page.console_log))
    context.close()


# -- creward score-dataset (tests/test_dataset_*.py) ----------------------------------------
@pytest.fixture(scope="session")
def dataset_weights(tmp_path_factory):
    """Tiny random CLIP weights + converted head, shared by the score-dataset tests of both engines."""
    import dataset_data

    return dataset_data.weights(tmp_path_factory.mktemp("dataset_weights"))


@pytest.fixture(scope="session")
def dataset_inputs(tmp_path_factory):
    """One input of every kind plus the bad ones (``dataset_checks.mixed_inputs``); read-only."""
    import dataset_checks

    return dataset_checks.mixed_inputs(tmp_path_factory.mktemp("dataset_inputs"))


@pytest.fixture(scope="session")
def dataset_expected(dataset_inputs, dataset_weights):
    """``creward score --json`` on the image files of ``dataset_inputs``, by path."""
    import dataset_checks

    built = dataset_inputs
    files = built["folder"] + built["listed"] + [file for files in built["extracted"].values() for file in files]
    return dataset_checks.expected_scores(files, dataset_weights)
