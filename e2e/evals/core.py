"""SAEBench's `core` evaluation of one dictionary at `blocks.<layer>.hook_resid_pre`, in its
definitions and under its names (kept apart from the paper's, `e2e.metrics`).

Source: SAEBench 0.6.0 `sae_bench/evals/core/main.py`, a copy of SAELens's `evals.py`; computed
here as SAELens 6.54 computes it (`get_recons_loss`, `get_sparsity_and_variance_metrics`,
`get_featurewise_weight_based_metrics`), pinned against it in tests/test_evals_core.py. SAELens
has since fixed two of SAEBench 0.6.0's formulas, and its fixes are used: `explained_variance`
is 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2) over every evaluated token (SAEBench 0.6.0
subtracts the square of the mean over dimensions of E[x_d^2]), and `mse` is E||x - x_hat||^2
per token (SAEBench 0.6.0 divides it by the batch's token count once more); `l1` sums |c|.
SAEBench's own `misc_metrics` (frac_alive, density shares, max cosine similarities) follow
`calculate_misc_metrics` and `calculate_max_cosine_sim`.

Positions: the dictionary acts at the kept positions (`e2e.model.positions.Positions`: SAELens's
`ignore_tokens`, plus our leading positions and norm rule) and the clean residual stays at the
others (SAELens's replacement hook; SAEBench's with `exclude_special_tokens_from_reconstruction`).
The zero-ablation baseline zeroes the hook at every position, as both do. Per-token metrics
average over the kept positions of all batches (a kept position's CE: its next-token loss,
the row's last position has none); `relative_reconstruction_bias` is one ratio per batch,
averaged over batches.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from e2e.dictionary import Dictionary
from e2e.model import Positions, clean_pass, patched_pass

# SAEBench's metric categories (`CoreMetricCategories`) and the names in each.
CATEGORIES = {
    "model_behavior_preservation": ("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"),
    "model_performance_preservation": ("ce_loss_score", "ce_loss_with_ablation",
                                       "ce_loss_with_sae", "ce_loss_without_sae"),
    "reconstruction_quality": ("explained_variance", "explained_variance_legacy", "mse",
                               "cossim"),
    "shrinkage": ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"),
    "sparsity": ("l0", "l1"),
    "misc_metrics": ("freq_over_1_percent", "freq_over_10_percent",
                     "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
                     "average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim",
                     "frac_alive"),
    "token_stats": ("total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"),
}


@torch.no_grad()
def core_eval(model, d: Dictionary, layer: int, batches: list[torch.Tensor],
              positions: Positions | None = None
              ) -> tuple[dict[str, dict[str, float]], list[dict[str, float]]]:
    """SAEBench's `eval_result_metrics` (category -> name -> value; NaN where a dictionary has
    no encoder) and `eval_result_details` (one dict per element: `index`, `feature_density`,
    `consistent_activation_heuristic`, `encoder_bias`, `encoder_norm`,
    `encoder_decoder_cosine_sim`, `max_decoder_cosine_sim`, `max_encoder_cosine_sim`) of `d` on
    token batches (batch, pos) through `model` (a float32 evaluation)."""
    positions = positions or Positions()
    per_token: dict[str, list[torch.Tensor]] = defaultdict(list)
    ev = torch.zeros(3, dtype=torch.float64)  # sum ||x||^2, sum ||x - x_hat||^2, tokens
    sum_x = torch.zeros(d.d_in, dtype=torch.float64)
    fired = torch.zeros(d.n_dict, dtype=torch.float64)
    rows_fired = torch.zeros(d.n_dict, dtype=torch.float64)
    total = 0
    for tokens in batches:
        clean = clean_pass(model, tokens, layer, full=True)
        kept = positions.kept(tokens, clean.resid).to(clean.resid.device)
        x = clean.resid[kept].float()
        c = d.encode(x)
        x_hat = d.decode(c).float()
        _logit_terms(model, clean, tokens, kept, x_hat, per_token)
        _activation_terms(x, x_hat, c, per_token)
        ev += torch.stack([x.square().sum(), (x - x_hat).square().sum(),
                           torch.tensor(float(len(x)))]).double().cpu()
        sum_x += x.sum(0).double().cpu()
        on = (c != 0).double().cpu()
        fired += on.sum(0)
        row = kept.nonzero()[:, 0].cpu()
        rows_fired += (torch.zeros(tokens.shape[0], d.n_dict, dtype=torch.float64)
                       .index_add_(0, row, on) > 0).sum(0)
        total += tokens.numel()
    m = {k: float(torch.cat(v).double().mean()) for k, v in per_token.items()}
    m["kl_div_score"] = (m["kl_div_with_ablation"] - m["kl_div_with_sae"]) / m[
        "kl_div_with_ablation"]
    m["ce_loss_score"] = (m["ce_loss_with_ablation"] - m["ce_loss_with_sae"]) / (
        m["ce_loss_with_ablation"] - m["ce_loss_without_sae"])
    m["explained_variance"] = _explained_variance(ev, sum_x)
    m["total_tokens_eval_reconstruction"] = m["total_tokens_eval_sparsity_variance"] = total
    density = fired / ev[2]
    weights = weight_metrics(d)
    m.update(misc_metrics(density, weights))
    details = {"feature_density": density, "consistent_activation_heuristic":
               fired / rows_fired, **weights}
    return ({cat: {k: m[k] for k in names} for cat, names in CATEGORIES.items()},
            [{"index": i, **{k: float(v[i]) for k, v in details.items()}}
             for i in range(d.n_dict)])


def _logit_terms(model, clean, tokens: torch.Tensor, kept: torch.Tensor, x_hat: torch.Tensor,
                 out: dict[str, list[torch.Tensor]]) -> None:
    """Per kept position: KL(p_clean || p) and the next-token CE with the dictionary's output
    written at the kept positions and with the hook zeroed at all, and the clean CE; a row at
    a time (a (batch, pos, vocab) float32 tensor per logit set is 200 MB for SmolLM2)."""
    written = clean.resid.clone()
    written[kept] = x_hat.to(written.dtype)
    logits = {"sae": patched_pass(model, clean, written)[0],
              "ablation": patched_pass(model, clean, torch.zeros_like(clean.resid))[0]}
    nxt = tokens[:, 1:].to(kept.device)
    for i in range(tokens.shape[0]):
        log_p = F.log_softmax(clean.logits[i].float(), -1)
        p = log_p.exp()
        ce_kept = kept[i, :-1]
        out["ce_loss_without_sae"].append(_ce(log_p, nxt[i])[ce_kept])
        for name, z in logits.items():
            log_q = F.log_softmax(z[i].float(), -1)
            kl = F.kl_div(log_q, p, reduction="none").sum(-1)
            out[f"kl_div_with_{name}"].append(kl[kept[i]])
            out[f"ce_loss_with_{name}"].append(_ce(log_q, nxt[i])[ce_kept])


def _ce(log_probs: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """(pos - 1,) next-token losses of a row's log-probabilities (pos, vocab)."""
    return -log_probs[:-1].gather(-1, nxt[:, None]).squeeze(-1)


