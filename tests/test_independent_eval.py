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


def _ce_ce_kl(lo, ls, targets):
    """The paper's formulas written out: next-token CE of the clean and the spliced logits
    (batch, pos, vocab) against `targets` (batch, pos - 1), and KL(p_clean ‖ p_sae) per
    token."""
    t = targets.reshape(-1)
    ce = [F.cross_entropy(x[:, :-1].reshape(-1, x.shape[-1]), t) for x in (lo, ls)]
    lp, lq = lo.log_softmax(-1), ls.log_softmax(-1)
    return ce[0], ce[1], (lp.exp() * (lp - lq)).sum(-1).mean()


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
            for out, v in zip((ce_orig, ce_sae, kl), _ce_ce_kl(lo, ls, tokens[:, 1:]),
                              strict=True):
                out.append(v)
    mean = lambda xs: float(torch.stack(xs).mean())  # noqa: E731
    ev = read_metrics(p.metrics)["eval"]
    assert ev["ce_loss_orig"] == pytest.approx(mean(ce_orig), abs=1e-5)
    assert ev["ce_loss_increase"] == pytest.approx(mean(ce_sae) - mean(ce_orig), abs=1e-5)
    assert ev["kl_orig_sae"] == pytest.approx(mean(kl), abs=1e-5)
    assert ev["l0"] == pytest.approx(mean(splice.l0), abs=1e-4)


def test_a_smollm2_cell_equals_a_hooked_plain_hf_forward(smollm2_dir, tmp_path):
    """A real LM (SmolLM2-135M, an RMSNorm Llama with rotary embeddings) and position 0 left
    out: a trained local cell's saved CE loss increase, KL and L0 against the plain Hugging
    Face model (no bridge, no split forward) with its SAELens weights spliced in by a pre-hook
    on decoder layer 6 at positions 1.., every formula written out over positions 1.."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from e2e.config import DataConfig, ModelConfig
    from jobs.plan.grids_real import DEMO

    base = DEMO.base
    cfg = replace(base, layer=6, model=ModelConfig(str(smollm2_dir / "model")),
                  data=DataConfig(dataset=str(smollm2_dir / "data"), context_length=32,
                                  eval_split="validation", skip_positions=1),
                  optim=replace(base.optim, n_samples=32, warmup_samples=8, batch_size=4),
                  eval=replace(base.eval, every_samples=32, n_samples=8, batch_size=4,
                               alive_pass_tokens=256, grad_norm_after_samples=8,
                               checkpoint_every_steps=8),
                  dtype="float32")
    assert train(cfg, tmp_path, progress=False) == "done"
    p = cell_paths(tmp_path)
    w = load_file(str(p.sae / "sae_weights.safetensors"))
    assert json.loads((p.sae / "cfg.json").read_text())["skip_positions"] == 1

    hf = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, dtype=torch.float32)
    stream = eval_stream(cfg.data, AutoTokenizer.from_pretrained(cfg.model.name_or_path),
                         cfg.seed)
    batches = [stream.next_batch(4) for _ in range(2)]

    def splice(_module, args, kwargs):  # c = ReLU(x W_enc + b_enc), positions 1.. only
        x = args[0]
        c = torch.relu(x[:, 1:] @ w["W_enc"] + w["b_enc"])
        splice.l0.append((c > 0).float().sum(-1).mean())
        return (torch.cat([x[:, :1], c @ w["W_dec"] + w["b_dec"]], 1),) + args[1:], kwargs

    splice.l0 = []
    ce_orig, ce_sae, kl = [], [], []
    with torch.no_grad():
        for tokens in batches:
            lo = hf(tokens).logits[:, 1:]
            handle = hf.model.layers[6].register_forward_pre_hook(splice, with_kwargs=True)
            ls = hf(tokens).logits[:, 1:]
            handle.remove()
            for out, v in zip((ce_orig, ce_sae, kl), _ce_ce_kl(lo, ls, tokens[:, 2:]),
                              strict=True):
                out.append(v)
    mean = lambda xs: float(torch.stack(xs).mean())  # noqa: E731
    ev = read_metrics(p.metrics)["eval"]
    assert ev["ce_loss_increase"] == pytest.approx(mean(ce_sae) - mean(ce_orig), rel=2e-3)
    assert ev["kl_orig_sae"] == pytest.approx(mean(kl), rel=2e-3)
    assert ev["l0"] == pytest.approx(mean(splice.l0), rel=1e-3)
    assert ev["kl_orig_sae"] > 1e-3
