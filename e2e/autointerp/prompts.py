"""The chat prompts of auto-interpretability and the parsing of their answers.

Each follows a published one in structure, instructions and answer format; the wording is ours
and so are the few-shot examples (short, so that a small local model's context holds them):
- explanation: Delphi's default explainer (Paulo et al. 2024): top contexts with the firing
  tokens between << >>, the answer's last line `[EXPLANATION]: ...`. Departures: an answer with
  no such line gives its last non-empty line (Delphi gives "Explanation could not be parsed.");
  a feature whose texts hold a marker's characters (code: C++'s `<<` and `>>`) is marked with
  the first pair of `MARKERS` they do not hold, and its prompts say so (`markers`).
- detection and fuzzing: Delphi's classifiers: `n` numbered examples, the answer a Python list
  of 1/0 (detection: does the example show the feature; fuzzing: are exactly the marked tokens
  the feature's). An answer that is not a list of `n` 0/1 values is a failed prompt (None), as
  in Delphi.
- simulation: the paper's simulator, OpenAI's logprob-free JSON simulator (Bills et al. 2023,
  as in the paper's library `e2e_sae/scripts/analysis/autointerp.py`): the tokens as JSON with
  the activation left null, the model fills in 0-10. An answer that does not repeat every
  token, or a value outside 0-10, predicts 0 there, as in theirs.
Every parser reads the answer without its reasoning blocks (`<think>...</think>` and the like)
and with code fences unwrapped, and takes the last well-formed answer in it (Delphi and the
OpenAI simulator do the same): a model that drafts, quotes the format or wraps its JSON in
prose still scores. Messages are OpenAI chat messages: [{"role": ..., "content": ...}].
"""

from __future__ import annotations

import json
import re

from e2e.autointerp.records import Record

# Marker pairs, Delphi's first; a feature's prompts use the first whose characters none of its
# texts holds. The last pair's characters, should they occur too, become [ ] in the texts.
MARKERS = (("<<", ">>"), ("[[", "]]"), ("{{", "}}"), ("\u27e6", "\u27e7"))
Markers = tuple[str, str]
HIGHLIGHT = 0.3  # a token is marked when its code is >= this share of the record's max (Delphi)

EXPLAIN_SYSTEM = (
    "You are a careful researcher looking for a pattern in text. You will see text examples "
    "in which some tokens are marked between {L} and {R}. Find what the marked tokens have in "
    "common, and the context they appear in. Keep the explanation short and specific; do not "
    "mention the markers. The last line of your answer must be the explanation, written as "
    "[EXPLANATION]: <explanation>")
EXPLAIN_SHOT = ("Example 1: they sailed across the{L} sea{R} to\n"
                "Example 2: the waves of the{L} sea{R} were\n"
                "Example 3: by the{L} sea{R} shore at night",
                "[EXPLANATION]: The word \"sea\".")

DETECT_SYSTEM = (
    "You are a careful linguist. You will be given an explanation of a feature of text, such "
    "as \"male pronouns\" or \"words about the sea\", and numbered text examples. For each "
    "example in turn, answer 1 if the example contains the feature and 0 if it does not. "
    "Answer with a Python list of 0s and 1s only, one per example.")
# the few-shot answer's examples: (text, marked token, shows the feature "sea"); a prompt of n
# examples gets a shot of n (a small model copies the shot's length)
SHOT_POOL = [("they sailed across the sea to", " sea", True),
             ("and he went into the house", " went", False),
             ("the waves of the sea were", " sea", True),
             ("a cup of water and bread", " water", False),
             ("by the sea shore at night", " sea", True),
             ("the fields were green in", " green", False)]
FUZZ_SYSTEM = (
    "You are a careful linguist. You will be given an explanation of a feature of text and "
    "numbered text examples in which some tokens are marked between {L} and {R}. Some examples "
    "are marked wrongly. For each example in turn, answer 1 if every marked token is an "
    "instance of the feature and 0 if not. Answer with a Python list of 0s and 1s only, one "
    "per example.")
SIMULATE_SYSTEM = (
    "We are studying neurons in a neural network. Each neuron looks for certain things in a "
    "short document. Read the explanation of what the neuron does, and predict the neuron's "
    "activation on each token of the document. You will see the document, then its tokens "
    "with the activation left blank. Print, in valid json, the exact same tokens, with the "
    "activation filled in from 0 to 10 according to the explanation.")


def markers(records: list[Record]) -> Markers:
    """The marker pair of a feature's prompts: the first of `MARKERS` whose characters occur
    in none of `records`' texts (every record any of its prompts shows), else the last."""
    chars = set("".join(t for r in records for t in r.tokens))
    return next((m for m in MARKERS if not set("".join(m)) & chars), MARKERS[-1])


def highlight(rec: Record, marked=None, pair: Markers = MARKERS[0]) -> str:
    """The record's text with runs of marked tokens between the `pair`; by default the tokens
    whose code is at least HIGHLIGHT times the record's largest."""
    if marked is None:
        top = float(rec.acts.max()) if len(rec.acts) else 0.0
        marked = [top > 0 and a >= HIGHLIGHT * top for a in rec.acts.tolist()]
    left, right = pair
    out, inside = [], False
    for tok, m in zip(rec.tokens, marked, strict=True):
        if m != inside:
            out.append(left if m else right)
            inside = m
        out.append(tok.replace(MARKERS[-1][0], "[").replace(MARKERS[-1][1], "]")
                   if pair == MARKERS[-1] else tok)
    return "".join(out + ([right] if inside else []))


