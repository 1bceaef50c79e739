"""An OpenAI-compatible chat endpoint with a response cache on the shared root.

Any server that speaks OpenAI's `/v1/chat/completions` will do: OpenAI, OpenRouter, vLLM,
llama.cpp's server. The HTTP side is the `openai` client's: timeouts, and retries with
exponential backoff on connection errors, 408, 409, 429 and 5xx (`max_retries`). The API key is
read from the environment variable the config names, never written anywhere.

Every answer is cached as one file under `cache_dir`, named by the SHA-256 of (model, messages,
JSON mode, max_tokens) and written atomically, so a killed or requeued job resumes without
asking again and a rerun of a finished grid sends nothing. Sampling is greedy (temperature 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from e2e.io import atomic_write_text
from e2e.typed import ConfigError


@dataclass
class Endpoint:
    base_url: str
    model: str
    cache_dir: Path
    api_key_env: str = ""
    timeout_s: float = 120.0
    retries: int = 5
    sent: int = 0  # requests answered by the server in this process
    cached: int = 0  # answers read from the cache
    failed: int = 0  # requests that got no usable answer after the retries (never cached)
    failures: dict = field(default_factory=dict)  # their kinds: {"InternalServerError": 3, ...}
    tokens: int = 0  # prompt + completion tokens the server reported
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        import openai

        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if self.api_key_env and not key:
            raise ConfigError(f"autointerp.api_key_env={self.api_key_env}: that environment "
                              "variable is not set")
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key or "none",
                                     timeout=self.timeout_s, max_retries=self.retries)

    def check(self, timeout_s: float = 10.0) -> list[str]:
        """The models the server lists; one line (ConfigError) unless it answers within
        `timeout_s` (a refused key is one line too). A model it does not list is a line of
        output, not a refusal: llama.cpp's server answers to any name."""
        import openai

        try:
            ids = [m.id for m in
                   self._client.with_options(timeout=timeout_s, max_retries=1).models.list()]
        except openai.AuthenticationError as e:
            raise ConfigError(f"autointerp: {self.base_url} refuses the key from "
                              f"${self.api_key_env or '(none)'} ({e.status_code}); nothing "
                              "was sent") from None
        except openai.APIError as e:
            raise ConfigError(f"autointerp: no OpenAI-compatible endpoint answers at "
                              f"{self.base_url} ({type(e).__name__}: {e}); nothing was sent"
                              ) from None
        if self.model not in ids:
            print(f"autointerp: {self.base_url} does not list {self.model!r} among its models "
                  f"{ids[:5]}; if it refuses the name, every request fails (counted)",
                  flush=True)
        return ids

    def key(self, messages: list[dict], json_mode: bool, max_tokens: int) -> str:
        text = json.dumps([self.model, messages, json_mode, max_tokens], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def chat(self, messages: list[dict], json: bool = False, max_tokens: int = 256
             ) -> str | None:
        """The answer's text (from the cache when asked before); None when the server gave
        none after the retries, counted by kind in `failures` and not cached, so a rerun asks
        again: an HTTP error (4xx, 5xx, a timeout, a refused connection), a body that is not
        JSON, an error object or no choices in a 200, empty or null content (a reasoning model
        out of tokens)."""
        import openai

        k = self.key(messages, json, max_tokens)
        path = self.cache_dir / k[:2] / f"{k}.json"
        try:
            text = _json.loads(path.read_text())["text"]
        except (OSError, ValueError, KeyError):  # not asked yet, or a damaged file: ask
            pass
        else:
            with self._lock:
                self.cached += 1
            return text
        extra = {"response_format": {"type": "json_object"}} if json else {}
        try:
            r = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=0, max_tokens=max_tokens,
                **extra)
            text = r.choices[0].message.content
            if not (text or "").strip():
                raise _EmptyAnswer
        except (openai.APIError, _EmptyAnswer, IndexError, AttributeError, TypeError,
                ValueError) as e:  # ValueError: a body that is not JSON
            kind = _KINDS.get(type(e), type(e).__name__)
            with self._lock:
                self.failed += 1
                self.failures[kind] = self.failures.get(kind, 0) + 1
            return None
        used = r.usage.total_tokens if r.usage else 0
        atomic_write_text(path, _json.dumps({"model": self.model, "text": text,
                                             "tokens": used}))
        with self._lock:
            self.sent += 1
            self.tokens += used
        return text


_json = json  # `chat`'s argument `json` shadows the module inside it


class _EmptyAnswer(Exception):
    """A 200 whose message has no text (null or empty content)."""


# How `chat` counts a failure whose exception names it poorly (else by its class's name).
_KINDS = {_EmptyAnswer: "EmptyAnswer", TypeError: "NoChoices", AttributeError: "NoChoices",
          IndexError: "NoChoices"}


def failure_summary(endpoints) -> str:
    """"3 InternalServerError, 1 EmptyAnswer" over the endpoints' unanswered requests."""
    kinds: dict[str, int] = {}
    for e in {id(e): e for e in endpoints}.values():
        for k, n in e.failures.items():
            kinds[k] = kinds.get(k, 0) + n
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda x: -x[1]))


def check_endpoint(plan) -> None:
    """One line (ConfigError) unless the key's variable is set and the auto-interp endpoint of
    a plan (`jobs.plan.make.Plan`) that has one answers `/v1/models`; sends no chat request,
    so the dry run checks it too."""
    ai = plan.autointerp
    if ai and ai.base_url:  # the dry run too: listing the models sends no chat request
        Endpoint(ai.base_url, ai.explainer, Path(tempfile.gettempdir()), ai.api_key_env).check()