def _activation_terms(x: torch.Tensor, x_hat: torch.Tensor, c: torch.Tensor,
                      out: dict[str, list[torch.Tensor]]) -> None:
    """Per kept token (n, d_in): SAELens's shrinkage, sparsity and reconstruction terms."""
    norm_in, norm_out = x.norm(dim=-1), x_hat.norm(dim=-1)
    rss = (x - x_hat).square().sum(-1)
    out["l2_norm_in"].append(norm_in)
    out["l2_norm_out"].append(norm_out)
    out["l2_ratio"].append(norm_out / torch.where(norm_in.abs() < 1e-4, 1.0, norm_in))
    # dictionary_learning's Eq. 10 (arXiv 2404.16014), one value per batch
    out["relative_reconstruction_bias"].append(
        (norm_out.square().mean() / (x * x_hat).sum(-1).mean()).reshape(1))
    out["l0"].append((c != 0).sum(-1).float())
    out["l1"].append(c.abs().sum(-1).float())
    out["explained_variance_legacy"].append(1 - rss / (x - x.mean(0)).square().sum(-1))
    out["mse"].append(rss)
    out["cossim"].append((x / x.norm(dim=-1, keepdim=True)
                          * (x_hat / x_hat.norm(dim=-1, keepdim=True))).sum(-1))


