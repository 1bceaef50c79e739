"""The split forward (clean prefix once, suffix on the SAE output) equals the model's own
forward with the residual written at `blocks.L.hook_resid_pre` by a hook, for every
architecture in `VERIFIED_ARCHITECTURES`: clean logits, patched logits, later residuals and the
SAE's gradients. Random tiny configs built offline with `transformers`, weights scaled up so
that the rotary, mask and soft-cap paths matter (without the recorded calls, the suffix of
these models differs from the full forward by 1e-3 to 1e-1)."""

from __future__ import annotations

import pytest
import torch

from e2e.config import ConfigError, ModelConfig
from e2e.losses import kl_orig_sae
from e2e.model import (
    VERIFIED_ARCHITECTURES,
    Positions,
    SplitForwardError,
    check_architecture,
    clean_pass,
    load_model,
    patched_pass,
    verify_split,
)
from e2e.sae import SAE


def _configs(vocab: int) -> dict:
    import transformers as T

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=128)
    gqa = dict(common, num_key_value_heads=2)
    return {
        "GPT2LMHeadModel": T.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=4, n_head=4,
                                        n_positions=128),
        "GPTNeoXForCausalLM": T.GPTNeoXConfig(**common, rotary_pct=0.25),  # Pythia
        "LlamaForCausalLM": T.LlamaConfig(**gqa, tie_word_embeddings=True),  # SmolLM2
        "MistralForCausalLM": T.MistralConfig(**gqa, sliding_window=8),
        # sliding window 8 < 24 positions: local and global layers differ; both soft-caps
        "Gemma2ForCausalLM": T.Gemma2Config(**gqa, head_dim=16, sliding_window=8,
                                            final_logit_softcapping=3.0,
                                            attn_logit_softcapping=5.0),
        "Qwen2ForCausalLM": T.Qwen2Config(**gqa),
        "Qwen3ForCausalLM": T.Qwen3Config(**gqa, head_dim=16),
    }


@pytest.fixture(scope="module")
def tokenizer():
    from e2e.lm.pretrain import train_tokenizer

    return train_tokenizer(["In the beginning God created the heaven and the earth."] * 20, 300)


