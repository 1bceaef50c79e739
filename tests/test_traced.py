"""The compiled passes (`e2e.model.traced`) give a training step what the eager split forward
gives it, for every verified architecture: the clean pass's residuals and KL target, the
patched suffix's final residual and later residuals, and the SAE's gradients through them;
a model whose passes cannot be traced runs eagerly after one warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_split import _tiny  # tests/ is on the path (pytest's rootdir-relative import)

from e2e.config import CellConfig, DataConfig, ModelConfig, OptimConfig
from e2e.losses import kl_orig_sae
from e2e.model import VERIFIED_ARCHITECTURES, clean_pass, passes_compiled, patched_pass, traced_for
from e2e.sae import SAE


@pytest.fixture(scope="module")
def tokenizer():
    from e2e.lm.pretrain import train_tokenizer

    return train_tokenizer(["In the beginning God created the heaven and the earth."] * 20, 300)


def _step(model, clean, sae, saved=None):
    """The training step's e2e_ds terms of `sae` on `clean`, backward run: (kl, later, grads);
    the shapes of the tensors its forward keeps for the backward appended to `saved`."""
    sae.zero_grad()
    x_hat = sae(clean.resid)[0]
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: (saved if saved is not None else []).append(t.shape) or t, lambda t: t):
        final, later = patched_pass(model, clean, x_hat)
    kl = kl_orig_sae(clean.target, final.reshape(-1, final.shape[-1]))
    (kl + sum(r.square().mean() for r in later)).backward()
    return kl.detach(), [r.detach() for r in later], [p.grad.clone() for p in sae.parameters()]


@pytest.mark.parametrize("arch", VERIFIED_ARCHITECTURES)
def test_compiled_passes_equal_the_eager_ones(arch, tokenizer, tmp_path):
    model = _tiny(arch, tokenizer, tmp_path)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 24))
    skip = 1 if arch == "LlamaForCausalLM" else 0  # the clean head is an input of the suffix
    torch.manual_seed(1)
    sae = SAE(model.cfg.d_model, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to eager fails the test
        got = traced_for(model).clean_pass(tokens, 1, full=True, skip=skip)
    assert got.suffix is not None and not traced_for(model).failed
    want = clean_pass(model, tokens, 1, full=True, skip=skip, logits=False)
    for a, b in [(got.resid, want.resid), (got.target.x, want.target.x),
                 *zip(got.later_resids, want.later_resids, strict=True)]:
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max())), arch
    kl_a, later_a, grads_a = _step(model, got, sae)  # the first call builds the graph
    assert list(got.suffix.graphs) == [torch.float32] and None not in got.suffix.graphs.values()
    saved_a, saved_b = [], []
    _step(model, got, sae, saved_a)
    kl_b, later_b, grads_b = _step(model, want, sae, saved_b)
    # The compiled suffix recomputes each block's attention in the backward instead of keeping
    # its (batch, heads, pos, pos) tensors: of those at most one constant (inductor's zeros
    # for the bridge's NaN scrub, shared by the blocks) stays. The eager suffix keeps several.
    assert got.suffix.recomputed == model.cfg.n_layers - 1, arch
    def squares(saved):
        return sum(s[-2:] == (24, 24) and s.numel() >= 2 * model.cfg.n_heads * 24**2 for s in saved)
    assert squares(saved_a) <= 1 and squares(saved_b) >= 2 * 3, arch
    assert kl_a.item() == pytest.approx(kl_b.item(), rel=1e-4, abs=1e-7), arch
    for a, b in [*zip(later_a, later_b, strict=True), *zip(grads_a, grads_b, strict=True)]:
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max())), arch
    # Another batch of the same shape reuses the graphs: still the eager values.
    other = torch.randint(0, model.cfg.d_vocab, (2, 24))
    a = traced_for(model).clean_pass(other, 1, full=True, skip=skip).later_resids[-1]
    b = clean_pass(model, other, 1, full=True, skip=skip, logits=False).later_resids[-1]
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max())), arch
    if arch == "GPT2LMHeadModel":  # a local cell's prefix alone: its own graph
        a = traced_for(model).clean_pass(other, 2, full=False).resid
        b = clean_pass(model, other, 2, full=False).resid
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_compiled_passes_with_excluded_tokens_equal_the_eager_ones(tokenizer, tmp_path):
    """Separators mid-row (`data.exclude_tokens`): the compiled passes run whole rows and the
    kept positions are taken out of and written into them around the graphs, as eagerly."""
    from e2e.model import Positions

    model = _tiny("LlamaForCausalLM", tokenizer, tmp_path)
    tokens = torch.randint(3, model.cfg.d_vocab, (2, 24))
    tokens[0, 5] = tokens[1, 9] = tokens[1, 10] = 0
    keep = Positions(1, (0,)).keep(tokens)
    torch.manual_seed(4)
    sae = SAE(model.cfg.d_model, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = traced_for(model).clean_pass(tokens, 1, full=True, skip=1, keep=keep)
    want = clean_pass(model, tokens, 1, full=True, skip=1, logits=False, keep=keep)
    assert got.suffix is not None and got.resid.shape == (2 * 23 - 3, model.cfg.d_model)
    assert torch.allclose(got.target.x, want.target.x, rtol=1e-5,
                          atol=1e-5 * float(want.target.x.abs().max()))
    kl_a, later_a, grads_a = _step(model, got, sae)
    kl_b, later_b, grads_b = _step(model, want, sae)
    assert kl_a.item() == pytest.approx(kl_b.item(), rel=1e-4, abs=1e-7)
    for a, b in [*zip(later_a, later_b, strict=True), *zip(grads_a, grads_b, strict=True)]:
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()))


def test_bf16_compiled_passes_stay_within_rounding_of_the_eager_ones(tokenizer, tmp_path):
    """Under bf16 autocast the SAE's output is bf16 while the clean residual is fp32: the
    suffix is traced for the dtype it is given (the bridge casts differently), here with a
    skipped position, whose clean head the eager suffix casts to the SAE output's dtype."""
    model = _tiny("GPT2LMHeadModel", tokenizer, tmp_path)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 24))
    torch.manual_seed(1)
    sae = SAE(model.cfg.d_model, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = traced_for(model).clean_pass(tokens, 2, full=True, skip=1)
        want = clean_pass(model, tokens, 2, full=True, skip=1, logits=False)
        assert got.suffix is not None and got.resid.dtype == want.resid.dtype
        diff = (got.target.x - want.target.x).abs().max() / want.target.x.abs().max()
        assert 0 < diff < 2e-2  # compiled: fused, so rounded differently, by bf16's rounding
        x_hat = sae(want.resid)[0]
        assert x_hat.dtype == torch.bfloat16
        final, later = patched_pass(model, got, x_hat)
        final_e, later_e = patched_pass(model, want, x_hat)
    assert final.dtype == final_e.dtype == torch.bfloat16
    assert None not in got.suffix.graphs.values()  # it compiled (for bf16 residuals)
    for a, b in [(final, final_e), *zip(later, later_e, strict=True)]:
        assert a.dtype == b.dtype
        assert (a - b).abs().max() <= 2e-2 * b.abs().max()


def test_a_pass_that_cannot_be_traced_runs_eagerly_after_one_warning(tokenizer, tmp_path):
    """A hook that branches on a tensor's value (here on the residual's sign) cannot become
    part of a graph: the trace fails instead of baking one branch in, and the model's passes
    run eagerly from then on, hook included."""
    model = _tiny("GPT2LMHeadModel", tokenizer, tmp_path)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 24))

    def branch(_module, args):
        return (args[0] * 2,) if bool(args[0].sum() > 0) else None

    model.blocks[2].register_forward_pre_hook(branch)
    with pytest.warns(UserWarning, match="compiling the model's passes failed.*running it "
                                         "eagerly"):
        got = traced_for(model).clean_pass(tokens, 1, full=True)
    assert traced_for(model).failed and got.suffix is None
    want = clean_pass(model, tokens, 1, full=True, logits=False)
    assert torch.equal(got.target.x, want.target.x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        traced_for(model).clean_pass(tokens, 1, full=True)


def test_cells_compile_their_passes_when_long_enough_to_repay_it():
    long, short = OptimConfig(n_samples=16_384), OptimConfig(n_samples=16_383)
    assert passes_compiled(CellConfig(optim=long))  # 2**24 tokens of 1,024 positions
    assert not passes_compiled(CellConfig(optim=short))
    assert not passes_compiled(CellConfig(optim=long, data=DataConfig(context_length=512)))
    assert passes_compiled(CellConfig(optim=short, model=ModelConfig(compile="on")))
    assert not passes_compiled(CellConfig(model=ModelConfig(compile="off")))
