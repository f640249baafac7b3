"""A client of the OpenAI-compatible chat completions API (vLLM, Ollama, LM Studio, hosted), on the
official ``openai`` SDK (``pip install "comfyui-creward[train]"``).

The SDK sends the requests, applies the timeout and retries 408, 409, 429, 5xx, timeouts and
dropped connections with exponential back-off (0.5 s doubling up to 8 s, with jitter), or the
server's ``Retry-After`` when it gives one (up to two minutes). This module adds what labelling
needs on top: the counts of HTTP requests, retries and reported tokens (from the HTTP client's
event hooks), a warning per failed attempt, errors that name the endpoint and say what was
expected, and the API key kept out of every log line, error and answer
(:meth:`ChatClient.redact`). One client is shared by the labelling threads.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.errors import CREwardError, MissingDependencyError

logger = logging.getLogger(__name__)

ENDPOINT_ENV = "CREWARD_LVLM_ENDPOINT"
MODEL_ENV = "CREWARD_LVLM_MODEL"
API_KEY_ENVS = ("CREWARD_LVLM_API_KEY", "OPENAI_API_KEY")
CHAT_PATH = "/chat/completions"
# The statuses the openai SDK retries (besides timeouts and connection errors).
RETRIED_STATUSES = "408, 409, 429 and 5xx"

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class LVLMError(CREwardError):
    """The LVLM endpoint failed: unreachable after retries, refused the request, or did not answer
    with a chat completion."""


class LVLMStopped(Exception):
    """A request was not sent because the run is stopping (not an error of the endpoint)."""


@dataclass
class ChatResult:
    """One chat completion: the answer text and the tokens the server says it used (if any)."""

    text: str
    total_tokens: int | None
    attempts: int


def image_data_url(path: str | os.PathLike) -> str:
    """A ``data:`` URL holding the bytes of the image file ``path`` (base64)."""
    path = Path(path)
    mime = _MIME.get(path.suffix.lower(), "image/png")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CREwardError(f"cannot read image {path}: {error.strerror or error}; expected a readable image file") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def api_base(endpoint: str) -> str:
    """The API base (``http://host:8000/v1``) of an endpoint given with or without ``/chat/completions``."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise LVLMError(f"LVLM endpoint {endpoint!r} must be an http:// or https:// URL such as http://127.0.0.1:8000/v1")
    return endpoint.removesuffix(CHAT_PATH)


def chat_completions_url(endpoint: str) -> str:
    """``{api base}/chat/completions``: where the requests go."""
    return api_base(endpoint) + CHAT_PATH


def resolve_settings(endpoint: str | None, model: str | None, api_key: str | None) -> tuple[str, str, str | None]:
    """Endpoint, model and API key from the arguments, else the environment.

    Environment: ``CREWARD_LVLM_ENDPOINT``, ``CREWARD_LVLM_MODEL``, and the key from
    ``CREWARD_LVLM_API_KEY`` or else ``OPENAI_API_KEY`` (a local server usually needs none).
    """
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV)
    model = model or os.environ.get(MODEL_ENV)
    if not endpoint:
        raise LVLMError(f"no LVLM endpoint: pass --endpoint URL (e.g. http://127.0.0.1:8000/v1) or set {ENDPOINT_ENV}")
    if not model:
        raise LVLMError(f"no LVLM model: pass --model NAME or set {MODEL_ENV}")
    api_base(endpoint)  # validates the URL
    if not api_key:
        api_key = next((os.environ[name] for name in API_KEY_ENVS if os.environ.get(name)), None)
    return endpoint, model, api_key


def _openai():
    try:
        import openai
    except ImportError:
        raise MissingDependencyError("openai", "creward train label", 'openai (or: pip install "comfyui-creward[train]")') from None
    return openai


