"""The first-letter spelling task of SAEBench's feature absorption (SAEBench 0.6.0
`sae_bench/evals/absorption/`: `vocab.py`, `prompting.py`, `probing.py`): what does not depend on
the dictionary, computed once per (model, layer) and shared by every dictionary there.

- Vocabulary (`alpha_vocab`): the tokenizer's tokens whose text, less one leading space, is all
  ASCII letters (its `get_alpha_tokens`), in token-id order (SAEBench iterates the tokenizer's
  vocabulary dict, whose order is the tokenizer library's).
- Prompts (`icl_prompt`): ten in-context examples `"{word} has the first letter: X"` of other
  words, one per line, a newline first, then `"{word} has the first letter:"`; examples drawn
  by `random.Random(seed)` as SAEBench draws them from Python's `random` after
  `random.seed(seed)` (`create_icl_prompt`, its contamination check included).
- Split (`spelling_split`): the vocabulary shuffled, 80% of the words train, the rest test, each
  with examples from its own side (`create_dataset_probe_training`).
- Activations (`word_resid`): the residual at the dictionary's hook
  (`blocks.<layer>.hook_resid_pre`; SAEBench reads `hook_resid_post` of the SAE's `hook_layer`,
  which for a resid_pre SAE is the next block's input) at the word's token, the prompt
  tokenized as TransformerLens does (BOS first). The word's position is re-derived for each
  tokenizer from the template (`word_position`; SAEBench's -6 for GPT-2 and SmolLM2), counted
  from each prompt's own end (SAEBench pads a batch on the right and reads one position: the
  same wherever a batch's prompts are of one length). A prompt whose token there is not its
  word is left out (SAEBench reads whatever sits there).
- Ground-truth probe (`train_probe`): a 26-way one-vs-rest logistic regression on the
  residual: Adam, 50 epochs, batches of 64, lr 1e-2 decaying to 1e-5, weight decay 1e-4, BCE
  with each class's negatives/positives as its positive weight (`train_multi_probe`).
- The words it is scored on (`SpellingData.abs_*`): each test word the probe gets right, in a
  fresh prompt whose examples come from the whole vocabulary (`FeatureAbsorptionCalculator`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from math import exp, log

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from e2e.evals.probing import prompt_ids, resid_at
from e2e.typed import ConfigError

LETTERS = "abcdefghijklmnopqrstuvwxyz"
TEMPLATE = "{word} has the first letter:"
MAX_ICL = 10
# The plan's bound (jobs.plan.evals.check_evals): ten examples of a word, its template and a
# letter take about 90 tokens on SmolLM2's tokenizer and 147 on the smoke grid's small one; a
# model with a shorter context cannot run the task (a longer prompt is refused at its forward)
MIN_CONTEXT = 128
MIN_PROBE_F1, MIN_LETTERS = 0.6, 20  # SAEBench's guard: letters the model must spell


class SpellingError(ConfigError):
    """The model or tokenizer cannot be evaluated for absorption (bad input: one line)."""


def alpha_vocab(tokenizer, exclude: tuple[int, ...] = ()) -> list[str]:
    """The words (token texts) of `tokenizer` made of ASCII letters after at most one leading
    space, by token id, less the ids in `exclude` (a dictionary never acts on them:
    `data.exclude_tokens`); SpellingError when there are none."""
    words = [text for i, text in alpha_tokens(tokenizer) if i not in exclude]
    if not words:
        raise SpellingError("absorption: the tokenizer has no token made of letters only")
    return words


def alpha_tokens(tokenizer) -> list[tuple[int, str]]:
    """(id, text) of the tokens made of ASCII letters after at most one leading space."""
    out = []
    for token, i in sorted(tokenizer.get_vocab().items(), key=lambda t: t[1]):
        text = alpha_text(tokenizer, token)
        if text is not None:
            out.append((i, text))
    return out


def alpha_text(tokenizer, token: str) -> str | None:
    """`token`'s text if it is ASCII letters after at most one leading space, else None."""
    text = tokenizer.convert_tokens_to_string([token])
    if token.startswith("▁") and not text.startswith(" "):  # SAEBench's sentencepiece fix
        text = " " + text
    bare = text[1:] if text.startswith(" ") else text
    return text if bare and set(bare) <= set(LETTERS + LETTERS.upper()) else None


