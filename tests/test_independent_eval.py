"""The project's eval of a saved SAE against an independent splice: TransformerLens hooks and
the paper's formula on the saved SAELens weights, no project code in the reference path."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from e2e.data.tokens import eval_stream
from e2e.io import cell_paths
from e2e.store import read_metrics
from e2e.train import train


def test_eval_of_a_trained_cell_equals_an_independent_hook_splice(smoke_cells, tmp_path):
    from transformer_lens.model_bridge import TransformerBridge

    (cfg,) = [c for c in smoke_cells if c.loss.setting == "e2e"]
    train(cfg, tmp_path, progress=False)
    p = cell_paths(tmp_path)
    w = load_file(str(p.sae / "sae_weights.safetensors"))
    sae_cfg = json.loads((p.sae / "cfg.json").read_text())

    model = TransformerBridge.boot_transformers(cfg.model.name_or_path, device="cpu")
    model.enable_compatibility_mode()
    stream = eval_stream(cfg.data, model.tokenizer, cfg.seed)  # the cell's eval rows
    batches = [stream.next_batch(cfg.eval.batch_size)
               for _ in range(cfg.eval.n_samples // cfg.eval.batch_size)]

    def splice(resid, hook):  # c = ReLU(x W_enc + b_enc); x_hat = c W_dec + b_dec
        c = torch.relu(resid @ w["W_enc"] + w["b_enc"])
        splice.l0.append((c > 0).float().sum(-1).mean())
        return c @ w["W_dec"] + w["b_dec"]

    splice.l0 = []
    ce_orig, ce_sae, kl = [], [], []
    with torch.no_grad():
        for tokens in batches:
            lo = model(tokens)
            ls = model.run_with_hooks(tokens, fwd_hooks=[(sae_cfg["hook_name"], splice)])
            target = tokens[:, 1:].reshape(-1)
            ce_orig.append(F.cross_entropy(lo[:, :-1].reshape(-1, lo.shape[-1]), target))
            ce_sae.append(F.cross_entropy(ls[:, :-1].reshape(-1, ls.shape[-1]), target))
            lp, lq = lo.log_softmax(-1), ls.log_softmax(-1)
            kl.append((lp.exp() * (lp - lq)).sum(-1).mean())
    mean = lambda xs: float(torch.stack(xs).mean())  # noqa: E731
    ev = read_metrics(p.metrics)["eval"]
    assert ev["ce_loss_orig"] == pytest.approx(mean(ce_orig), abs=1e-5)
    assert ev["ce_loss_increase"] == pytest.approx(mean(ce_sae) - mean(ce_orig), abs=1e-5)
    assert ev["kl_orig_sae"] == pytest.approx(mean(kl), abs=1e-5)
    assert ev["l0"] == pytest.approx(mean(splice.l0), abs=1e-4)