def _explained_variance(ev: torch.Tensor, sum_x: torch.Tensor) -> float:
    """SAELens's `ExplainedVarianceCalculator.compute` from the float64 sums."""
    sq, resid, n = (float(v) for v in ev)
    if n == 0:
        return 0.0
    variance = sq / n - float((sum_x / n).square().sum())
    mse = resid / n
    if variance < 1e-10:
        return 1.0 if mse < 1e-10 else 0.0
    return 1.0 - mse / variance


def weight_metrics(d: Dictionary) -> dict[str, torch.Tensor]:
    """SAEBench's per-element weight metrics (n_dict each; NaN for the encoder's where `d` has
    none, a fitted dictionary): `encoder_bias`, `encoder_norm`, `encoder_decoder_cosine_sim`,
    `max_encoder_cosine_sim`, `max_decoder_cosine_sim` (an element's largest cosine with any
    other)."""
    t = {k: v.float() for k, v in d.saelens_tensors().items()}
    nan = torch.full((d.n_dict,), float("nan"))
    out = {"encoder_bias": t.get("b_enc", nan), "encoder_norm": nan,
           "encoder_decoder_cosine_sim": nan, "max_encoder_cosine_sim": nan,
           "max_decoder_cosine_sim": max_cosine_sim(t["W_dec"].T)}
    if "W_enc" in t:
        w_enc = t["W_enc"]
        out.update(encoder_norm=w_enc.norm(dim=0),
                   encoder_decoder_cosine_sim=F.cosine_similarity(
                       F.normalize(t["W_dec"], dim=1), F.normalize(w_enc, dim=0).T),
                   max_encoder_cosine_sim=max_cosine_sim(w_enc))
    return out


def max_cosine_sim(w: torch.Tensor, chunk: int = 100) -> torch.Tensor:
    """(n,) the largest cosine similarity of each column of w (d, n) with any other column
    (SAEBench's `calculate_max_cosine_sim`), a chunk of columns at a time."""
    unit = F.normalize(w, dim=0)
    out = torch.empty(w.shape[1])
    for s in range(0, w.shape[1], chunk):
        sims = unit[:, s:s + chunk].T @ unit
        idx = torch.arange(sims.shape[0])
        sims[idx, s + idx] = float("-inf")
        out[s:s + chunk] = sims.max(1).values
    return out


def misc_metrics(density: torch.Tensor, weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """SAEBench's `calculate_misc_metrics`: the shares of elements firing on more than 1% and
    10% of tokens, those elements' share of all firings, the mean largest cosines, and the
    fraction of elements that fired at all."""
    density = density.float()
    total = density.sum()
    out = {"average_max_encoder_cosine_sim": float(weights["max_encoder_cosine_sim"].mean()),
           "average_max_decoder_cosine_sim": float(weights["max_decoder_cosine_sim"].mean()),
           "frac_alive": float((density > 0).float().mean())}
    for pct, cut in ((1, 0.01), (10, 0.1)):
        out[f"freq_over_{pct}_percent"] = float((density > cut).float().mean())
        out[f"normalized_freq_over_{pct}_percent"] = (
            float(density[density > cut].sum() / total) if total > 0 else 0.0)
    return out