def first_letter(word: str) -> str:
    """The answer: a space and the word's first letter, upper case (" C" for " cat")."""
    return " " + [c for c in word.strip() if c.isalpha()][0].upper()


def icl_prompt(word: str, examples: list[str], rng: random.Random,
               template: str = TEMPLATE) -> str:
    """The prompt whose last line asks for `word`'s first letter, after `MAX_ICL` examples
    drawn from `examples` without `word` (`create_icl_prompt`)."""
    for _ in range(1000):
        icl = rng.sample(examples, MAX_ICL)
        if word not in icl:
            break
    else:
        raise SpellingError(f"absorption: no example set without {word!r} in 1,000 draws")
    lines = [template.format(word=ex) + first_letter(ex) for ex in icl]
    return "\n" + "\n".join(lines) + "\n" + template.format(word=word)


def spelling_split(vocab: list[str], seed: int, template: str = TEMPLATE,
                   max_words: int = 0) -> tuple[list[tuple[str, str, int]], ...]:
    """(train, test): (word, prompt, letter index) per word; `max_words` > 0 keeps that many
    of the shuffled words (a bound for CPU runs; SAEBench keeps all)."""
    rng = random.Random(seed)
    shuffled = rng.sample(vocab, len(vocab))
    if max_words:
        shuffled = shuffled[:max_words]
    cut = int(len(shuffled) * 0.8)
    sides = []
    for words in (shuffled[:cut], shuffled[cut:]):
        sides.append([(w, icl_prompt(w, words, rng, template),
                       LETTERS.index(first_letter(w).strip().lower())) for w in words])
    return tuple(sides)


def word_position(tokenizer, template: str = TEMPLATE) -> int:
    """The word's position counted from the prompt's end (-6 for SAEBench's template with
    GPT-2's tokenizer): one more than the template's tokens after `{word}`."""
    head = "\n cat"
    tail = template.split("{word}", 1)[1]
    return len(tokenizer(head)["input_ids"]) - len(tokenizer(head + tail)["input_ids"]) - 1


def word_resid(model, words: list[str], prompts: list[str], layer: int, pos: int,
               batch_size: int = 64) -> tuple[torch.Tensor, np.ndarray]:
    """(n, d_model) float32 residual at `blocks.<layer>.hook_resid_pre` at each prompt's
    `pos`, and a mask of the prompts whose token there is their word's single token;
    SpellingError, before any forward, when a prompt does not fit the model's context."""
    tok = model.tokenizer
    ids = [prompt_ids(tok, p, 1 << 30) for p in prompts]
    longest = max(map(len, ids), default=0)
    if longest > model.cfg.n_ctx:
        raise SpellingError(f"absorption: its prompts ({MAX_ICL} examples, as SAEBench's) run "
                            f"to {longest} tokens, past the model's context of "
                            f"{model.cfg.n_ctx}")
    ok = np.array([tok.decode(i[pos]) == w for i, w in zip(ids, words, strict=True)])
    return resid_at(model, ids, [len(i) + pos for i in ids], layer, batch_size), ok


def train_probe(x: torch.Tensor, labels: torch.Tensor, seed: int, batch_size: int = 64,
                epochs: int = 50, lr: float = 1e-2, weight_decay: float = 1e-4,
                l1: float = 0.0, num_classes: int = -1) -> nn.Linear:
    """SAEBench's `train_multi_probe` (with `l1` > 0, `train_sparse_multi_probe`): one logistic
    regression per class of `labels` (n,) on x (n, dim), its randomness drawn from
    `torch.manual_seed(seed)` (the global generator restored after)."""
    from torch.utils.data import DataLoader, TensorDataset

    y = F.one_hot(labels, num_classes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = nn.Linear(x.shape[1], y.shape[1]).to(x.dtype)
        loader = DataLoader(TensorDataset(x, y.to(x.dtype)), batch_size=batch_size,
                            shuffle=True)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=(len(y) - y.sum(0)) / y.sum(0))
        opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, exp(log(1e-5 / lr) / epochs))
        for _ in range(epochs):
            for xb, yb in loader:
                opt.zero_grad()
                loss = loss_fn(probe(xb), yb)
                if l1:
                    loss = loss + l1 * probe.weight.abs().sum(dim=-1).mean()
                loss.backward()
                opt.step()
            sched.step()
    return probe.eval()


