"""SAEBench's feature absorption of one dictionary (Chanin et al. 2024, "A is for Absorption";
SAEBench 0.6.0 `sae_bench/evals/absorption/`: `k_sparse_probing.py`,
`feature_absorption_calculator.py`, `main.py`) on the spelling task of its model and layer
(`e2e.evals.spelling`), pinned against SAEBench's own code in tests/test_evals_absorption.py.

- k-sparse probes (`k_sparse_probes`): an L1 probe on the dictionary's codes of the training
  words (0.01 times the mean over letters of its weights' L1 norm, batches of 4,096, weight
  decay 1e-6, otherwise the ground-truth probe's recipe); for each k ≤ 10 and letter, the
  latents of its k largest weights, then scikit-learn's balanced logistic regression on them;
  F1 on the test words, a word scored when the probe's logit is > 0.
- Feature splits (`feature_splits`): k grows while each F1 beats the last by more than 0.03;
  the latents of the last k kept are the letter's main latents.
- Absorption (`absorption_of_words`), per test word the ground-truth probe gets right, in its
  fresh prompt: the absorption fraction (the probe projection the main latents miss, carried by
  at most 3 other latents whose decoder's cosine with the probe is ≥ 0.1, counted only if they
  carry ≥ 40% of the residual's projection) and full absorption (no main latent fires; the top
  projecting latent's cosine ≥ 0.025 and its projection ≥ 40% of the residual's).
- Scores (`absorption_eval`): per letter the means over its words; SAEBench's
  `mean_absorption_fraction_score`, `mean_full_absorption_score` and `mean_num_split_features`
  (with standard deviations) over the letters whose probe F1 is above 0.6.

SAEBench also computes AUCs its scores do not use (undefined for a letter with no test word);
they are left out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from e2e.dictionary import Dictionary
from e2e.evals.probing import one_blas_thread
from e2e.evals.spelling import LETTERS, MIN_LETTERS, MIN_PROBE_F1, SpellingData, train_probe

EPS_FIRE = 1e-8  # a main latent with a smaller code did not fire (full absorption)
FULL_COS, FRACTION_COS, PROJ_SHARE, MAX_ABSORBERS = 0.025, 0.1, 0.4, 3
MAX_K, F1_JUMP, L1 = 10, 0.03, 0.01


@dataclass(frozen=True)
class KProbe:
    feats: torch.Tensor  # (k,) latent ids
    weight: torch.Tensor  # (k,)
    bias: float

    def score(self, codes: torch.Tensor) -> torch.Tensor:
        return codes[:, self.feats] @ self.weight + self.bias


def k_sparse_probes(codes: torch.Tensor, labels: torch.Tensor, seed: int,
                    max_k: int = MAX_K, l1: float = L1) -> dict[int, dict[int, KProbe]]:
    """k -> letter -> probe on the codes (n, n_latents) of the training words
    (`train_k_sparse_probes`)."""
    from sklearn.linear_model import LogisticRegression

    weights = train_probe(codes, labels, seed, batch_size=4096, weight_decay=1e-6,
                          l1=l1).weight.detach().float()
    y = labels.numpy()
    out: dict[int, dict[int, KProbe]] = {}
    with one_blas_thread():  # 260 fits of (words, k ≤ 10): threads only cost here
        for k in range(1, max_k + 1):
            out[k] = {}
            for label in sorted(set(y.tolist())):
                feats = weights[label].topk(k).indices
                fit = LogisticRegression(max_iter=500, class_weight="balanced").fit(
                    codes[:, feats].float().numpy(), (y == label).astype(np.int64))
                out[k][label] = KProbe(feats, torch.tensor(fit.coef_[0]).float(),
                                       float(fit.intercept_[0]))
    return out


def feature_splits(k_f1: dict[int, dict[int, float]], kprobes: dict[int, dict[int, KProbe]],
                   letter: int, jump: float = F1_JUMP) -> list[int]:
    """The main latents of a letter: those of the largest k reached while each k's F1 beats the
    last kept one by more than `jump` (`add_feature_splits_to_metrics_df`)."""
    best, feats = -100.0, []
    for k in sorted(k_f1):
        if letter not in k_f1[k] or not k_f1[k][letter] > best + jump:
            break
        best, feats = k_f1[k][letter], kprobes[k][letter].feats.tolist()
    return feats



def absorption_of_words(x: torch.Tensor, codes: torch.Tensor, probe_dir: torch.Tensor,
                        cos: torch.Tensor, main: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(absorption fraction (n,), full absorption (n,) bool) of words whose residuals are x
    (n, d_model) and codes (n, n_latents), for a letter's probe direction (d_model,), the
    cosines of the decoder's elements with it (n_latents,) and its main latents
    (`FeatureAbsorptionCalculator.calculate_absorption`)."""
    direction = probe_dir / probe_dir.norm()
    act = (x @ direction).double()  # the residual's projection on the probe
    proj = (codes * cos).double()  # each latent's
    main_t = torch.tensor(main, dtype=torch.long)
    main_proj = proj[:, main_t].sum(1)
    others = torch.ones(codes.shape[1], dtype=torch.bool)
    others[main_t] = False
    candidates = torch.where(others & (cos >= FRACTION_COS) & (proj > 0), proj, 0.0)
    absorbers = candidates.topk(min(MAX_ABSORBERS, codes.shape[1]), dim=1).values.sum(1)
    absorbed = torch.minimum(absorbers, act - main_proj)
    fraction = (absorbed / (absorbed + main_proj)).clamp(0, 1)
    fraction = torch.where(main_proj <= 0, 1.0, fraction)
    fraction = torch.where((main_proj >= act) | (absorbers / act < PROJ_SHARE), 0.0, fraction)
    top = proj.topk(1, dim=1)
    full = ((codes[:, main_t] < EPS_FIRE).all(1) & (cos[top.indices[:, 0]] >= FULL_COS)
            & (act >= 0) & (top.values[:, 0] / act >= PROJ_SHARE))
    return fraction.float(), full


