"""Reusable pieces for tests against a real ComfyUI 0.3.75: server, in-process, browser.

The pytest fixtures in ``tests/conftest.py`` are thin wrappers over this module; import from
here directly when a test needs something the fixtures do not give (a second server with other
flags, a differently laid-out base directory, ...).

Pieces:

- :func:`make_base_dir` lays out a ComfyUI ``--base-directory`` with this repository linked
  into ``custom_nodes/comfyui-creward`` and the model folders our nodes use.
- :class:`ComfyUIServer` starts ``main.py`` as a subprocess (log captured to a file) and hands
  out a :class:`ComfyUIClient` (``queue``/``wait``/``run``/``outputs``/``log_text``...).
- :func:`load_comfyui_inprocess` imports ComfyUI into the test process and returns its
  ``nodes`` module with comfy_extras and our pack loaded.
- :func:`launch_chromium`, :func:`open_ui`, :func:`load_workflow_in_ui`,
  :func:`queue_in_ui`, :func:`run_in_ui`, :func:`save_screenshot` drive the web UI with
  Playwright in Debian's Chromium.

Nothing here imports ``creward``: the pack is exercised the way ComfyUI loads it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = REPO_ROOT / "artifacts"
# custom_nodes/<PACK_LINK_NAME> is how ComfyUI names our pack: it is the key of
# nodes.LOADED_MODULE_DIRS, the URL prefix of our JS (/extensions/comfyui-creward/...) and of
# our example workflows (/api/workflow_templates/comfyui-creward/...).
PACK_LINK_NAME = "comfyui-creward"
MODEL_FOLDERS = (
    "models/creward",
    "models/creward/backbones",
    "models/clip_vision",
    "models/vae",
    "models/vae_approx",
    "models/loras",
    "models/checkpoints",
)
# user/default/{workflows,subgraphs} and user.css exist so the UI's first requests get no 404s.
DATA_FOLDERS = ("input", "output", "temp", "user/default/workflows", "user/default/subgraphs")
# Debian's Chromium, headless, on a machine with no network but the registries.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
)
VIEWPORT = {"width": 1400, "height": 900}

logger = logging.getLogger("creward.tests.comfyui_harness")


def in_ci() -> bool:
    """True on CI (``CI=true``), where missing tools must fail tests instead of skipping them."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_base_dir(base: Path | str, pack_dir: Path | str = REPO_ROOT, settings: dict | None = None) -> Path:
    """Lay out a ComfyUI ``--base-directory`` at ``base`` and return it.

    Creates ``custom_nodes/comfyui-creward`` (a symlink to ``pack_dir``), the model folders of
    :data:`MODEL_FOLDERS`, ``input/``, ``output/``, ``temp/`` and the default user's settings
    with the first-run templates dialog switched off (``Comfy.TutorialCompleted``). Tests may
    drop weight files into the model folders at any time: ComfyUI re-reads folder listings.
    """
    base = Path(base)
    for folder in ("custom_nodes", *MODEL_FOLDERS, *DATA_FOLDERS):
        (base / folder).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_LINK_NAME
    if not link.exists():
        link.symlink_to(Path(pack_dir).resolve(), target_is_directory=True)
    (base / "user" / "default" / "user.css").touch()
    settings_file = base / "user" / "default" / "comfy.settings.json"
    current = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    current.update({"Comfy.TutorialCompleted": True, **(settings or {})})
    settings_file.write_text(json.dumps(current, indent=2))
    return base


class ComfyUIPromptError(AssertionError):
    """ComfyUI refused a prompt (HTTP 400) or ran it with an error; ``details`` is its JSON."""

    def __init__(self, message: str, details: Any = None):
        super().__init__(message)
        self.details = details