def _tiny(arch: str, tokenizer, path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_configs(len(tokenizer))[arch])
    with torch.no_grad():  # norms and biases off 1, weights 3x: far from the identity
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p)) if p.ndim == 1 else p.mul_(3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return load_model(ModelConfig(str(path)))


def test_every_verified_architecture_has_a_tiny_config():
    assert set(_configs(300)) == set(VERIFIED_ARCHITECTURES)


@pytest.mark.parametrize("arch", VERIFIED_ARCHITECTURES)
def test_split_forward_equals_the_hooked_full_forward(arch, tokenizer, tmp_path):
    model = _tiny(arch, tokenizer, tmp_path)
    n = model.cfg.n_layers
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 24))
    torch.manual_seed(1)
    for layer in (1, n - 1):
        sae = SAE(model.cfg.d_model, 128)
        clean = clean_pass(model, tokens, layer, full=True)
        with torch.no_grad():
            full, cache = model.run_with_cache(tokens)
        assert torch.equal(clean.logits, full)
        assert torch.equal(clean.resid, cache[f"blocks.{layer}.hook_resid_pre"])

        x_hat, _ = sae(clean.resid)
        logits, later = patched_pass(model, clean, x_hat)
        (logits.log_softmax(-1)[..., 0].sum() + sum(r.square().mean() for r in later)
         ).backward()
        grads = [p.grad.clone() for p in sae.parameters()]
        sae.zero_grad()

        hooked_later = []

        def write(resid, hook, sae=sae):
            return sae(resid)[0]

        def keep(resid, hook, hooked_later=hooked_later):
            hooked_later.append(resid)

        want = model.run_with_hooks(
            tokens, use_cache=False,
            fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", write)]
            + [(f"blocks.{i}.hook_resid_pre", keep) for i in range(layer + 1, n)])
        (want.log_softmax(-1)[..., 0].sum() + sum(r.square().mean() for r in hooked_later)
         ).backward()
        scale = want.abs().max()
        assert (logits - want).abs().max() <= 1e-5 * scale, arch
        assert len(later) == len(hooked_later) == n - 1 - layer
        for a, b in zip(later, hooked_later, strict=True):
            assert torch.allclose(a, b, atol=1e-5 * float(b.detach().abs().max()))
        for g, p in zip(grads, sae.parameters(), strict=True):
            assert torch.allclose(g, p.grad, rtol=1e-4,
                                  atol=1e-6 * float(p.grad.abs().max())), arch
        assert verify_split(model, tokens, layer) <= 1e-5 * scale

        # The training step's form: the clean pass stops before the unembedding and the KL
        # unembeds the patched final residual itself (`CleanTarget`), against the KL of the
        # hooked full forward's logits, value and gradient.
        sae.zero_grad()
        want = model.run_with_hooks(tokens, use_cache=False,
                                    fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", write)])
        kl_want = kl_orig_sae(full, want)
        kl_want.backward()
        grads = [p.grad.clone() for p in sae.parameters()]
        sae.zero_grad()
        train = clean_pass(model, tokens, layer, full=True, logits=False)
        assert train.logits is None and torch.equal(train.resid, clean.resid)
        final, _ = patched_pass(model, train, sae(train.resid)[0])
        kl = kl_orig_sae(train.target, final)
        kl.backward()
        assert kl.item() == pytest.approx(kl_want.item(), rel=1e-4, abs=1e-7), arch
        for g, p in zip(grads, sae.parameters(), strict=True):
            assert torch.allclose(g, p.grad, rtol=1e-3,
                                  atol=1e-5 * float(p.grad.abs().max())), arch


def test_blocks_alone_are_not_the_model_and_verify_split_says_so(tokenizer, tmp_path,
                                                                   monkeypatch):
    """Without the recorded calls (the old split forward: blocks on the residual alone), a
    rotary model's suffix is another model; `verify_split` stops a cell on such a mismatch."""
    import e2e.model.split

    model = _tiny("LlamaForCausalLM", tokenizer, tmp_path)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 24))
    clean = clean_pass(model, tokens, 1, full=True)
    with torch.no_grad():
        h = clean.resid
        for block in model.blocks[1:]:
            out = block(h)
            h = out[0] if isinstance(out, tuple) else out
        alone = model.unembed(model.ln_final(h))
    assert (alone - clean.logits).abs().max() > 1e-3 * clean.logits.abs().max()

    real = e2e.model.split.run_from

    def shifted(model, resid, clean):  # a replay with the positions one off
        for _, kwargs in clean.calls:
            cos, sin = kwargs["position_embeddings"]
            kwargs["position_embeddings"] = (cos.roll(1, 1), sin.roll(1, 1))
        return real(model, resid, clean)

    monkeypatch.setattr(e2e.model.split, "run_from", shifted)
    with pytest.raises(SplitForwardError, match="differs from the model's own by"):
        verify_split(model, tokens, 1)


def test_an_unverified_architecture_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        check_architecture(["GPTJForCausalLM"], "some/model")
    msg = str(e.value)
    assert "\n" not in msg and "GPTJForCausalLM" in msg and "LlamaForCausalLM" in msg
    check_architecture(["Gemma2ForCausalLM"], "ok")


def test_the_plan_refuses_an_unverified_architecture_before_writing(tmp_path):
    """A local model folder of an architecture the split forward was not verified on (GPT-J:
    the bridge boots it) is refused by the dry run and the submission, in one line, nothing
    written."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    model = tmp_path / "gptj"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "architectures": ["GPTJForCausalLM"], "model_type": "gptj", "n_layer": 4,
        "n_embd": 64, "n_positions": 128}))
    root = tmp_path / "root"
    repo = Path(__file__).resolve().parent.parent
    for extra in (["dry_run=true"], []):
        r = subprocess.run([sys.executable, "jobs/submit.py", "grid=paper-tables",
                            f"model.name_or_path={model}", f"root={root}", *extra],
                           cwd=repo, env=dict(os.environ), capture_output=True, text=True,
                           timeout=300)
        assert r.returncode != 0 and "GPTJForCausalLM" in r.stderr, r.stderr
        assert "has not verified" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not root.exists()


def _smollm2_batch(smollm2_dir, model, rows=2, context=64):
    from e2e.config import DataConfig
    from e2e.data.tokens import TokenStream

    data = DataConfig(dataset=str(smollm2_dir / "data"), context_length=context,
                      eval_split="validation")
    return TokenStream(data, model.tokenizer, 0, "validation").next_batch(rows)


def test_smollm2_split_forward_is_its_own_forward(smollm2_dir):
    """The real pretrained Llama: the old blocks-alone suffix was off by 7.8-16 on a logit
    scale of 20; the recorded calls make it the model's own forward, bit for bit here."""
    model = load_model(ModelConfig(str(smollm2_dir / "model")))
    tokens = _smollm2_batch(smollm2_dir, model)
    assert verify_split(model, tokens, 12) == 0.0
    clean = clean_pass(model, tokens, 12, full=True)
    with torch.no_grad():
        x = clean.resid * 0.9
        logits, _ = patched_pass(model, clean, x)
        want = model.run_with_hooks(tokens, use_cache=False, fwd_hooks=[
            ("blocks.12.hook_resid_pre", lambda r, hook: r * 0.9)])
    assert (logits - want).abs().max() <= 1e-4 * want.abs().max()
    # the training step's form: clean pass to the unembedding's input, the KL unembedding
    # the patched final residual itself
    train = clean_pass(model, tokens, 12, full=True, logits=False)
    with torch.no_grad():
        final, _ = patched_pass(model, train, train.resid * 0.9)
        kl = kl_orig_sae(train.target, final)
    assert kl.item() == pytest.approx(kl_orig_sae(clean.logits, want).item(), rel=1e-4)