class ChatClient:
    """Posts chat requests to one OpenAI-compatible endpoint through the ``openai`` SDK; thread-safe.

    Args:
        timeout: seconds per HTTP request.
        retries: retries of a request after a retryable failure (the SDK's ``max_retries``).
        temperature: sent when not None.
        max_answer_tokens: ``max_tokens`` of each answer; 0 or None: not sent.
        stop_event: once set, :meth:`chat` raises :class:`LVLMStopped` instead of sending.
    """

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 5,
        temperature: float | None = 0.0,
        max_answer_tokens: int | None = 512,
        stop_event: threading.Event | None = None,
    ):
        openai = _openai()
        self.url = chat_completions_url(endpoint)
        self.model = model
        self._api_key = api_key or None
        self.timeout = float(timeout)
        self.retries = max(int(retries), 0)
        self.temperature = temperature
        self.max_answer_tokens = max_answer_tokens or None
        self.stop_event = stop_event or threading.Event()
        self._lock = threading.Lock()
        self._attempts = threading.local()  # HTTP attempts of the chat call running in this thread
        self.requests = 0  # HTTP requests sent, retries included
        self.retried = 0  # of which retries
        self.tokens = 0  # total tokens reported by the server
        self.usage_reported = False
        http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._on_request], "response": [self._on_response]})
        self._client = openai.OpenAI(
            base_url=api_base(endpoint),
            # The SDK insists on a key; without one, chat() omits the Authorization header instead.
            api_key=self._api_key or "no-key",
            timeout=self.timeout,
            max_retries=self.retries,
            http_client=http_client,
        )

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(url={self.url!r}, model={self.model!r}, api_key={'***' if self._api_key else None})"

    def redact(self, text: str) -> str:
        """``text`` with the API key (if any) replaced by ``***``."""
        if self._api_key and text:
            return text.replace(self._api_key, "***")
        return text

    # -- event hooks of the HTTP client (they run in the thread that sends) -----------------
    def _on_request(self, request) -> None:
        self._attempts.count = getattr(self._attempts, "count", 0) + 1
        with self._lock:
            self.requests += 1
            if self._attempts.count > 1:
                self.retried += 1

    def _on_response(self, response) -> None:
        if response.status_code < 400:
            return
        response.read()
        snippet = self.redact(response.text[:300]).strip()
        left = self.retries + 1 - getattr(self._attempts, "count", 1)
        logger.warning(
            "%s answered HTTP %d%s%s", self.url, response.status_code, f": {snippet}" if snippet else "",
            f" (attempt {self.retries + 1 - left} of {self.retries + 1}; {RETRIED_STATUSES} are retried)" if left else "",
        )

    # -- one chat ----------------------------------------------------------------------------
    def chat(self, messages: list[dict[str, Any]]) -> ChatResult:
        """Send ``messages`` and return the answer; the SDK retries transient failures.

        Raises :class:`LVLMError` when the endpoint stays unreachable or failing after the
        retries, or answers with a non-retryable HTTP error or something that is not a chat
        completion; :class:`LVLMStopped` when ``stop_event`` is set before sending.
        """
        openai = _openai()
        if self.stop_event.is_set():
            raise LVLMStopped()
        options: dict[str, Any] = {} if self._api_key else {"extra_headers": {"Authorization": openai.Omit()}}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.max_answer_tokens:
            options["max_tokens"] = self.max_answer_tokens
        self._attempts.count = 0
        try:
            completion = self._client.chat.completions.create(model=self.model, messages=messages, **options)
        except openai.APIStatusError as error:
            snippet = self.redact(error.response.text[:300]).strip()
            problem = f"{self.url} answered HTTP {error.status_code}" + (f": {snippet}" if snippet else "")
            hint = " (check the API key)" if error.status_code in (401, 403) else ""
            raise LVLMError(f"{problem}{hint}{self._gave_up()}; expected an OpenAI-compatible chat completion") from None
        except openai.APIConnectionError as error:  # refused, reset, DNS, timeouts (APITimeoutError)
            cause = error.__cause__ or error
            raise LVLMError(self.redact(f"cannot reach {self.url}: {type(cause).__name__}: {cause}{self._gave_up()}")) from None
        except openai.APIError as error:  # an answer the SDK could not read as a completion
            raise LVLMError(self.redact(f"{self.url} did not answer with an OpenAI chat completion: {error}")) from None
        return self._result(completion, self._attempts.count)

    def _gave_up(self) -> str:
        attempts = getattr(self._attempts, "count", 1)
        return f" (gave up after {attempts} attempts)" if attempts > 1 else ""

    def _result(self, completion, attempts: int) -> ChatResult:
        choices = getattr(completion, "choices", None)
        message = choices[0].message if choices else None
        if message is None:
            raise LVLMError(f"{self.url} did not answer with an OpenAI chat completion (JSON with choices[0].message)")
        usage = getattr(completion, "usage", None)
        total = getattr(usage, "total_tokens", None) if usage is not None else None
        if not isinstance(total, int) and usage is not None:
            parts = [getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)]
            total = sum(parts) if all(isinstance(part, int) for part in parts) else None
        with self._lock:
            if isinstance(total, int):
                self.tokens += total
                self.usage_reported = True
        content = message.content
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(part.get("text", "") if isinstance(part, dict) else str(getattr(part, "text", "")) for part in content)
        return ChatResult(text=self.redact(content or ""), total_tokens=total if isinstance(total, int) else None, attempts=attempts)
