"""Auto-interp against a real LLM server (llama.cpp serving SmolLM2-135M-Instruct): features
with a known answer against features that fire at random, through the same records the
feature browser's pass saves (`features.scan`, `window_codes`, `records.silent_positions`).

The activations: each position of held-out corpus text is its token's random unit vector (64
dimensions) next to 64 dimensions of noise. A planted feature reads one token's vector (it
fires on that token and nowhere else); a random feature reads the noise (it fires on about 3%
of positions, whatever the token). Measured margins: docs/autointerp.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# one-token words of the text; the first 20 that occur at least 20 times are planted
CANDIDATES = [" LORD", " God", " king", " Israel", " people", " land", " house", " children",
              " son", " father", " Egypt", " Moses", " David", " Jerusalem", " priest", " city",
              " day", " men", " hand", " earth", " water", " wife", " brother", " name",
              " years", " heaven", " servant", " daughter", " sons", " Abraham", " Jacob",
              " Joseph", " place", " field", " cattle", " death", " life",
              " fire", " gold", " silver", " bread", " blood", " mountain"]
PLANTED: list[str] = []  # filled by `planted_records`


def planted_records(tokenizer, text: str, tmp_path, half: int = 8):
    """feature -> records: 0..19 planted on PLANTED, 20..39 random."""
    from e2e.analysis import features
    from e2e.autointerp import records

    ids = torch.tensor(tokenizer(text)["input_ids"][:128 * 256]).view(128, 256)
    vocab = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(len(tokenizer), 64, generator=g), dim=-1)
    acts = torch.cat([emb[ids], torch.randn(*ids.shape, 64, generator=g)], -1)
    counts = torch.bincount(ids.flatten(), minlength=len(tokenizer))
    one = {w: tokenizer(w)["input_ids"] for w in CANDIDATES}
    PLANTED[:] = [w for w in CANDIDATES if len(one[w]) == 1 and counts[one[w][0]] >= 20][:20]
    assert len(PLANTED) == 20, PLANTED
    tok = [one[w] for w in PLANTED]
    w = torch.zeros(40, 128)
    w[:20, :64] = emb[[t[0] for t in tok]]
    w[20:, 64:] = torch.nn.functional.normalize(torch.randn(20, 64, generator=g), dim=-1)
    b = torch.cat([torch.full((20,), -0.5), torch.full((20,), -1.9)])  # N(0,1) > 1.9: 3%

    def encode(a):
        return torch.relu(a @ w.T + b)

    st = features.scan(encode, acts, 40, k=10, intervals=5, per_interval=2, seed=0)
    elems = np.arange(40)
    pos = np.concatenate([st.top_pos, st.interval_pos.reshape(40, -1)], 1)
    ok = pos >= 0
    win = np.full(pos.shape + (2 * half + 1,), np.nan, dtype=np.float32)
    win[ok] = features.window_codes(encode, acts, np.broadcast_to(elems[:, None], pos.shape)[ok],
                                    pos[ok], half)
    spos, scodes = records.silent_positions(
        lambda e, p: features.window_codes(encode, acts, elems[e], p, half), 40, ids.numel(),
        10, seed=0)
    kind = np.array([records.TOP] * 10 + [records.INTERVAL] * 10 + [records.SILENT] * 10)
    path = tmp_path / "planted.npz"
    records.save(path, elems, np.concatenate([pos, spos], 1), kind,
                 np.concatenate([win, scodes], 1), ids.flatten().numpy(), 256, vocab)
    return records.load(path)


@pytest.fixture(scope="module")
def planted(smollm2_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from e2e.lm.corpus import kjv_documents

    tok = AutoTokenizer.from_pretrained(smollm2_dir / "model")
    text = "".join(d for _, d in zip(range(1500), kjv_documents(), strict=False))
    return planted_records(tok, text, tmp_path_factory.mktemp("planted"))


def test_planted_records_are_what_was_planted(planted):
    """The records themselves: a planted feature's top contexts fire on its token only, and
    every silent context is silent."""
    from e2e.autointerp.records import SILENT, TOP

    for f, word in enumerate(PLANTED):
        for r in planted[f]:
            if r.kind == TOP:
                fired = [t for t, a in zip(r.tokens, r.acts, strict=True) if a > 0]
                assert fired and set(fired) == {word}
    assert all(r.acts.max() == 0 for f in planted for r in planted[f] if r.kind == SILENT)


def test_planted_features_score_higher_against_a_real_server(planted, llm_server, tmp_path):
    """20 planted and 20 random features explained by SmolLM2-135M: the planted explanations
    name their token, the random features' do not. (Its scores are at chance, measured in
    docs/autointerp.md; the scoring is pinned by the keyword judge below.)"""
    from e2e.autointerp.score import Budget, interpret
    from jobs.explain.endpoint import Endpoint

    ep = Endpoint(llm_server.url, "smollm2-135m", tmp_path / "cache")
    budget = Budget(explain=10, scorers=())
    got = {f: interpret(planted[f], ep.chat, ep.chat, budget, seed=f) for f in range(40)}
    def names(f: int, word: str) -> bool:
        return f'"{word.strip().lower()}"' in got[f]["explanation"].lower()

    # a random feature is the matched control of the planted one with the same index
    named = sum(names(f, PLANTED[f]) for f in range(20))
    control = sum(names(f + 20, PLANTED[f]) for f in range(20))
    print(f"explanations naming the planted token in quotes: planted {named}/20, matched "
          f"random controls {control}/20; {ep.sent} requests")
    assert named >= 8 and named - control >= 6


def keyword_judge(messages, json=False, max_tokens=0) -> str:
    """A deterministic stand-in for a capable LLM (none runs here): explains a feature by its
    most often marked token, judges an example by whether it holds the explanation's quoted
    word, simulates 10 on that word and 0 elsewhere. It reads only what a model would."""
    import json as json_
    import re
    from collections import Counter

    user = messages[-1]["content"]
    if json:
        d = json_.loads(user)
        word = re.search(r'"(.*)"', d["to_find"]).group(1)
        return json_.dumps({"activations": [
            {"token": a["token"], "activation": 10 if a["token"].strip() == word else 0}
            for a in d["activations"]]})
    if "Feature explanation:" not in user:
        marked = Counter(m.strip() for m in re.findall(r"<<(.*?)>>", user, re.S))
        return f'[EXPLANATION]: The word "{marked.most_common(1)[0][0]}".'
    word = re.search(r'"(.*)"', user.split("\n")[0]).group(1)
    texts = re.split(r"\nExample \d+: ", user.split("Text examples:\n", 1)[1])[1:]
    if "marked" in messages[0]["content"]:  # fuzzing: every marked span is the word
        return str([int(all(m.strip() == word for m in re.findall(r"<<(.*?)>>", t, re.S)))
                    for t in texts])
    return str([int(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", t) is not None)
                for t in texts])


def test_scores_separate_planted_from_random_with_a_capable_judge(planted):
    """The scoring logic (samples, labels, shuffling, marking, parsing, the three scores) on
    the planted records, with `keyword_judge` in place of the model: planted features score
    near 1, random ones near chance."""
    from e2e.autointerp.score import Budget, interpret

    budget = Budget(explain=10, test=10, shown=5, simulate=6)
    got = {f: interpret(planted[f], keyword_judge, keyword_judge, budget, seed=f)
           for f in range(40)}
    mean = {s: [np.mean([got[f][s] for f in r]) for r in (range(20), range(20, 40))]
            for s in ("detection", "fuzzing", "simulation")}
    print({s: [round(v, 3) for v in m] for s, m in mean.items()})
    assert all(got[f][f"{s}_failed"] == 0 for f in got for s in mean)
    assert mean["detection"][0] > 0.95 and mean["fuzzing"][0] > 0.95
    assert mean["simulation"][0] > 0.9
    assert abs(mean["detection"][1] - 0.5) < 0.15 and mean["simulation"][1] < 0.3