def test_smollm2_eval_equals_a_hooked_hf_forward_sharing_no_code(smollm2_dir):
    """`e2e.metrics.evaluate` of an SAE at layer 12 against the plain HF model with a pre-hook
    on its decoder layer 12 (no bridge, no split forward, the formulas written out): the
    residual of an RMSNorm model under the bridge's compatibility mode is HF's hidden state,
    so the same SAE applies to both."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from e2e.metrics import evaluate

    model = load_model(ModelConfig(str(smollm2_dir / "model")))
    tokens = _smollm2_batch(smollm2_dir, model)
    torch.manual_seed(0)
    sae = SAE(model.cfg.d_model, 4 * model.cfg.d_model)
    with torch.no_grad():  # a reconstruction that is neither perfect nor useless
        sae.decoder.bias.copy_(clean_pass(model, tokens, 12, full=False).resid.mean((0, 1)))
    ours = evaluate(model, sae, 12, [tokens])

    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir / "model", dtype=torch.float32).eval()
    w = sae.saelens_tensors()  # the SAELens formula: c = ReLU(x W_enc + b_enc)

    def splice(_module, args, kwargs):
        x = args[0]
        c = torch.relu(x @ w["W_enc"] + w["b_enc"])
        splice.l0 = (c > 0).float().sum(-1).mean()
        return (c @ w["W_dec"] + w["b_dec"],) + args[1:], kwargs

    with torch.no_grad():
        clean = hf(tokens).logits
        handle = hf.model.layers[12].register_forward_pre_hook(splice, with_kwargs=True)
        patched = hf(tokens).logits
        handle.remove()

    def ce(logits):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())

    kl = (F.softmax(clean, -1) * (F.log_softmax(clean, -1) - F.log_softmax(patched, -1))
          ).sum(-1).mean()
    assert ours["ce_loss_increase"] == pytest.approx(float(ce(patched) - ce(clean)), rel=1e-3)
    assert ours["kl_orig_sae"] == pytest.approx(float(kl), rel=1e-3)
    assert ours["l0"] == pytest.approx(float(splice.l0), rel=1e-4)
    assert ours["kl_orig_sae"] > 0.01  # the splice changes the model


def test_skipped_positions_keep_their_clean_residual_and_leave_every_metric(tokenizer,
                                                                            tmp_path):
    """`data.skip_positions=1`: the SAE acts on positions 1.. only; position 0 keeps its
    clean residual, and the losses and metrics are over positions 1.. . Against a hooked
    full forward that writes the SAE output at positions 1.. only, and the formulas written
    out over those positions."""
    import torch.nn.functional as F

    from e2e.metrics import evaluate_pack

    model = _tiny("LlamaForCausalLM", tokenizer, tmp_path)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 24))
    torch.manual_seed(2)
    sae = SAE(model.cfg.d_model, 128)
    clean = clean_pass(model, tokens, 1, full=True, skip=1)
    assert clean.resid.shape[1] == clean.logits.shape[1] == 23
    with torch.no_grad():
        logits, later = patched_pass(model, clean, sae(clean.resid)[0])
        orig = model(tokens, use_cache=False)

        def write(resid, hook):
            return torch.cat([resid[:, :1], sae(resid[:, 1:])[0]], 1)

        want = model.run_with_hooks(tokens, use_cache=False,
                                    fwd_hooks=[("blocks.1.hook_resid_pre", write)])
    assert torch.allclose(logits, want[:, 1:], atol=1e-5 * float(want.abs().max()))
    assert all(r.shape[1] == 23 for r in later)
    (m,) = evaluate_pack(model, [sae], 1, [tokens], Positions(1))

    def ce(lg):
        return F.cross_entropy(lg[:, 1:-1].flatten(0, 1), tokens[:, 2:].flatten())

    kl = (F.softmax(orig, -1) * (F.log_softmax(orig, -1) - F.log_softmax(want, -1))
          ).sum(-1)[:, 1:].mean()
    assert m["ce_loss_increase"] == pytest.approx(float(ce(want) - ce(orig)), rel=1e-4)
    assert m["kl_orig_sae"] == pytest.approx(float(kl), rel=1e-4)


@pytest.mark.parametrize("arch", VERIFIED_ARCHITECTURES)
def test_excluded_tokens_mid_row_keep_their_clean_residual_and_leave_every_loss(arch,
                                                                                tokenizer,
                                                                                tmp_path):
    """`data.exclude_tokens` (separators mid-row) with `skip_positions=1`: the SAE acts on the
    kept positions only, the others keep their clean residual, and the KL, later residuals
    and metrics are over the kept positions. Against a hooked full forward that writes the
    SAE output at those positions only and the formulas written out over them: the training
    form (KL value and gradient) and the evaluation (CE loss increase, KL, L0, MSE)."""
    import torch.nn.functional as F

    from e2e.metrics import evaluate_pack

    model = _tiny(arch, tokenizer, tmp_path)
    n, layer = model.cfg.n_layers, 1
    tokens = torch.randint(3, model.cfg.d_vocab, (2, 24))
    tokens[0, 7] = tokens[1, 15] = tokens[1, 16] = 0  # separators mid-row
    tokens[1, 23] = 2  # and one at a row's end
    pos = Positions(1, (0, 2))
    keep, kept = pos.keep(tokens), pos.kept(tokens)
    assert keep.shape == (2, 23) and int(kept.sum()) == 2 * 23 - 4
    torch.manual_seed(3)
    sae = SAE(model.cfg.d_model, 128)
    hooked_later = []

    def write(resid, hook):
        return torch.where(kept[..., None], sae(resid)[0], resid)

    def record(resid, hook):
        hooked_later.append(resid)

    with torch.no_grad():
        orig, cache = model.run_with_cache(tokens)
    want = model.run_with_hooks(tokens, use_cache=False,
                                fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", write)]
                                + [(f"blocks.{i}.hook_resid_pre", record)
                                   for i in range(layer + 1, n)])
    kl_tok = (F.softmax(orig, -1) * (F.log_softmax(orig, -1) - F.log_softmax(want, -1))).sum(-1)
    kl_want = kl_tok[kept].mean()
    kl_want.backward()
    grads = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()

    train = clean_pass(model, tokens, layer, full=True, logits=False, skip=1, keep=keep)
    assert torch.equal(train.resid, cache[f"blocks.{layer}.hook_resid_pre"][kept])
    final, later = patched_pass(model, train, sae(train.resid)[0])
    assert final.shape == (int(kept.sum()), model.cfg.d_model)
    kl = kl_orig_sae(train.target, final)
    kl.backward()
    assert kl.item() == pytest.approx(kl_want.item(), rel=1e-4, abs=1e-7), arch
    for g, p in zip(grads, sae.parameters(), strict=True):
        assert torch.allclose(g, p.grad, rtol=1e-3, atol=1e-5 * float(p.grad.abs().max())), arch
    for a, b in zip(later, hooked_later, strict=True):
        assert torch.allclose(a, b[kept], atol=1e-5 * float(b.detach().abs().max())), arch
    with torch.no_grad():
        clean = clean_pass(model, tokens, layer, full=True, skip=1, keep=keep)
        logits, _ = patched_pass(model, clean, sae(clean.resid)[0])
    assert torch.allclose(logits, want[kept], atol=1e-5 * float(want.detach().abs().max())), arch

    (m,) = evaluate_pack(model, [sae], layer, [tokens], pos)
    has_next = kept.clone()
    has_next[:, -1] = False  # a row's last position predicts nothing here

    def ce(lg):
        return F.cross_entropy(lg[:, :-1][has_next[:, :-1]], tokens[:, 1:][has_next[:, :-1]])

    x = cache[f"blocks.{layer}.hook_resid_pre"][kept]
    x_hat, c = sae(x)
    assert m["ce_loss_increase"] == pytest.approx(float(ce(want) - ce(orig)),
                                                  abs=1e-5 * float(ce(orig)))  # fp32 CEs
    assert m["kl_orig_sae"] == pytest.approx(float(kl_want), rel=1e-4)
    assert m["l0"] == pytest.approx(float((c != 0).float().sum(-1).mean()), rel=1e-6)
    assert m[f"mse/blocks.{layer}.hook_resid_pre"] == pytest.approx(
        float((x_hat - x).square().mean()), rel=1e-5)


def test_a_norm_outlier_is_left_out_as_an_excluded_token_is(tokenizer, tmp_path):
    """`data.exclude_norm_multiple`: a position whose clean residual's norm exceeds the multiple
    of the median over the kept positions is left out (dictionary_learning's
    `max_activation_norm_multiple`), in the clean pass the losses and metrics read."""
    from e2e.model.positions import by_norm

    model = _tiny("LlamaForCausalLM", tokenizer, tmp_path)
    tokens = torch.randint(3, model.cfg.d_vocab, (2, 24))
    tokens[1, 6] = 0
    keep = Positions(1, (0,)).keep(tokens)
    plain = clean_pass(model, tokens, 1, full=True, logits=False, skip=1, keep=keep)
    norm = torch.zeros(keep.shape)
    norm[keep] = plain.resid.norm(dim=-1)
    top = norm.flatten().argmax()
    second = norm.flatten().sort(descending=True).values[1]
    multiple = float((norm.max() + second) / 2 / norm[keep].median())  # between the top two
    got = clean_pass(model, tokens, 1, full=True, logits=False, skip=1, keep=keep,
                     norm_multiple=multiple)
    want = keep.clone().flatten()
    want[top] = False
    assert torch.equal(got.keep.flatten(), want) and got.resid.shape[0] == int(keep.sum()) - 1
    assert by_norm(keep, plain.window, 0.0) is keep  # off: the token rule alone


def test_saelens_cfg_records_the_processing_the_bridge_applied(smollm2_dir, smoke_cells):
    """RMSNorm (SmolLM2): no centring of the writing weights, as the bridge did (its resid_pre
    is HF's hidden state: the same SAE spliced into the plain HF model gives the same metrics,
    test_smollm2_eval_equals_a_hooked_hf_forward_sharing_no_code); GPT-2: centring
    (tests/test_lm.py). And the positions left out."""
    from dataclasses import replace

    from e2e.saelens import cell_meta

    smol = replace(smoke_cells[0], model=ModelConfig(str(smollm2_dir / "model")))
    smol = replace(smol, data=replace(smol.data, skip_positions=1))
    meta = cell_meta(smol, 0)
    assert meta["model_from_pretrained_kwargs"]["center_writing_weights"] is False
    assert meta["skip_positions"] == 1
    gpt2 = cell_meta(smoke_cells[0], 0)
    assert gpt2["model_from_pretrained_kwargs"]["center_writing_weights"] is True
    assert gpt2["skip_positions"] == 0


def test_an_overriding_model_is_checked_on_every_path(tmp_path):
    """The architecture refusal and the layer check also for a grid that builds its own LM
    (smoke, demo) when model.name_or_path replaces it, and with stage=true (the plan checks
    the original sources); a missing folder is named."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    gptj = tmp_path / "gptj"
    gptj.mkdir()
    (gptj / "config.json").write_text(json.dumps({
        "architectures": ["GPTJForCausalLM"], "model_type": "gptj", "n_layer": 4,
        "n_embd": 64, "n_positions": 128}))
    repo = Path(__file__).resolve().parent.parent
    root = tmp_path / "root"

    def submit(*args):
        r = subprocess.run([sys.executable, "jobs/submit.py", f"root={root}", "dry_run=true",
                            *args], cwd=repo, env=dict(os.environ), capture_output=True,
                           text=True, timeout=300)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        return r.stderr

    assert "GPTJForCausalLM" in submit("grid=smoke", f"model.name_or_path={gptj}")
    assert "no such folder" in submit("grid=demo", f"model.name_or_path={tmp_path}/nope")
    assert "layer=30 is invalid" in submit("grid=pythia-410m", "layers=[30]", "stage=true")
    assert not root.exists()