def k_f1s(kprobes: dict[int, dict[int, KProbe]], codes: torch.Tensor,
          labels: torch.Tensor) -> dict[int, dict[int, float]]:
    """k -> letter -> the k-sparse probe's F1 on the test words' codes."""
    from sklearn.metrics import f1_score

    y = labels.numpy()
    return {k: {i: float(f1_score(y == i, (p.score(codes) > 0).numpy(), zero_division=0))
                for i, p in by.items()} for k, by in kprobes.items()}


@torch.no_grad()
def encode(d: Dictionary, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Codes (n, n_dict) float32 on CPU of residuals (n, d_in)."""
    dev = d.dict_elements.device
    return torch.cat([d.encode(x[s:s + batch].to(dev)).float().cpu()
                      for s in range(0, len(x), batch)])


def absorption_eval(d: Dictionary, data: SpellingData, seed: int = 42,
                    min_f1: float = MIN_PROBE_F1, min_letters: int = MIN_LETTERS
                    ) -> tuple[dict, list[dict], dict]:
    """SAEBench's `eval_result_metrics` ({"mean": ...}), `eval_result_details` (one per letter
    scored) and our extras (the probe's F1 per letter, the k-sparse F1s, the main latents) of
    `d`; SpellingError (`SpellingData.check`) when the model spells too few letters."""
    data.check(min_f1, min_letters)
    kprobes = k_sparse_probes(encode(d, data.x_train), data.y_train, seed)
    f1 = k_f1s(kprobes, encode(d, data.x_test), data.y_test)
    with torch.no_grad():
        decoder = d.dict_elements.T.float().cpu()  # (n_dict, d_in)
    codes = encode(d, data.abs_x)
    details, splits = [], {}
    for i in data.passed(min_f1):
        rows = data.abs_y == i
        if not rows.any() or i not in kprobes[1]:
            continue
        main = feature_splits(f1, kprobes, i)
        direction = data.probe_weight[i].float()
        cos = F.cosine_similarity(direction[None], decoder, dim=-1)
        frac, full = absorption_of_words(data.abs_x[rows], codes[rows], direction, cos, main)
        n = int(rows.sum())
        details.append({"first_letter": LETTERS[i],
                        "mean_absorption_fraction": float(frac.double().sum()) / n,
                        "full_absorption_rate": int(full.sum()) / n,
                        "num_full_absorption": int(full.sum()),
                        "num_probe_true_positives": n, "num_split_features": len(main)})
        splits[LETTERS[i]] = main
    col = lambda k: [r[k] for r in details]  # noqa: E731
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else float("nan")  # noqa: E731
    mean = {"mean_absorption_fraction_score": statistics.mean(col("mean_absorption_fraction")),
            "mean_full_absorption_score": statistics.mean(col("full_absorption_rate")),
            "mean_num_split_features": statistics.mean(col("num_split_features")),
            "std_dev_absorption_fraction_score": sd(col("mean_absorption_fraction")),
            "std_dev_full_absorption_score": sd(col("full_absorption_rate")),
            "std_dev_num_split_features": sd(col("num_split_features"))}
    extra = {"probe_f1": dict(zip(LETTERS, data.probe_f1, strict=True)),
             "k_sparse_f1": {k: {LETTERS[i]: v for i, v in by.items()} for k, by in f1.items()},
             "main_latents": splits}
    return {"mean": mean}, details, extra
