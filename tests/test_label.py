"""Tests of ``creward train label`` against a real local HTTP server speaking the OpenAI chat API.

The fake LVLM decodes the two data-URL images of each request (solid-colour PNGs) to know which
image was shown first, and answers from a per-test script.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from creward.models.axes import AXES
from creward.train.label import (
    LabelError,
    combine_orders,
    find_pairs,
    label_pairs,
    read_labels,
)
from creward.train.label_prompt import build_question, parse_answer
from creward.train.lvlm_client import ChatClient

pytestmark = pytest.mark.unit

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0), "grey": (128, 128, 128)}
RGB_TO_NAME = {rgb: name for name, rgb in COLOURS.items()}
# The consistent judge finds this colour order more creative: red > green > yellow > blue > grey.
RANK = {"red": 4, "green": 3, "yellow": 2, "blue": 1, "grey": 0}
KEY = "sk-test-SECRET-0123456789abcdef"
MODEL = "judge-model"


# --------------------------------------------------------------------------- fake LVLM server


@dataclass
class Call:
    """One request the fake server received."""

    number: int
    path: str
    headers: Any  # http.client.HTTPMessage: case-insensitive names
    body: dict
    first: str | None = None  # colour name of the image shown first ("A")
    second: str | None = None
    started: float = 0.0


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the answer text for a 200
    body: str | None = None  # raw body instead (errors)
    headers: dict = field(default_factory=dict)
    usage: dict | None = None


def _colour(data_url: str) -> str:
    assert data_url.startswith("data:image/png;base64,"), data_url[:40]
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")
    return RGB_TO_NAME[image.getpixel((0, 0))]


def answer_json(labels: dict[str, str]) -> str:
    return json.dumps(labels)


def consistent(first: str, second: str) -> dict[str, str]:
    """The verdict of a judge without position bias ("A" = the first shown is more creative)."""
    if RANK[first] == RANK[second]:
        return {axis: "tie" for axis in AXES}
    return {axis: "A" if RANK[first] > RANK[second] else "B" for axis in AXES}


def good_judge(call: Call) -> Reply:
    return Reply(content=answer_json(consistent(call.first, call.second)))


class FakeLVLM:
    """An OpenAI-compatible /v1/chat/completions server on 127.0.0.1 answering from ``script``."""

    def __init__(self, script: Callable[[Call], Reply] = good_judge, delay: float = 0.0):
        self.script = script
        self.delay = delay
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with fake.lock:
                    # self.headers (an HTTPMessage) looks names up case-insensitively, as HTTP has them
                    call = Call(len(fake.calls), self.path, self.headers, body, started=time.monotonic())
                    fake.calls.append(call)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    parts = body["messages"][-1]["content"]
                    urls = [part["image_url"]["url"] for part in parts if part.get("type") == "image_url"]
                    if len(urls) == 2:
                        call.first, call.second = _colour(urls[0]), _colour(urls[1])
                    if fake.delay:
                        time.sleep(fake.delay)
                    reply = fake.script(call)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1
                if reply.body is not None or reply.status != 200:
                    payload = (reply.body or "").encode()
                else:
                    completion = {
                        "id": f"chatcmpl-{call.number}",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content}, "finish_reason": "stop"}],
                    }
                    if reply.usage is not None:
                        completion["usage"] = reply.usage
                    payload = json.dumps(completion).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def orders(self) -> list[tuple[str, str]]:
        return [(call.first, call.second) for call in self.calls]


@pytest.fixture
def fake():
    servers = []

    def start(script=good_judge, delay=0.0) -> FakeLVLM:
        server = FakeLVLM(script, delay)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("CREWARD_LVLM_ENDPOINT", "CREWARD_LVLM_MODEL", "CREWARD_LVLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def make_pairs(folder: Path, colour_pairs: list[tuple[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (left, right) in enumerate(colour_pairs):
        Image.new("RGB", (4, 4), COLOURS[left]).save(folder / f"pair_{index:04d}_0.png")
        Image.new("RGB", (4, 4), COLOURS[right]).save(folder / f"pair_{index:04d}_1.png")
    return folder


def client_for(server: FakeLVLM, **kwargs) -> ChatClient:
    options = {"timeout": 5.0, "retries": 3}
    options.update(kwargs)
    return ChatClient(server.url, MODEL, **options)


def lines_of(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


PAIRS = [("red", "blue"), ("blue", "green"), ("yellow", "red"), ("green", "grey"), ("grey", "yellow")]


def expected_label(left: str, right: str) -> str:
    return "A" if RANK[left] > RANK[right] else "B"


# --------------------------------------------------------------------------- parsing


def test_parse_answer_accepts_bare_prose_fence_and_think():
    want = {"geometry": "A", "material": "B", "texture": "tie", "overall": "A"}
    bare = '{"geometry": "A", "material": "B", "texture": "tie", "overall": "A"}'
    assert parse_answer(bare) == want
    assert parse_answer(f"Looking at both chairs, I conclude:\n{bare}\nHope this helps.") == want
    assert parse_answer(f"Here you go:\n```json\n{bare}\n```\n") == want
    assert parse_answer(f"```\n{bare}\n```") == want
    assert parse_answer('<think>maybe {"geometry": "B"}</think>' + bare) == want
    assert parse_answer('{"Geometry": "image a", "MATERIAL": "b", "texture": "Tie", "overall": "A", "why": "x"}') == want
    assert parse_answer('{"answer": ' + bare + "}") == want
    example = '{"geometry": "B", "material": "B", "texture": "B", "overall": "B"}'
    assert parse_answer(f"For example {example}. My answer: {bare}") == want


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "Image A is more creative.",
        '{"geometry": "A", "material": "B", "overall": "A"}',  # texture missing
        '{"geometry": "A", "material": "C", "texture": "tie", "overall": "A"}',  # not a choice
        '{"geometry": "A|B|tie", "material": "A|B|tie", "texture": "A|B|tie", "overall": "A|B|tie"}',
        '{"geometry": "A", "material": "B", "texture": "tie", "overall": ',  # cut off
        "[\"A\", \"B\", \"tie\", \"A\"]",
    ],
)
def test_parse_answer_rejects_malformed(text):
    assert parse_answer(text) is None


def test_combine_orders_maps_back_and_ties_disagreement():
    ab = {"geometry": "A", "material": "B", "texture": "tie", "overall": "A"}
    ba = {"geometry": "B", "material": "B", "texture": "tie", "overall": "tie"}
    labels, inconsistent = combine_orders(ab, ba)
    assert labels == {"geometry": "A", "material": "tie", "texture": "tie", "overall": "tie"}
    assert inconsistent == ["material", "overall"]


def test_question_defines_axes_and_names_subject():
    text = build_question("chair")
    for word in ("geometry", "silhouette", "material", "made of", "texture", "patterns", "decoration", "overall", "chair"):
        assert word in text
    assert "chair" not in build_question(None)


# --------------------------------------------------------------------------- labelling runs


def test_both_orders_asked_and_labels_in_original_order(tmp_path, fake):
    server = fake()
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:3])
    out = tmp_path / "labels.jsonl"
    summary = label_pairs(pairs, out, client_for(server), subject="chair", concurrency=2, progress=False)

    assert (summary.ok, summary.malformed, summary.skipped, summary.requests) == (3, 0, 0, 6)
    assert len(server.calls) == 6
    for call in server.calls:
        assert call.path == "/v1/chat/completions"
        assert call.body["model"] == MODEL
        parts = call.body["messages"][-1]["content"]
        assert [part["type"] for part in parts].count("image_url") == 2
        assert "chair" in "".join(part.get("text", "") for part in parts)
    for left, right in PAIRS[:3]:  # each pair once in each order
        assert server.orders().count((left, right)) == 1
        assert server.orders().count((right, left)) == 1

    records = {record["pair"]: record for record in lines_of(out)}
    assert sorted(records) == [0, 1, 2]
    for index, (left, right) in enumerate(PAIRS[:3]):
        record = records[index]
        assert record["status"] == "ok"
        assert record["image_0"] == f"pair_{index:04d}_0.png" and record["image_1"] == f"pair_{index:04d}_1.png"
        assert record["labels"] == {axis: expected_label(left, right) for axis in AXES}
        assert record["inconsistent"] == []
        assert record["model"] == MODEL and record["subject"] == "chair"
        assert len(record["answers"]) == 2


def test_concurrency_limit(tmp_path, fake):
    server = fake(delay=0.05)
    pairs = make_pairs(tmp_path / "pairs", PAIRS)
    summary = label_pairs(pairs, tmp_path / "labels.jsonl", client_for(server), concurrency=2, progress=False)
    assert summary.ok == 5
    assert 1 <= server.max_in_flight <= 2


def test_position_bias_becomes_tie(tmp_path, fake):
    def biased(call: Call) -> Reply:
        verdict = consistent(call.first, call.second)
        verdict["geometry"] = "A"  # always the first shown: contradicts itself across orders
        return Reply(content=answer_json(verdict))

    server = fake(biased)
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:3])
    out = tmp_path / "labels.jsonl"
    summary = label_pairs(pairs, out, client_for(server), progress=False)
    assert summary.ok == 3
    assert summary.inconsistent == {"geometry": 3, "material": 0, "texture": 0, "overall": 0}
    assert summary.inconsistent_ties == 3
    for record in lines_of(out):
        left, right = PAIRS[record["pair"]]
        assert record["labels"]["geometry"] == "tie"
        assert record["inconsistent"] == ["geometry"]
        assert record["labels"]["overall"] == expected_label(left, right)


def test_malformed_recorded_and_prose_or_fence_parsed(tmp_path, fake):
    def script(call: Call) -> Reply:
        verdict = answer_json(consistent(call.first, call.second))
        colours = {call.first, call.second}
        if colours == {"red", "blue"}:  # pair 0: prose and code fence, one per order
            if call.first == "red":
                return Reply(content=f"The first chair is bolder.\n```json\n{verdict}\n```")
            return Reply(content=f"After careful comparison my verdict is {verdict}. Thanks!")
        if colours == {"blue", "green"}:  # pair 1: one order answers in words only
            return Reply(content="Image B is more creative overall." if call.first == "green" else verdict)
        if colours == {"yellow", "red"}:  # pair 2: an axis missing
            return Reply(content='{"geometry": "A", "material": "B", "overall": "A"}')
        if colours == {"green", "grey"}:  # pair 3: empty content
            return Reply(content=None)
        return Reply(content=verdict)

    server = fake(script)
    pairs = make_pairs(tmp_path / "pairs", PAIRS)
    out = tmp_path / "labels.jsonl"
    summary = label_pairs(pairs, out, client_for(server), progress=False)
    assert (summary.ok, summary.malformed) == (2, 3)
    records = {record["pair"]: record for record in lines_of(out)}
    assert records[0]["status"] == "ok"
    assert records[0]["labels"] == {axis: "A" for axis in AXES}
    assert records[4]["status"] == "ok"
    for index in (1, 2, 3):
        assert records[index]["status"] == "malformed"
        assert records[index]["labels"] is None
        assert records[index]["inconsistent"] is None
        assert len(records[index]["answers"]) == 2
    assert "Image B is more creative overall." in records[1]["answers"]

    # Without --retry-malformed a rerun asks nothing; with it, only the malformed pairs.
    asked = len(server.calls)
    again = label_pairs(pairs, out, client_for(server), progress=False)
    assert (again.skipped, again.ok, again.malformed, len(server.calls)) == (5, 0, 0, asked)
    server.script = good_judge
    retried = label_pairs(pairs, out, client_for(server), retry_malformed=True, progress=False)
    assert (retried.skipped, retried.ok, retried.malformed) == (2, 3, 0)
    assert len(server.calls) == asked + 6
    labels = read_labels(out)
    assert sorted(labels) == [0, 1, 2, 3, 4]
    assert all(record["status"] == "ok" for record in labels.values())
    assert labels[2]["labels"] == {axis: expected_label("yellow", "red") for axis in AXES}
    assert len(lines_of(out)) == 8  # 5 + 3 newer records; the newest wins


def test_429_and_500_are_retried_with_back_off_honouring_retry_after(tmp_path, fake, caplog):
    def flaky(call: Call) -> Reply:
        if call.number == 0:
            return Reply(status=429, body='{"error": "slow down"}', headers={"Retry-After": "1.2"})
        if call.number == 1:
            return Reply(status=500, body='{"error": "overloaded"}')
        if call.number == 2:
            return Reply(status=503, body="", headers={"Retry-After": "0.05"})
        return good_judge(call)

    server = fake(flaky)
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:1])
    out = tmp_path / "labels.jsonl"
    summary = label_pairs(pairs, out, client_for(server), concurrency=1, progress=False)
    assert summary.ok == 1 and summary.error is None
    assert (summary.requests, summary.retries, len(server.calls)) == (5, 3, 5)
    gaps = [later.started - earlier.started for earlier, later in zip(server.calls, server.calls[1:])]
    assert gaps[0] >= 1.1  # Retry-After honoured (longer than the back-off would be)
    assert 0.5 * 2 * 0.75 <= gaps[1] < 1.1  # exponential back-off without Retry-After: 0.5 s doubled per retry, -25 % jitter
    assert gaps[2] < 0.5  # a short Retry-After wins too
    assert "HTTP 429" in caplog.text and "HTTP 500" in caplog.text and "HTTP 503" in caplog.text
    assert lines_of(out)[0]["labels"] == {axis: "A" for axis in AXES}


def test_request_cap_then_resume_loses_and_duplicates_nothing(tmp_path, fake):
    server = fake()
    pairs = make_pairs(tmp_path / "pairs", PAIRS)
    out = tmp_path / "labels.jsonl"
    first = label_pairs(pairs, out, client_for(server), concurrency=2, max_requests=5, progress=False)
    assert (first.ok, first.not_started, first.error) == (2, 3, None)
    assert "request cap" in first.stop_reason
    assert len(server.calls) == 4  # the 5th request would have been half a pair
    assert len(lines_of(out)) == 2

    second = label_pairs(pairs, out, client_for(server), concurrency=2, progress=False)
    assert (second.skipped, second.ok, second.not_started, second.stop_reason) == (2, 3, 0, None)
    assert len(server.calls) == 10  # every pair asked exactly twice over both runs
    records = lines_of(out)
    assert sorted(record["pair"] for record in records) == [0, 1, 2, 3, 4]
    for record in records:
        left, right = PAIRS[record["pair"]]
        assert record["labels"] == {axis: expected_label(left, right) for axis in AXES}


def test_truncated_last_line_is_repaired_and_reasked(tmp_path, fake):
    server = fake()
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:3])
    out = tmp_path / "labels.jsonl"
    label_pairs(pairs, out, client_for(server), concurrency=1, progress=False)
    data = out.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut_pair = json.loads(data[last_start:])["pair"]
    out.write_bytes(data[: last_start + 25])  # killed in the middle of writing the last record
    assert len(read_labels(out)) == 2  # readers skip the broken line

    asked = len(server.calls)
    summary = label_pairs(pairs, out, client_for(server), concurrency=1, progress=False)
    assert (summary.skipped, summary.ok) == (2, 1)
    assert len(server.calls) == asked + 2
    assert {call.first for call in server.calls[asked:]} == set(PAIRS[cut_pair])
    records = lines_of(out)  # every line whole, valid JSON
    assert sorted(record["pair"] for record in records) == [0, 1, 2]


def test_token_cap_stops_cleanly(tmp_path, fake):
    def metered(call: Call) -> Reply:
        reply = good_judge(call)
        reply.usage = {"prompt_tokens": 80, "completion_tokens": 20, "total_tokens": 100}
        return reply

    server = fake(metered)
    pairs = make_pairs(tmp_path / "pairs", PAIRS)
    summary = label_pairs(pairs, tmp_path / "labels.jsonl", client_for(server), concurrency=1, max_tokens_total=250, progress=False)
    assert (summary.ok, summary.not_started, summary.tokens, summary.error) == (2, 3, 400, None)
    assert "token cap" in summary.stop_reason
    assert len(server.calls) == 4


def test_find_pairs_errors_name_the_files(tmp_path):
    with pytest.raises(LabelError, match="does not exist.*pair_0000_0.png"):
        find_pairs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(LabelError, match=r"no pairs found in .*empty.*pair_\{idx:04d\}_0.png"):
        find_pairs(tmp_path / "empty")
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:2])
    (pairs / "pair_0001_1.png").unlink()
    with pytest.raises(LabelError, match="pair_0001_1.png"):
        find_pairs(pairs)
    (tmp_path / "jpgs").mkdir()
    for name in ("pair_0003_0.jpg", "pair_0003_1.jpg", "pair_0004_0.webp"):
        Image.new("RGB", (4, 4), COLOURS["red"]).save(tmp_path / "jpgs" / name)
    with pytest.raises(LabelError, match="pair_0004_1.webp"):
        find_pairs(tmp_path / "jpgs")
    (tmp_path / "jpgs" / "pair_0004_0.webp").unlink()
    assert [(pair.index, pair.image_1.name) for pair in find_pairs(tmp_path / "jpgs")] == [(3, "pair_0003_1.jpg")]
    Image.new("RGB", (4, 4), COLOURS["red"]).save(tmp_path / "jpgs" / "pair_0003_1.png")
    with pytest.raises(LabelError, match="two images for pair 3"):
        find_pairs(tmp_path / "jpgs")


# --------------------------------------------------------------------------- CLI


def cli(*argv: str) -> int:
    from creward.cli.main import main

    return main(list(argv))


def test_cli_writes_labels(tmp_path, fake):
    server = fake()
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:2])
    out = tmp_path / "sub" / "labels.jsonl"
    code = cli("train", "label", str(pairs), "--endpoint", server.url, "--model", MODEL, "-o", str(out), "--concurrency", "2", "--no-progress")
    assert code == 0
    assert sorted(record["pair"] for record in lines_of(out)) == [0, 1]
    assert len(server.calls) == 4
    assert "Authorization" not in server.calls[0].headers  # no key configured: none sent


def test_cli_settings_from_environment_and_key_never_leaks(tmp_path, fake, monkeypatch, caplog, capfd):
    def leaky(call: Call) -> Reply:
        auth = call.headers.get("Authorization", "")
        if call.number == 0:  # an error body echoing the key
            return Reply(status=500, body=f'{{"error": "key {auth} rejected for now"}}')
        verdict = answer_json(consistent(call.first, call.second))
        return Reply(content=f"Request by {auth}: {verdict}")  # an answer echoing the key

    server = fake(leaky)
    monkeypatch.setenv("CREWARD_LVLM_ENDPOINT", server.url)
    monkeypatch.setenv("CREWARD_LVLM_MODEL", MODEL)
    monkeypatch.setenv("CREWARD_LVLM_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:2])
    out = tmp_path / "labels.jsonl"
    code = cli("-v", "train", "label", str(pairs), "-o", str(out), "--no-progress")
    assert code == 0
    assert all(call.headers.get("Authorization") == f"Bearer {KEY}" for call in server.calls)
    assert len(server.calls) == 5  # one retry
    records = lines_of(out)
    assert all(record["status"] == "ok" for record in records)
    captured = capfd.readouterr()
    assert "HTTP 500" in caplog.text  # the retry was logged...
    for text in (out.read_text(), caplog.text, captured.out, captured.err):
        assert KEY not in text  # ...but never the key
    assert repr(ChatClient(server.url, MODEL, KEY)).count(KEY) == 0


def test_openai_api_key_fallback(tmp_path, fake, monkeypatch):
    server = fake()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:1])
    assert cli("train", "label", str(pairs), "--endpoint", server.url, "--model", MODEL, "-o", str(tmp_path / "l.jsonl"), "--no-progress") == 0
    assert server.calls[0].headers.get("Authorization") == "Bearer sk-other"


def test_cli_bad_pairs_dir_fails_clearly(tmp_path, caplog):
    missing = tmp_path / "no_such_pairs"
    code = cli("train", "label", str(missing), "--endpoint", "http://127.0.0.1:9/v1", "--model", MODEL, "-o", str(tmp_path / "l.jsonl"))
    assert code != 0
    assert str(missing) in caplog.text and "pair_0000_0.png" in caplog.text
    assert not (tmp_path / "l.jsonl").exists()


def test_cli_missing_endpoint_or_model_is_a_usage_error(tmp_path, capsys):
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:1])
    assert cli("train", "label", str(pairs), "--model", MODEL, "-o", str(tmp_path / "l.jsonl")) == 2
    err = capsys.readouterr().err
    assert "usage: creward train label" in err and "CREWARD_LVLM_ENDPOINT" in err
    assert cli("train", "label", str(pairs), "--endpoint", "http://127.0.0.1:9/v1", "-o", str(tmp_path / "l.jsonl")) == 2
    assert "CREWARD_LVLM_MODEL" in capsys.readouterr().err
    assert cli("train", "label", str(pairs), "--endpoint", "ftp://host/v1", "--model", MODEL, "-o", str(tmp_path / "l.jsonl")) == 2
    assert "http:// or https://" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse types: refused while parsing
        cli("train", "label", str(pairs), "--timeout", "0", "-o", str(tmp_path / "l.jsonl"))
    assert exit_info.value.code == 2 and "--timeout" in capsys.readouterr().err


def test_cli_unreachable_endpoint_fails_after_retries(tmp_path, caplog):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:3])
    out = tmp_path / "labels.jsonl"
    code = cli(
        "train", "label", str(pairs), "--endpoint", f"http://127.0.0.1:{port}/v1", "--model", MODEL,
        "-o", str(out), "--retries", "2", "--no-progress",
    )
    assert code == 1
    assert f"127.0.0.1:{port}/v1/chat/completions" in caplog.text and "gave up after 3 attempts" in caplog.text
    assert read_labels(out) == {}


def test_cli_auth_error_is_not_retried(tmp_path, fake, caplog):
    server = fake(lambda call: Reply(status=401, body='{"error": "invalid api key"}'))
    pairs = make_pairs(tmp_path / "pairs", PAIRS[:2])
    code = cli("train", "label", str(pairs), "--endpoint", server.url, "--model", MODEL, "-o", str(tmp_path / "l.jsonl"), "--concurrency", "1", "--no-progress")
    assert code == 1
    assert len(server.calls) == 1
    assert "HTTP 401" in caplog.text and "API key" in caplog.text