def _chat(system: str, shot: tuple[str, str], user: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": shot[0]},
            {"role": "assistant", "content": shot[1]}, {"role": "user", "content": user}]


def _marked(text: str, pair: Markers) -> str:
    return text.replace("{L}", pair[0]).replace("{R}", pair[1])


def explain(records: list[Record], pair: Markers = MARKERS[0]) -> list[dict]:
    return _chat(_marked(EXPLAIN_SYSTEM, pair), (_marked(EXPLAIN_SHOT[0], pair), EXPLAIN_SHOT[1]),
                 "\n".join(f"Example {i + 1}: {highlight(r, pair=pair)}"
                           for i, r in enumerate(records)))


# Reasoning blocks some models write before their answer (DeepSeek-R1, Qwen3: <think>; others
# <thinking>, <reasoning>); one cut off by max_tokens has no closing tag, and one whose opening
# tag was the chat template's has only its closing tag. Delphi strips them the same way.
_REASONING = re.compile(r"<(think|thinking|reasoning)>.*?(?:</\1>|\Z)", re.DOTALL | re.IGNORECASE)
_CLOSING = re.compile(r"</(?:think|thinking|reasoning)>", re.IGNORECASE)
_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.DOTALL)


def answer_text(text: str) -> str:
    """An answer without its reasoning blocks and with code fences (```json ... ```) unwrapped:
    what the parsers below read."""
    text = _CLOSING.split(_REASONING.sub("", text))[-1]
    return _FENCE.sub(lambda m: m.group(1), text)


def parse_explanation(text: str) -> str:
    """The last non-empty `[EXPLANATION]: ...` line of the answer (a model that drafts first
    states its final answer last), else its last line; "" for no answer."""
    text = answer_text(text)
    for m in reversed(list(re.finditer(r"\[EXPLANATION\]:\s*(.*)", text, re.DOTALL))):
        if m.group(1).strip():
            return m.group(1).strip().splitlines()[0].strip()
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else ""


def classify(kind: str, explanation: str, texts: list[str], pair: Markers = MARKERS[0]
             ) -> list[dict]:
    """A detection or fuzzing prompt over already formatted example texts (fuzzing's marked
    with `pair`)."""
    shot = [SHOT_POOL[i % len(SHOT_POOL)] for i in range(len(texts))]
    if kind == "detection":
        system, shot_texts = DETECT_SYSTEM, [t for t, _, _ in shot]
    else:
        system = _marked(FUZZ_SYSTEM, pair)
        shot_texts = [t.replace(m, f"{pair[0]}{m}{pair[1]}", 1) for t, m, _ in shot]
    answer = "[" + ", ".join(str(int(y)) for _, _, y in shot) + "]"
    return _chat(system, (_classify_user("the word \"sea\".", shot_texts), answer),
                 _classify_user(explanation, texts))


def _classify_user(explanation: str, texts: list[str]) -> str:
    body = "\n".join(f"Example {i}: {t}" for i, t in enumerate(texts))
    return f"Feature explanation: {explanation}\n\nText examples:\n\n{body}"


def parse_list(text: str, n: int) -> list[bool] | None:
    """The last [...] of exactly n 0/1 values in the answer, else None."""
    for m in reversed(list(re.finditer(r"\[[^\[\]]*\]", answer_text(text)))):
        try:
            values = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if len(values) == n and all(v in (0, 1) for v in values):  # True/False are 1/0 too
            return [bool(v) for v in values]
    return None


def _sim_json(explanation: str, tokens: list[str], acts=None) -> str:
    return json.dumps({"to_find": explanation, "document": "".join(tokens),
                       "activations": [{"token": t, "activation": None if acts is None else a}
                                       for t, a in zip(tokens, acts or [None] * len(tokens),
                                                       strict=True)]})


SIMULATE_SHOT_TOKENS = ["the", " waves", " of", " the", " sea"]


def simulate(explanation: str, tokens: list[str]) -> list[dict]:
    shot = (_sim_json("the word \"sea\"", SIMULATE_SHOT_TOKENS),
            _sim_json("the word \"sea\"", SIMULATE_SHOT_TOKENS, [0, 0, 0, 0, 10]))
    return _chat(SIMULATE_SYSTEM, shot, _sim_json(explanation, tokens))


def parse_simulation(text: str, n: int) -> list[float] | None:
    """The n predicted activations (0 where a value is missing or outside 0-10) of the last
    JSON object in the answer with n of them (prose around it allowed), or None (the
    simulation predicts 0 everywhere then)."""
    text, decoder = answer_text(text), json.JSONDecoder()
    for start in reversed([i for i, c in enumerate(text) if c == "{"]):
        try:
            acts = decoder.raw_decode(text, start)[0]["activations"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if isinstance(acts, list) and len(acts) == n:
            return [_activation(a) for a in acts]
    return None


def _activation(a) -> float:
    try:
        v = float(a["activation"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return v if 0 <= v <= 10 else 0.0