class ComfyUIClient:
    """A small HTTP client for one running ComfyUI server.

    Attributes:
        base_url: ``http://127.0.0.1:PORT``.
        base_dir: the server's ``--base-directory``.
        log_path: the file the server's stdout and stderr go to.
        client_id: sent with every prompt (the web socket id, if a test opens one).
    """

    def __init__(self, base_url: str, base_dir: Path, log_path: Path, request_timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.base_dir = Path(base_dir)
        self.log_path = Path(log_path)
        self.client_id = uuid.uuid4().hex
        self.request_timeout = request_timeout
        self.session = requests.Session()

    # -- plain HTTP -------------------------------------------------------------------------
    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.request_timeout)
        return self.session.get(self.base_url + path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.request_timeout)
        return self.session.post(self.base_url + path, **kwargs)

    def object_info(self, node_type: str | None = None) -> dict:
        """``GET /object_info`` (every node type), or one node type's entry."""
        if node_type is None:
            response = self.get("/object_info")
            response.raise_for_status()
            return response.json()
        response = self.get(f"/object_info/{node_type}")
        response.raise_for_status()
        info = response.json()
        if node_type not in info:
            raise KeyError(f"ComfyUI has no node type {node_type!r}")
        return info[node_type]

    # -- prompts ----------------------------------------------------------------------------
    def queue(self, prompt: dict) -> str:
        """``POST /prompt`` an API-format graph; returns its ``prompt_id``.

        Raises:
            ComfyUIPromptError: HTTP 400 (invalid graph); the message holds ``node_errors``.
        """
        response = self.post("/prompt", json={"prompt": prompt, "client_id": self.client_id})
        if response.status_code == 400:
            details = response.json()
            raise ComfyUIPromptError(
                "ComfyUI rejected the prompt (HTTP 400):\n" + json.dumps(details, indent=2), details
            )
        response.raise_for_status()
        return response.json()["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The ``/history`` entry of a prompt, or None while it is queued or running."""
        response = self.get(f"/history/{prompt_id}")
        response.raise_for_status()
        return response.json().get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict:
        """Wait until a prompt has finished (success or error) and return its history entry.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds (the queue and log tail are
                in the message).
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and (entry.get("status") or {}).get("status_str") in {"success", "error"}:
                return entry
            if entry is not None and (entry.get("status") or {}).get("completed"):
                return entry
            if time.monotonic() > deadline:
                queue = self.get("/queue").json()
                raise TimeoutError(
                    f"prompt {prompt_id} not finished after {timeout:.0f} s; queue: "
                    f"{json.dumps(queue)[:2000]}\n--- server log tail ---\n{self.log_tail()}"
                )
            time.sleep(poll)

    def run(self, prompt: dict, timeout: float = 120.0) -> dict:
        """Queue an API-format graph, wait for it and return its history entry.

        Raises:
            ComfyUIPromptError: rejected (HTTP 400) or finished with an error; the message
                shows the execution error (node, exception, traceback) and status messages.
        """
        prompt_id = self.queue(prompt)
        entry = self.wait(prompt_id, timeout=timeout)
        check_history_success(entry, prompt_id, log_tail=self.log_tail(40))
        return entry

    @staticmethod
    def outputs(history: dict, node_id: str | int) -> dict:
        """The UI outputs one node produced (``{"images": [...]}``, ``{"text": [...]}``, ...)."""
        outputs = history.get("outputs", {})
        key = str(node_id)
        if key not in outputs:
            raise KeyError(f"node {key} has no outputs; nodes with outputs: {sorted(outputs)}")
        return outputs[key]

    def output_files(self, history: dict, node_id: str | int, key: str = "images") -> list[Path]:
        """Paths on disk of the files a node saved (SaveImage, PreviewImage, ...)."""
        roots = {"output": "output", "temp": "temp", "input": "input"}
        files = []
        for item in self.outputs(history, node_id).get(key, []):
            root = self.base_dir / roots[item.get("type", "output")]
            files.append(root / item.get("subfolder", "") / item["filename"])
        return files

    def example_workflows(self, pack: str = PACK_LINK_NAME) -> dict[str, dict]:
        """The pack's example workflows as the UI's template browser gets them, by name.

        ComfyUI lists ``<pack>/{example_workflows,example,examples,workflow,workflows}/*.json``
        (not subfolders) at ``GET /workflow_templates`` and serves each at
        ``/api/workflow_templates/<pack>/<name>.json``.
        """
        listing = self.get("/workflow_templates")
        listing.raise_for_status()
        workflows = {}
        for name in listing.json().get(pack, []):
            response = self.get(f"/api/workflow_templates/{pack}/{name}.json")
            response.raise_for_status()
            workflows[name] = response.json()
        return workflows

    def extensions(self, pack: str = PACK_LINK_NAME) -> list[str]:
        """URLs of the pack's JS extensions (its ``WEB_DIRECTORY``) that the UI will load."""
        response = self.get("/extensions")
        response.raise_for_status()
        return [url for url in response.json() if url.startswith(f"/extensions/{pack}/")]

    def free_memory(self) -> None:
        """Ask ComfyUI to unload models and drop its execution cache (``POST /free``)."""
        self.post("/free", json={"unload_models": True, "free_memory": True}).raise_for_status()

    # -- the server log ---------------------------------------------------------------------
    def log_text(self) -> str:
        """Everything the server has logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def check_history_success(entry: dict, prompt_id: str = "", log_tail: str = "") -> None:
    """Raise :class:`ComfyUIPromptError` unless a ``/history`` entry finished successfully."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success":
        return
    messages = status.get("messages", [])
    error = next((data for kind, data in messages if kind == "execution_error"), None)
    lines = [f"prompt {prompt_id} finished with status {status.get('status_str')!r}"]
    if error:
        lines.append(
            f"node {error.get('node_id')} ({error.get('node_type')}) raised "
            f"{error.get('exception_type')}: {error.get('exception_message')}"
        )
        lines.append("".join(error.get("traceback", [])))
    lines.append("status messages: " + json.dumps([kind for kind, _ in messages]))
    if log_tail:
        lines.append("--- server log tail ---\n" + log_tail)
    raise ComfyUIPromptError("\n".join(lines), entry)


def import_failures(log_text: str, pack_name: str = PACK_LINK_NAME) -> list[str]:
    """Lines of a ComfyUI log that report ``pack_name`` failing to import, with its traceback."""
    lines = log_text.splitlines()
    failed = [line for line in lines if "IMPORT FAILED" in line and pack_name in line]
    cannot = [i for i, line in enumerate(lines) if line.startswith("Cannot import") and pack_name in line]
    for index in cannot:  # the traceback is logged just before the "Cannot import" line
        start = index
        while start > 0 and not lines[start - 1].startswith("Traceback"):
            start -= 1
        failed = lines[max(start - 1, 0):index + 1] + failed
    return failed


class ComfyUIServer:
    """A ComfyUI ``main.py`` subprocess; use as a context manager or call start()/stop().

    Example::

        with ComfyUIServer(comfyui_path, base_dir, extra_args=["--cache-none"]) as client:
            history = client.run(graph)
    """

    def __init__(
        self,
        comfyui_path: Path | str,
        base_dir: Path | str,
        extra_args: Iterable[str] = (),
        port: int | None = None,
        log_path: Path | str | None = None,
        start_timeout: float = 120.0,
    ):
        self.comfyui_path = Path(comfyui_path)
        self.base_dir = Path(base_dir)
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else self.base_dir / f"comfyui-{self.port}.log"
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.client: ComfyUIClient | None = None
        self.start_seconds: float | None = None

    def command(self) -> list[str]:
        db = self.base_dir / "comfyui.db"
        return [
            sys.executable, "main.py", "--cpu",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--database-url", f"sqlite:///{db}",
            "--disable-api-nodes", "--disable-auto-launch",
            *self.extra_args,
        ]

    def start(self) -> ComfyUIClient:
        """Start the server and wait until ``/object_info`` answers.

        Raises:
            RuntimeError: the process exited, or did not answer within ``start_timeout``
                seconds; the message holds the log tail.
        """
        started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.comfyui_path, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.client = ComfyUIClient(f"http://127.0.0.1:{self.port}", self.base_dir, self.log_path)
        deadline = started + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI exited with code {self.process.returncode} during start-up: "
                    f"{' '.join(self.command())}\n--- server log tail ---\n{self.client.log_tail()}"
                )
            try:
                if self.client.get("/object_info", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"ComfyUI did not answer /object_info within {self.start_timeout:.0f} s"
                    f"\n--- server log tail ---\n{self.client.log_tail()}"
                )
            time.sleep(0.25)
        self.start_seconds = time.monotonic() - started
        logger.info("ComfyUI up on port %d in %.1f s", self.port, self.start_seconds)
        return self.client

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the server (SIGKILL after ``timeout`` s); returns its exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=timeout)

    def __enter__(self) -> ComfyUIClient:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def load_comfyui_inprocess(comfyui_path: Path | str, base_dir: Path | str):
    """Import ComfyUI into this process and return its ``nodes`` module, extras loaded.

    Once per process: ComfyUI keeps global state (``folder_paths``, ``comfy.model_management``),
    so a second call with another ``base_dir`` cannot move it and raises.

    Our pack is loaded by ComfyUI from ``custom_nodes/comfyui-creward`` as a module named by
    its path, a different module object from ``import creward``: compare node classes through
    ``nodes.NODE_CLASS_MAPPINGS``, not with ``creward.nodes``.

    Raises:
        RuntimeError: the pack did not load (the message holds ComfyUI's logged traceback),
            or ComfyUI was already imported with another base directory.
    """
    import asyncio

    comfyui_path = str(Path(comfyui_path).resolve())
    base_dir = str(Path(base_dir).resolve())
    if "folder_paths" in sys.modules:
        import folder_paths

        if os.path.abspath(folder_paths.base_path) != base_dir:
            raise RuntimeError(
                f"ComfyUI is already imported in this process with base directory "
                f"{folder_paths.base_path}, not {base_dir}"
            )
        import nodes

        return nodes
    # First on sys.path: `python -m pytest` puts the repo root (with our own nodes/ package)
    # on it, and ComfyUI's top-level `nodes`, `utils`, `server`... must win.
    if comfyui_path in sys.path:
        sys.path.remove(comfyui_path)
    sys.path.insert(0, comfyui_path)
    for shadowing in ("nodes", "utils", "server", "comfy", "app"):
        module = sys.modules.get(shadowing)
        if module is not None and not str(getattr(module, "__file__", "") or "").startswith(comfyui_path):
            raise RuntimeError(f"a module named {shadowing!r} from {module.__file__} shadows ComfyUI's")

    from comfy.cli_args import args

    args.cpu = True
    args.base_directory = base_dir
    args.disable_api_nodes = True
    import folder_paths  # noqa: F401  (reads args.base_directory at import)
    # ComfyUI's main.py imports its top-level `utils` package early; in-process nothing does, and
    # once `nodes` has put comfy/ on sys.path, `utils` would resolve to comfy/utils.py and
    # comfy_extras/nodes_images.py would fail on `utils.install_util`.
    import utils.install_util  # noqa: F401
    import nodes

    captured: list[str] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: captured.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        failed_extras = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        logging.getLogger().removeHandler(handler)
    if failed_extras:
        logger.warning("comfy_extras modules that failed to import: %s", failed_extras)
    if PACK_LINK_NAME not in nodes.LOADED_MODULE_DIRS:
        raise RuntimeError(
            f"ComfyUI did not load custom_nodes/{PACK_LINK_NAME} in-process; its warnings:\n"
            + "\n".join(captured)
        )
    return nodes


# -- the web UI -----------------------------------------------------------------------------

def chromium_executable() -> str | None:
    """Debian's Chromium (``apt-get install chromium``), or None if it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch_chromium(playwright, headless: bool = True):
    """Launch Debian's Chromium through Playwright (never Playwright's own browser download)."""
    executable = chromium_executable()
    if executable is None:
        raise FileNotFoundError("chromium is not installed: apt-get install -y chromium")
    return playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS), headless=headless)


def attach_console_log(page) -> list[str]:
    """Collect the page's console messages, page errors and failed HTTP answers in a list."""
    messages: list[str] = []
    page.on("console", lambda message: messages.append(f"console.{message.type}: {message.text}"))
    page.on("pageerror", lambda error: messages.append(f"pageerror: {error}"))
    page.on("response", lambda response: response.status >= 400 and messages.append(
        f"http {response.status}: {response.request.method} {response.url}"))
    return messages


_APP_READY_JS = """() => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph
    && Object.keys(window.LiteGraph.registered_node_types).length > 0)"""

_OPEN_DIALOGS_JS = """() => Array.from(document.querySelectorAll('.p-dialog'))
    .filter(d => d.offsetParent !== null || d.getClientRects().length > 0)
    .map(d => d.innerText.trim())"""


def open_ui(page, base_url: str, timeout: float = 60.0) -> list[str]:
    """Open ComfyUI's web UI and wait until ``window.app`` has its graph and node types.

    Closes any dialog open on arrival (the templates browser on a first run, release notes)
    with Escape; returns the texts of the dialogs it closed.
    """
    page.goto(base_url.rstrip("/") + "/", wait_until="domcontentloaded", timeout=timeout * 1000)
    page.wait_for_function(_APP_READY_JS, timeout=timeout * 1000)
    closed = []
    for _ in range(3):
        dialogs = page.evaluate(_OPEN_DIALOGS_JS)
        if not dialogs:
            break
        closed.extend(dialogs)
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)
    return closed


def _workflow_dict(workflow: dict | str | Path) -> dict:
    if isinstance(workflow, dict):
        return workflow
    path = Path(workflow)
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    return json.loads(str(workflow))


def _is_api_format(workflow: dict) -> bool:
    return "nodes" not in workflow and all(isinstance(v, dict) and "class_type" in v for v in workflow.values())


def load_workflow_in_ui(page, base_url: str, workflow: dict | str | Path, name: str = "creward-test",
                        reload: bool = False, timeout: float = 60.0) -> dict:
    """Load a workflow into the web UI the way a user's file drop does, and report on it.

    Opens the UI first unless this page already shows it (``reload=True`` forces a fresh
    load, for example to pick up model files written after the page was opened; otherwise
    ``page.evaluate("app.refreshComboInNodes()")`` re-reads the model lists). Accepts the
    UI format (``{"nodes": [...], "links": [...]}``, what the Save menu writes) or the API
    format (``{"1": {"class_type": ...}}``), as a dict, a JSON string or a ``.json`` path.

    Returns:
        ``{"node_types": [...], "missing_node_types": [...], "dialogs": [...],
        "missing_nodes_dialog": bool, "graph_node_count": int, "closed_on_open": [...]}``.
        ``missing_node_types`` lists the workflow's node types that ``LiteGraph`` does not
        know (a type the server lacks, or a pack that failed to import); ``dialogs`` holds the
        texts of the dialogs open after loading ("This workflow has missing nodes ..." among
        them when the UI found missing nodes).
    """
    data = _workflow_dict(workflow)
    closed: list[str] = []
    if reload or not page.url.startswith(base_url.rstrip("/")) or not page.evaluate(_APP_READY_JS):
        closed = open_ui(page, base_url, timeout=timeout)
    api_format = _is_api_format(data)
    result = page.evaluate(
        """async ([wf, apiFormat, name]) => {
            const types = [];
            const collect = (nodes) => { for (const n of (nodes || [])) types.push(n.type); };
            if (apiFormat) {
                for (const n of Object.values(wf)) types.push(n.class_type);
            } else {
                collect(wf.nodes);
                for (const sg of ((wf.definitions || {}).subgraphs || [])) collect(sg.nodes);
            }
            const known = window.LiteGraph.registered_node_types;
            const missing = [...new Set(types.filter(t => !(t in known)))];
            if (apiFormat) window.app.loadApiJson(wf, name);
            else await window.app.loadGraphData(wf, true, true, name);
            return {node_types: [...new Set(types)], missing_node_types: missing,
                    graph_node_count: window.app.graph.nodes.length};
        }""",
        [data, api_format, name],
    )
    page.wait_for_timeout(300)  # dialogs open asynchronously after loadGraphData resolves
    dialogs = page.evaluate(_OPEN_DIALOGS_JS)
    result["dialogs"] = dialogs
    result["missing_nodes_dialog"] = any("missing nodes" in text.lower() for text in dialogs)
    result["closed_on_open"] = closed
    return result


def queue_in_ui(page, timeout: float = 30.0) -> str:
    """Queue the workflow loaded in the UI (what the Run button does) and return the prompt id.

    The id is read from the UI's own ``POST /api/prompt`` answer (``app.queuePrompt`` does
    not return it; its boolean is unreliable in this frontend: ``!{}`` is false).

    Raises:
        ComfyUIPromptError: the server refused the prompt (``node_errors`` in the message).
    """
    def is_prompt_post(response) -> bool:
        return response.request.method == "POST" and response.url.rstrip("/").endswith("/prompt")

    with page.expect_response(is_prompt_post, timeout=timeout * 1000) as answer:
        page.evaluate("() => { window.app.queuePrompt(0, 1); }")
    response = answer.value
    body = response.json()
    if response.status != 200 or body.get("node_errors"):
        raise ComfyUIPromptError(
            f"the UI's prompt was refused (HTTP {response.status}):\n" + json.dumps(body, indent=2), body
        )
    return body["prompt_id"]


def run_in_ui(page, client: ComfyUIClient, timeout: float = 120.0) -> dict:
    """Queue the loaded workflow from the UI, wait for it, and return its history entry."""
    prompt_id = queue_in_ui(page)
    entry = client.wait(prompt_id, timeout=timeout)
    check_history_success(entry, prompt_id, log_tail=client.log_tail(40))
    return entry


def graph_to_prompt(page) -> dict:
    """The API-format graph of the workflow loaded in the UI (``app.graphToPrompt().output``)."""
    return page.evaluate("async () => (await window.app.graphToPrompt()).output")


def artifact_path(name: str) -> Path:
    """A path under ``<repo>/artifacts/`` (kept by CI); the folder is created."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return ARTIFACTS_DIR / safe


def save_screenshot(page, name: str) -> Path:
    """Save a PNG of the page to ``<repo>/artifacts/<name>.png`` and return its path."""
    path = artifact_path(name if name.endswith(".png") else name + ".png")
    page.screenshot(path=str(path))
    return path
