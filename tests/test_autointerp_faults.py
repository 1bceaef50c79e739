"""What real OpenAI-compatible endpoints answer besides a good answer (issue 43), served by a
misbehaving local server written for these tests (beside the real llama.cpp one of
tests/test_autointerp.py): every outcome is a counted failure, never a cached answer, never the
end of the step; reasoning blocks, fences and drafts in an answer are read past."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from e2e.autointerp import prompts
from e2e.autointerp.records import INTERVAL, SILENT, TOP, Record
from e2e.autointerp.score import Budget, interpret
from e2e.typed import ConfigError
from jobs.explain.endpoint import Endpoint, failure_summary
from jobs.plan.autointerp import AutoInterp

REPO = Path(__file__).resolve().parent.parent


def _completion(content) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}]}


# mode -> (HTTP status, body); "timeout" sleeps past the client's timeout
ANSWERS = {
    "not-json": (200, "<html>upstream error</html>"),
    "empty": (200, json.dumps(_completion(""))),
    "null": (200, json.dumps(_completion(None))),
    "error-object": (200, json.dumps({"error": {"message": "model overloaded", "code": 503}})),
    "choices-null": (200, json.dumps({"id": "x", "object": "chat.completion", "choices": None})),
    "400": (400, json.dumps({"error": {"message": "context length exceeded"}})),
    "500": (500, json.dumps({"error": {"message": "internal"}})),
    "timeout": (200, json.dumps(_completion("late"))),
}


class _Server:
    """An OpenAI-compatible server on 127.0.0.1 whose chat answers are `mode`'s."""

    def __init__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: str):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, json.dumps({"object": "list", "data": [
                    {"id": "m", "object": "model", "created": 0, "owned_by": "test"}]}))

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests += 1
                if server.mode == "timeout":
                    time.sleep(2)
                status, body = ANSWERS.get(server.mode, (200, json.dumps(
                    _completion(server.mode))))
                try:
                    self._send(status, body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up
                    pass

        self.mode, self.requests = "ok", 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()


MESSAGES = [{"role": "user", "content": "explain"}]


@pytest.mark.parametrize("mode", list(ANSWERS))
def test_every_bad_answer_is_a_counted_failure_and_never_cached(server, tmp_path, mode):
    server.mode = mode
    e = Endpoint(server.url, "m", tmp_path, timeout_s=1, retries=0)
    assert e.chat(MESSAGES) is None
    assert e.failed == 1 and sum(e.failures.values()) == 1 and e.sent == 0
    assert not list(tmp_path.rglob("*.json")), "a failure is never cached"
    server.mode = "[EXPLANATION]: the word sea"  # the server recovers: asked again, cached
    assert e.chat(MESSAGES) == "[EXPLANATION]: the word sea"
    assert e.sent == 1 and len(list(tmp_path.rglob("*.json"))) == 1
    assert failure_summary([e, e]) == f"1 {next(iter(e.failures))}"


def test_the_kinds_of_failure_are_named():
    e = Endpoint.__new__(Endpoint)
    e.failures = {"InternalServerError": 2, "EmptyAnswer": 3, "NoChoices": 1}
    assert failure_summary([e]) == "3 EmptyAnswer, 2 InternalServerError, 1 NoChoices"


def _records() -> list[Record]:
    def rec(kind, acts):
        return Record(kind=kind, tokens=["a", " b", " c"], acts=np.asarray(acts, np.float32))

    return ([rec(TOP, [0, 3, 0])] * 3 + [rec(INTERVAL, [0, 1, 0])] * 4
            + [rec(SILENT, [0, 0, 0])] * 4)


def test_a_feature_without_an_explanation_has_every_count_and_no_score():
    """The step summed `detection_failed` over features: one unexplained feature ended it."""
    budget = Budget(explain=3, test=4, shown=2, simulate=2)
    got = interpret(_records(), lambda *a, **k: None, lambda *a, **k: "[1, 0]", budget, 0)
    assert got["explanation"] == "" and got["requests_failed"] == 1
    for s in budget.scorers:
        assert math.isnan(got[s]) and got[f"{s}_failed"] == 0


def test_reasoning_blocks_drafts_and_fences_are_read_past():
    think = ("<think>The format is [EXPLANATION]: <explanation>. Let me look at the marked "
             "tokens first.</think>\n[EXPLANATION]: the token b")
    assert prompts.parse_explanation(think) == "the token b"
    assert prompts.parse_explanation("draft ... </think>[EXPLANATION]: b") == "b"
    assert prompts.parse_explanation("<think>out of tokens [EXPLANATION]: x") == ""
    assert prompts.parse_list("Sure, here:\n```json\n[1, 0, 1]\n```", 3) == [True, False, True]
    assert prompts.parse_list("first guess [1, 1] then [0, 1, 1]", 3) == [False, True, True]
    sim = ('The answer:\n```json\n{"activations": [{"token": "a", "activation": 4}, '
           '{"token": " b", "activation": 12}]}\n```\nHope this helps.')
    assert prompts.parse_simulation(sim, 2) == [4.0, 0.0]


@pytest.mark.parametrize("key", ["sk-proj-" + "A1b2C3d4" * 6,  # not a variable's name
                                 "gsk_" + "Zx81Qa77" * 6,  # Groq's: a valid name
                                 "hf_" + "aBcD1234" * 4,  # Hugging Face's
                                 "mistral" + "x9Y8w7V6" * 4])  # long, lower case and digits
def test_a_key_given_for_its_variables_name_is_refused_masked(key):
    with pytest.raises(ConfigError) as e:
        AutoInterp(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=key)
    assert key not in str(e.value) and key[8:] not in str(e.value)
    assert "not a key" in str(e.value) and "masked" in str(e.value)
    for name in ("OPENAI_API_KEY", "GROQ_API_KEY", "HF_TOKEN", "my_llm_key"):
        AutoInterp(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=name)


def test_a_variable_named_like_a_key_that_is_set_is_a_variable(monkeypatch):
    monkeypatch.setenv("hf_token", "x")
    AutoInterp(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="hf_token")


def _dry_run(*extra: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/submit.py", "grid=smoke", "root=/shared/e2e",
                           "dry_run=true", "autointerp=true", "autointerp.model=m", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)


def test_the_dry_run_checks_the_endpoint_and_the_keys_variable(server):
    import os

    dead = _dry_run("autointerp.base_url=http://127.0.0.1:9/v1")
    assert dead.returncode == 1 and dead.stderr.count("\n") == 1, dead.stderr
    assert "no OpenAI-compatible endpoint answers at http://127.0.0.1:9/v1" in dead.stderr
    env = {k: v for k, v in os.environ.items() if k != "E2E_TEST_NO_SUCH_KEY"}
    unset = _dry_run(f"autointerp.base_url={server.url}", "autointerp.api_key_env="
                     "E2E_TEST_NO_SUCH_KEY", env=env)
    assert unset.returncode == 1 and unset.stderr.count("\n") == 1, unset.stderr
    assert "E2E_TEST_NO_SUCH_KEY: that environment variable is not set" in unset.stderr
    ok = _dry_run(f"autointerp.base_url={server.url}")
    assert ok.returncode == 0, ok.stderr
