"""``creward train label``: pairwise creativity labels from an LVLM judge.

Usage::

    creward train label PAIRS_DIR --endpoint http://127.0.0.1:8000/v1 --model NAME -o labels.jsonl \\
        [--subject chair] [--concurrency 4] [--max-requests N] [--max-tokens-total N] [--retry-malformed]

``PAIRS_DIR`` holds ``pair_{idx:04d}_0.png`` and ``pair_{idx:04d}_1.png`` (.jpg/.jpeg/.webp also
accepted). Every pair is asked
twice through an OpenAI-compatible chat API (``POST {endpoint}/chat/completions``; vLLM, Ollama,
LM Studio and hosted APIs speak it): once showing image _0 first, once showing image _1 first.
The first image shown is "A". The answers are mapped back to the original order; an axis on
which the two orders disagree becomes a tie (position bias). Endpoint, model and key may also
come from ``CREWARD_LVLM_ENDPOINT``, ``CREWARD_LVLM_MODEL`` and ``CREWARD_LVLM_API_KEY`` (or
``OPENAI_API_KEY``); the key is never logged or written.

Output: LABELS.jsonl, one JSON object per line, appended (flushed, whole lines) as each pair
completes, in completion order::

    {"pair": 7,                              # int, the idx of pair_0007_*.png
     "image_0": "pair_0007_0.png",           # file names inside PAIRS_DIR
     "image_1": "pair_0007_1.png",
     "labels": {"geometry": "A", "material": "tie", "texture": "B", "overall": "A"},
                                             # or null when status is "malformed"
     "status": "ok",                         # "ok" | "malformed"
     "inconsistent": ["material"],           # axes the two orders disagreed on (-> "tie"); null if malformed
     "answers": ["<raw answer, _0 shown first>", "<raw answer, _1 shown first>"],
     "model": "NAME",
     "subject": "chair"}                     # only when --subject was given

Labels always refer to the ORIGINAL order: "A" means image _0 is more creative on that axis,
"B" means image _1 is, "tie" means neither (or the judge contradicted itself across orders).
Axes are ``creward.models.axes.AXES`` (geometry, material, texture, overall). A "malformed"
record means at least one of the two answers had no parseable verdict; its labels are null and
must not be used for training. A pair may appear more than once (``--retry-malformed``
re-asks malformed pairs and appends): **the last record of a pair wins**. Readers should skip
lines that are not valid JSON (a run killed mid-write may leave a truncated last line; the
next run repairs it). :func:`read_labels` implements exactly this.

Resume: rerunning with the same output skips the pairs already recorded (ok or malformed;
with ``--retry-malformed`` the malformed ones are asked again), so a killed run loses and
duplicates nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.axes import AXES
from ..models.errors import CREwardError
from ..cli.arguments import UsageError, non_negative_float, non_negative_int, positive_float, positive_int
from .label_prompt import build_messages, parse_answer
from .lvlm_client import API_KEY_ENVS, ENDPOINT_ENV, MODEL_ENV, ChatClient, LVLMError, LVLMStopped, image_data_url, resolve_settings
from .pair_files import STATUSES, PairImages, find_pair_images, parse_label_lines, read_label_records

logger = logging.getLogger(__name__)

_FLIP = {"A": "B", "B": "A", "tie": "tie"}


class LabelError(CREwardError):
    """The pairs folder or the labels file is not usable, or labelling stopped on an error."""


def find_pairs(pairs_dir: str | os.PathLike) -> list[PairImages]:
    """Every complete pair in ``pairs_dir``, by index; raises :class:`LabelError` if there are
    none, or if an image lacks its partner (the message names the missing file)."""
    return find_pair_images(pairs_dir, LabelError)


def read_labels(path: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """The records of a labels file by pair index, the last record of a pair winning.

    Read-only: lines that are not valid records (e.g. a truncated last line) are skipped.
    """
    return read_label_records(path, LabelError)[0]


class LabelStore:
    """The JSONL labels file: loads what is recorded (repairing a truncated last line) and
    appends records, one whole flushed line per write, under a lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise LabelError(f"labels output {self.path} is a directory; expected a .jsonl file path")
        self._lock = threading.Lock()
        self._handle = None
        self.records: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise LabelError(f"cannot read labels file {self.path}: {error.strerror or error}") from None
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning(
                "%s: dropping an incomplete last line (%d bytes, left by an interrupted run); that pair will be asked again",
                self.path, len(data) - keep,
            )
            try:
                with open(self.path, "r+b") as handle:
                    handle.truncate(keep)
            except OSError as error:
                raise LabelError(f"cannot repair labels file {self.path}: {error.strerror or error}") from None
            data = data[:keep]
        self.records, bad = parse_label_lines(data.splitlines())
        if bad:
            logger.warning("%s: ignored %d line(s) that are not label records", self.path, bad)

    def is_done(self, index: int, retry_malformed: bool = False) -> bool:
        record = self.records.get(index)
        if record is None:
            return False
        return not (retry_malformed and record["status"] == "malformed")

    def __enter__(self) -> "LabelStore":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab")
        except OSError as error:
            raise LabelError(f"cannot write labels file {self.path}: {error.strerror or error}") from None
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._handle is None:
                raise RuntimeError("LabelStore.append outside 'with store:'")
            try:
                self._handle.write(line)
                self._handle.flush()
                os.fsync(self._handle.fileno())
            except OSError as error:
                raise LabelError(f"cannot append to labels file {self.path}: {error.strerror or error}") from None
            self.records[record["pair"]] = record