@dataclass
class SpellingData:
    """The task at one (model, layer): residuals (n, d_model) float32 and letter indices (n,)
    of the training and test words, the ground-truth probe (26, d_model) and (26,), its F1 per
    letter on the test words, and the words absorption is scored on (`abs_*`)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    probe_weight: torch.Tensor
    probe_bias: torch.Tensor
    probe_f1: list[float]
    abs_x: torch.Tensor
    abs_y: torch.Tensor
    abs_words: list[str]
    position: int
    dropped: int  # prompts whose word was not one token at `position`

    def passed(self, min_f1: float = MIN_PROBE_F1) -> list[int]:
        """The letters whose probe F1 is above `min_f1` (SAEBench's `min_GT_probe_f1`)."""
        return [i for i, f in enumerate(self.probe_f1) if f > min_f1]

    def check(self, min_f1: float = MIN_PROBE_F1, min_letters: int = MIN_LETTERS) -> None:
        """SpellingError in one line when the model spells fewer than `min_letters` letters
        (SAEBench's `min_feats_for_eval`), naming those it spells and every letter's F1."""
        ok = self.passed(min_f1)
        if len(ok) < min_letters:
            f1s = ", ".join(f"{c} {f:.2f}" for c, f in zip(LETTERS, self.probe_f1, strict=True))
            raise SpellingError(
                f"absorption: the model spells {len(ok)} letters with a probe F1 above "
                f"{min_f1} ({''.join(LETTERS[i] for i in ok) or 'none'}), fewer than the "
                f"{min_letters} SAEBench asks for, on {len(self.x_test)} test words (more: "
                f"words=); probe F1s: {f1s}")


def probe_f1s(probe: nn.Linear, x: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """The probe's F1 per letter on (x, labels), a letter scored when its logit is > 0
    (`build_metrics_df`'s `f1_probe`)."""
    from sklearn.metrics import f1_score

    with torch.no_grad():
        scores = probe(x).float().numpy()
    y = labels.numpy()
    return [float(f1_score(y == i, scores[:, i] > 0, zero_division=0))
            for i in range(len(LETTERS))]


def spelling_data(model, layer: int, seed: int = 42, max_words: int = 0,
                  batch_size: int = 64, exclude: tuple[int, ...] = ()) -> SpellingData:
    """The task of `model` at `blocks.<layer>.hook_resid_pre`, on the letter-only tokens not
    in `exclude` (`alpha_vocab`); SpellingError for a tokenizer with no such token."""
    tok = model.tokenizer
    vocab = alpha_vocab(tok, exclude)
    pos = word_position(tok)
    sides, dropped = [], 0
    for side in spelling_split(vocab, seed, TEMPLATE, max_words):
        x, ok = word_resid(model, [w for w, _, _ in side], [p for _, p, _ in side], layer, pos,
                           batch_size)
        keep = torch.from_numpy(np.flatnonzero(ok))
        sides.append((x[keep], torch.tensor([c for _, _, c in side])[keep],
                      [side[i][0] for i in keep.tolist()]))
        dropped += int((~ok).sum())
    (x_tr, y_tr, _), (x_te, y_te, w_te) = sides
    probe = train_probe(x_tr, y_tr, seed, num_classes=len(LETTERS))
    with torch.no_grad():
        right = probe(x_te) > 0
    rng = random.Random(seed)
    words, ys = [], []
    for i in range(len(LETTERS)):  # SAEBench's order: by letter, then the test words' order
        for j in torch.nonzero((y_te == i) & right[:, i]).flatten().tolist():
            words.append(w_te[j])
            ys.append(i)
    prompts = [icl_prompt(w, vocab, rng) for w in words]
    abs_x, ok = word_resid(model, words, prompts, layer, pos, batch_size)
    keep = np.flatnonzero(ok)
    return SpellingData(x_tr, y_tr, x_te, y_te, probe.weight.detach().clone(),
                        probe.bias.detach().clone(), probe_f1s(probe, x_te, y_te),
                        abs_x[torch.from_numpy(keep)], torch.tensor(ys)[keep],
                        [words[i] for i in keep], pos, dropped + int((~ok).sum()))
