import torch

from e2e.model import clean_pass, patched_pass, resid_pre, run_from
from e2e.sae import SAE


def test_blockwise_suffix_equals_full_forward(smoke_model):
    tokens = torch.randint(0, smoke_model.cfg.d_vocab, (2, 16))
    with torch.no_grad():
        logits, cache = smoke_model.run_with_cache(tokens)
        for layer in range(smoke_model.cfg.n_layers):
            resid = resid_pre(smoke_model, tokens, layer)
            assert torch.equal(resid, cache[f"blocks.{layer}.hook_resid_pre"])
            clean = clean_pass(smoke_model, tokens, layer, full=True)
            assert torch.equal(clean.resid, resid)
            suffix, later = run_from(smoke_model, resid, clean)
            assert torch.allclose(suffix, logits, atol=1e-5)
            for k, r in enumerate(later):
                assert torch.equal(r, cache[f"blocks.{layer + 1 + k}.hook_resid_pre"])


def test_suffix_is_causal(smoke_model):
    tokens = torch.randint(0, smoke_model.cfg.d_vocab, (1, 12))
    other = tokens.clone()
    other[0, -1] = (other[0, -1] + 1) % smoke_model.cfg.d_vocab
    with torch.no_grad():
        a = clean_pass(smoke_model, tokens, 1, full=True).logits
        b = clean_pass(smoke_model, other, 1, full=True).logits
    assert torch.allclose(a[0, :-1], b[0, :-1], atol=1e-6)
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_prefix_runs_once_and_grads_reach_only_the_sae(smoke_model):
    calls = []
    handle = smoke_model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        tokens = torch.randint(0, smoke_model.cfg.d_vocab, (2, 8))
        clean = clean_pass(smoke_model, tokens, 1, full=True)
        sae = SAE(smoke_model.cfg.d_model, 64)
        x_hat, _ = sae(clean.resid)
        logits, later = patched_pass(smoke_model, clean, x_hat)
        (logits.square().mean() + later[0].square().mean()).backward()
    finally:
        handle.remove()
    assert len(calls) == 1  # block 0 (the clean prefix) ran once for both passes
    assert clean.logits.grad_fn is None
    assert all(p.grad is None for p in smoke_model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sae.parameters())


def test_residual_is_transformerlens_processed(smoke_model):
    """TL's processing centres the residual stream: each resid_pre has zero mean over d_model
    (center_writing_weights), unlike the raw HF hidden state."""
    tokens = torch.randint(0, smoke_model.cfg.d_vocab, (2, 8))
    with torch.no_grad():
        r = resid_pre(smoke_model, tokens, 2)
    assert r.mean(-1).abs().max() < 1e-5


def test_gpt2_gelu_is_one_kernel_and_equal_to_gelu_new_up_to_rounding(smoke_cells):
    """load_model swaps HF's NewGELUActivation (gelu_new, seven operations) for GELUTanh
    (PyTorch's tanh-approximate GELU, one kernel): the logits move by rounding only."""
    from transformers.activations import GELUTanh, NewGELUActivation

    from e2e.model import load_model

    model = load_model(smoke_cells[0].model)
    acts = [m for m in model.modules() if isinstance(m, GELUTanh | NewGELUActivation)]
    assert acts and all(type(m) is GELUTanh for m in acts)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 32))
    with torch.no_grad():
        fast = model(tokens)
        for block in model.blocks:
            block.mlp.original_component.act = NewGELUActivation()
        slow = model(tokens)
    assert 0 < (fast - slow).abs().max() <= 1e-5 * slow.abs().max()


def test_no_attention_keeps_its_pattern_after_a_forward(smoke_model):
    """TransformerLens's attention keeps its last pattern (`_pattern`): every layer's
    (batch, heads, pos, pos) probabilities, and under grad their graph, held between calls."""
    smoke_model(torch.zeros(2, 16, dtype=torch.long))
    kept = [n for n, m in smoke_model.named_modules() if getattr(m, "_pattern", None) is not None]
    assert hasattr(smoke_model.blocks[0].attn, "_pattern") and kept == []
