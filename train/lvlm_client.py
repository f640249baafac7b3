"""A small client of the OpenAI-compatible chat completions API (vLLM, Ollama, LM Studio, hosted).

Standard library only (``urllib``), safe to share between threads. It retries 429, 408, 5xx,
timeouts and dropped connections with exponential back-off (honouring ``Retry-After``), counts
HTTP requests, retries and the tokens the server reports, and never logs or returns the API
key: any text that could echo it (error bodies, answers) passes through :meth:`ChatClient.redact`.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.errors import CREwardError

logger = logging.getLogger(__name__)

ENDPOINT_ENV = "CREWARD_LVLM_ENDPOINT"
MODEL_ENV = "CREWARD_LVLM_MODEL"
API_KEY_ENVS = ("CREWARD_LVLM_API_KEY", "OPENAI_API_KEY")

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
MAX_RETRY_AFTER_S = 600.0

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class LVLMError(CREwardError):
    """The LVLM endpoint failed: unreachable after retries, refused the request, or did not answer
    with a chat completion."""


class LVLMStopped(Exception):
    """A request was abandoned because the run is stopping (not an error of the endpoint)."""


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


def chat_completions_url(endpoint: str) -> str:
    """``{endpoint}/chat/completions`` for an API base such as ``http://host:8000/v1``.

    An endpoint that already ends in ``/chat/completions`` is used as given.
    """
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise LVLMError(f"LVLM endpoint {endpoint!r} must be an http:// or https:// URL such as http://127.0.0.1:8000/v1")
    if endpoint.endswith("/chat/completions"):
        return endpoint
    return endpoint + "/chat/completions"


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
    if not api_key:
        api_key = next((os.environ[name] for name in API_KEY_ENVS if os.environ.get(name)), None)
    return endpoint, model, api_key


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _answer_text(content: Any) -> str:
    """The text of ``message.content``: a string, a list of parts, or null (-> "")."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


class ChatClient:
    """Posts chat requests to one OpenAI-compatible endpoint, with retries; thread-safe."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        temperature: float | None = 0.0,
        max_answer_tokens: int | None = 512,
        stop_event: threading.Event | None = None,
    ):
        self.url = chat_completions_url(endpoint)
        self.model = model
        self._api_key = api_key or None
        self.timeout = float(timeout)
        self.retries = max(int(retries), 0)
        self.backoff = max(float(backoff), 0.0)
        self.max_backoff = max(float(max_backoff), 0.0)
        self.temperature = temperature
        self.max_answer_tokens = max_answer_tokens or None
        self.stop_event = stop_event or threading.Event()
        self._lock = threading.Lock()
        self.requests = 0  # HTTP requests sent, retries included
        self.retried = 0  # of which retries
        self.tokens = 0  # total tokens reported by the server
        self.usage_reported = False

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(url={self.url!r}, model={self.model!r}, api_key={'***' if self._api_key else None})"

    def redact(self, text: str) -> str:
        """``text`` with the API key (if any) replaced by ``***``."""
        if self._api_key and text:
            return text.replace(self._api_key, "***")
        return text

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        delay = min(self.backoff * (2**attempt), self.max_backoff)
        return delay * random.uniform(0.8, 1.2)

    def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            try:
                payload = error.read()
            except Exception:  # noqa: BLE001 - the body is only for the message
                payload = b""
            return error.code, dict(error.headers.items()) if error.headers else {}, payload

    def chat(self, messages: list[dict[str, Any]]) -> ChatResult:
        """Send ``messages`` and return the answer; retries transient failures.

        Raises :class:`LVLMError` when the endpoint stays unreachable or failing after the
        retries, or answers with a non-retryable HTTP error or something that is not a chat
        completion; :class:`LVLMStopped` when ``stop_event`` is set while waiting to retry.
        """
        payload: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            payload["temperature"] = self.temperature
        if self.max_answer_tokens:
            payload["max_tokens"] = self.max_answer_tokens
        body = json.dumps(payload).encode("utf-8")
        last_problem = ""
        for attempt in range(self.retries + 1):
            if self.stop_event.is_set():
                raise LVLMStopped()
            with self._lock:
                self.requests += 1
                if attempt:
                    self.retried += 1
            retry_after = None
            try:
                status, headers, data = self._post(body)
            except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, refused/reset connections
                reason = getattr(error, "reason", error)
                last_problem = f"cannot reach {self.url}: {type(reason).__name__}: {reason}"
            else:
                if status == 200:
                    return self._result(data, attempt + 1)
                snippet = self.redact(data[:300].decode("utf-8", "replace")).strip()
                last_problem = f"{self.url} answered HTTP {status}" + (f": {snippet}" if snippet else "")
                if status not in RETRY_STATUSES:
                    hint = " (check the API key)" if status in (401, 403) else ""
                    raise LVLMError(f"{last_problem}{hint}; expected an OpenAI-compatible chat completion")
                lower = {key.lower(): value for key, value in headers.items()}
                retry_after = _retry_after_seconds(lower.get("retry-after"))
            last_problem = self.redact(last_problem)
            if attempt == self.retries:
                break
            delay = self._delay(attempt, retry_after)
            logger.warning("%s; retry %d/%d in %.2fs", last_problem, attempt + 1, self.retries, delay)
            if self.stop_event.wait(delay):
                raise LVLMStopped()
        raise LVLMError(f"{last_problem} (gave up after {self.retries + 1} attempts)")

    def _result(self, data: bytes, attempts: int) -> ChatResult:
        try:
            reply = json.loads(data)
            message = reply["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = self.redact(data[:200].decode("utf-8", "replace"))
            raise LVLMError(
                f"{self.url} did not answer with an OpenAI chat completion (JSON with choices[0].message); got {snippet!r}"
            ) from None
        total = None
        usage = reply.get("usage") if isinstance(reply, dict) else None
        if isinstance(usage, dict):
            total = usage.get("total_tokens")
            if not isinstance(total, int):
                parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
                total = sum(parts) if all(isinstance(part, int) for part in parts) else None
        with self._lock:
            if total is not None:
                self.tokens += total
                self.usage_reported = True
        content = message.get("content") if isinstance(message, dict) else None
        return ChatResult(text=self.redact(_answer_text(content)), total_tokens=total, attempts=attempts)