def combine_orders(ab: dict[str, str], ba: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Labels in the original order from the answer with _0 shown first (``ab``) and the answer
    with _1 shown first (``ba``); axes where they disagree become "tie" and are listed."""
    labels: dict[str, str] = {}
    inconsistent: list[str] = []
    for axis in AXES:
        first, second = ab[axis], _FLIP[ba[axis]]
        if first == second:
            labels[axis] = first
        else:
            labels[axis] = "tie"
            inconsistent.append(axis)
    return labels, inconsistent


def make_record(pair: PairImages, answer_ab: str, answer_ba: str, model: str, subject: str | None = None) -> dict[str, Any]:
    """The JSONL record of a pair from the two raw answers (see the module docstring)."""
    ab, ba = parse_answer(answer_ab), parse_answer(answer_ba)
    if ab is None or ba is None:
        labels, inconsistent, status = None, None, "malformed"
    else:
        labels, inconsistent = combine_orders(ab, ba)
        status = "ok"
    record: dict[str, Any] = {
        "pair": pair.index,
        "image_0": pair.image_0.name,
        "image_1": pair.image_1.name,
        "labels": labels,
        "status": status,
        "inconsistent": inconsistent,
        "answers": [answer_ab, answer_ba],
        "model": model,
    }
    if subject:
        record["subject"] = subject
    return record


@dataclass
class LabelSummary:
    """What a labelling run did."""

    pairs_found: int = 0
    skipped: int = 0  # already recorded in the output before this run
    ok: int = 0
    malformed: int = 0
    unfinished: int = 0  # started but abandoned (error, interrupt); not recorded, asked next run
    not_started: int = 0  # left for a later run (cap reached, error, interrupt)
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    tokens: int | None = None  # total tokens reported by the server, None if it reports none
    inconsistent: dict[str, int] = field(default_factory=lambda: {axis: 0 for axis in AXES})
    stop_reason: str | None = None  # why pairs were left (cap reached, error, interrupted)
    error: str | None = None  # the error that stopped the run, if any
    interrupted: bool = False

    @property
    def inconsistent_ties(self) -> int:
        return sum(self.inconsistent.values())

    def describe(self) -> str:
        per_axis = ", ".join(f"{axis} {count}" for axis, count in self.inconsistent.items())
        lines = [
            f"pairs: {self.pairs_found} found, {self.skipped} already labelled (skipped), {self.ok} ok, "
            f"{self.malformed} malformed, {self.not_started + self.unfinished} left for a later run",
            f"requests: {self.requests} sent, {self.retries} retries"
            + (f", {self.tokens} tokens" if self.tokens is not None else ""),
            f"ties from inconsistent orders: {self.inconsistent_ties} ({per_axis})",
        ]
        if self.stop_reason:
            lines.append(f"stopped early: {self.stop_reason}")
        return "\n".join(lines)


class _Run:
    """Shared state of the workers: the request/token budget and the stop flags."""

    def __init__(self, client: ChatClient, max_requests: int | None, max_tokens_total: int | None):
        self.client = client
        self.max_requests = max_requests
        self.max_tokens_total = max_tokens_total
        self.lock = threading.Lock()
        self.requests_reserved = 0
        self.no_new_pairs = threading.Event()  # caps: finish what is in flight, start nothing
        self.abort = client.stop_event  # error/interrupt: also abandon retries
        self.stop_reason: str | None = None
        self.error: str | None = None

    def stop(self, reason: str, error: bool = False) -> None:
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            if error and self.error is None:
                self.error = reason
        self.no_new_pairs.set()
        if error:
            self.abort.set()

    def reserve_pair(self) -> bool:
        """Reserve the two requests of a pair; False (and stop) if a cap is reached."""
        with self.lock:
            if self.no_new_pairs.is_set():
                return False
            if self.max_requests is not None and self.requests_reserved + 2 > self.max_requests:
                reason = f"request cap reached (--max-requests {self.max_requests}; each pair needs 2)"
            elif self.max_tokens_total is not None and self.client.tokens >= self.max_tokens_total:
                reason = f"token cap reached ({self.client.tokens} tokens used, --max-tokens-total {self.max_tokens_total})"
            else:
                self.requests_reserved += 2
                return True
        self.stop(reason)
        return False


def label_pairs(
    pairs_dir: str | os.PathLike,
    output: str | os.PathLike,
    client: ChatClient,
    *,
    subject: str | None = None,
    concurrency: int = 4,
    max_requests: int | None = None,
    max_tokens_total: int | None = None,
    retry_malformed: bool = False,
    progress: bool = True,
) -> LabelSummary:
    """Label every pair of ``pairs_dir`` not yet in ``output``; returns what was done.

    Up to ``concurrency`` requests are in flight. ``max_requests`` caps the chat requests of this
    run (retries not counted; a pair is only started when both its requests fit);
    ``max_tokens_total`` stops starting pairs once the server-reported tokens reach it (pairs
    in flight still finish, so it may be overshot by up to ``concurrency`` pairs). Errors of the
    endpoint stop the run: ``summary.error`` says why, and the pairs not recorded are asked by
    the next run.
    """
    from tqdm import tqdm

    if max_tokens_total is not None and max_tokens_total <= 0 or max_requests is not None and max_requests <= 0:
        raise LabelError(
            f"max_requests ({max_requests}) and max_tokens_total ({max_tokens_total}) must be positive when given"
        )
    pairs = find_pairs(pairs_dir)
    store = LabelStore(output)
    other_models = sorted({str(record.get("model")) for record in store.records.values()} - {client.model})
    if other_models:
        logger.warning(
            "%s already holds labels from other model(s) %s; those pairs are kept, not re-asked",
            store.path, ", ".join(other_models),
        )
    todo = [pair for pair in pairs if not store.is_done(pair.index, retry_malformed)]
    summary = LabelSummary(pairs_found=len(pairs), skipped=len(pairs) - len(todo))
    logger.info(
        "%s: %d pairs, %d already labelled in %s, %d to ask %s",
        pairs_dir, len(pairs), summary.skipped, store.path, len(todo), client.model,
    )
    run = _Run(client, max_requests, max_tokens_total)

    def work(pair: PairImages) -> tuple[str, dict[str, Any] | None]:
        if not run.reserve_pair():
            return "not_started", None
        try:
            url_0, url_1 = image_data_url(pair.image_0), image_data_url(pair.image_1)
            answer_ab = client.chat(build_messages(url_0, url_1, subject))
            answer_ba = client.chat(build_messages(url_1, url_0, subject))
            record = make_record(pair, answer_ab.text, answer_ba.text, client.model, subject)
            store.append(record)
        except LVLMStopped:
            return "unfinished", None
        except CREwardError as error:
            run.stop(f"pair {pair.index}: {error}", error=True)
            return "unfinished", None
        return record["status"], record

    workers = max(int(concurrency), 1)
    pending: set = set()
    remaining = iter(todo)
    # disable=None: tqdm shows the bar only when stderr is a terminal.
    bar = tqdm(
        total=len(pairs), initial=summary.skipped, unit="pair", desc="labelling", file=sys.stderr,
        disable=None if progress else True,
    )
    with store, bar:

        def tally(future) -> None:
            outcome, record = future.result()
            if outcome == "ok":
                summary.ok += 1
                for axis in record["inconsistent"]:
                    summary.inconsistent[axis] += 1
            elif outcome == "malformed":
                summary.malformed += 1
            elif outcome == "unfinished":
                summary.unfinished += 1
            if outcome in STATUSES:
                bar.update(1)

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="creward-label")
        try:
            while True:
                while len(pending) < 2 * workers and not run.no_new_pairs.is_set():
                    pair = next(remaining, None)
                    if pair is None:
                        break
                    pending.add(pool.submit(work, pair))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    tally(future)
        except KeyboardInterrupt:
            summary.interrupted = True
            run.stop("interrupted", error=True)
            logger.warning("interrupted: letting the requests in flight finish")
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            for future in pending:
                if not future.cancelled():
                    tally(future)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    summary.not_started = len(todo) - summary.ok - summary.malformed - summary.unfinished
    summary.requests, summary.retries = client.requests, client.retried
    summary.tokens = client.tokens if client.usage_reported else None
    summary.stop_reason, summary.error = run.stop_reason, run.error
    if max_tokens_total is not None and not client.usage_reported and client.requests:
        logger.warning("the endpoint reported no token usage, so --max-tokens-total could not be enforced")
    return summary


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "label",
        help="ask an LVLM which image of each pair is more creative per axis (JSONL labels)",
        description="Pairwise creativity labels from an LVLM judge: asks an OpenAI-compatible chat endpoint "
        "which image of every pair is more creative on each axis (geometry, material, texture, overall), "
        "in both orders, and appends one JSON line per pair to the output; rerun the same command to resume.",
    )
    add = parser.add_argument
    add("pairs_dir", metavar="PAIRS_DIR", help="folder with pair_{idx:04d}_0.png / pair_{idx:04d}_1.png")
    add("-o", "--output", required=True, metavar="LABELS.jsonl",
        help="labels file (appended; pairs already in it are skipped)")
    add("--endpoint", metavar="URL", help=f"API base, e.g. http://127.0.0.1:8000/v1 (default: ${ENDPOINT_ENV})")
    add("--model", metavar="NAME", help=f"model name sent to the endpoint (default: ${MODEL_ENV})")
    add("--api-key", metavar="KEY",
        help=f"API key (default: ${API_KEY_ENVS[0]} or ${API_KEY_ENVS[1]}; "
        "prefer the environment: a flag is visible to other users)")
    add("--subject", metavar="NAME", help="what the images show, e.g. chair (named in the question)")
    add("--concurrency", type=positive_int, default=4, metavar="N", help="requests in flight at once (default 4)")
    add("--max-requests", type=positive_int, metavar="N",
        help="stop after N chat requests (2 per pair; retries not counted)")
    add("--max-tokens-total", type=positive_int, metavar="N",
        help="stop starting pairs once the tokens the server reports reach N")
    add("--retry-malformed", action="store_true", help="ask again the pairs recorded as malformed (the new record wins)")
    add("--timeout", type=positive_float, default=120.0, metavar="S", help="per-request timeout in seconds (default 120)")
    add("--retries", type=non_negative_int, default=5, metavar="N",
        help="retries of a request after 408/409/429/5xx answers, timeouts or dropped connections, with exponential "
        "back-off from 0.5 s (the server's Retry-After wins) (default 5)")
    add("--temperature", type=non_negative_float, default=0.0, metavar="T", help="sampling temperature (default 0)")
    add("--max-answer-tokens", type=non_negative_int, default=512, metavar="N",
        help="max_tokens of each answer; 0 to not send it (default 512)")
    add("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        endpoint, model, api_key = resolve_settings(args.endpoint, args.model, args.api_key)
    except LVLMError as error:
        raise UsageError(str(error)) from None
    client = ChatClient(
        endpoint, model, api_key,
        timeout=args.timeout, retries=args.retries,
        temperature=args.temperature, max_answer_tokens=args.max_answer_tokens,
    )
    summary = label_pairs(
        args.pairs_dir, args.output, client,
        subject=args.subject, concurrency=args.concurrency, max_requests=args.max_requests,
        max_tokens_total=args.max_tokens_total, retry_malformed=args.retry_malformed,
        progress=not args.no_progress,
    )
    logger.info("labelling summary (%s):\n%s", args.output, summary.describe())
    if summary.interrupted:
        return 130
    if summary.error:
        raise LabelError(f"labelling stopped: {summary.error}; rerun the same command to resume")
    if summary.ok == 0 and summary.malformed and not summary.stop_reason:
        logger.warning(
            "every answer was malformed: does %s follow the JSON instruction? see 'answers' in %s", model, args.output
        )
    return 0
