"""The architectures of issue 22 (BatchTopK, Matryoshka, JumpReLU, AuxK), each formula pinned
against a from-scratch computation on small numbers: loops and sorts, not the code under test."""

from dataclasses import replace

import pytest
import torch

from e2e.arch.auxk import DeadTracker, auxk_loss
from e2e.arch.batchtopk import BatchTopKSAE, MatryoshkaSAE, batch_topk
from e2e.arch.build import build_sae
from e2e.arch.jumprelu import JumpReLUSAE, jumprelu, step
from e2e.config import CellConfig, ConfigError, LossConfig, SAEConfig, SyntheticConfig
from e2e.model import CleanPass
from e2e.train.member import Member


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomised(sae: torch.nn.Module, seed: int = 3) -> torch.nn.Module:
    g = _g(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return sae


# -- BatchTopK -------------------------------------------------------------------------------
def test_batch_topk_keeps_the_k_times_tokens_largest_codes_of_the_whole_batch():
    pre = torch.randn(2, 3, 10, generator=_g())  # 6 tokens, k 2: 12 codes kept in all
    c = batch_topk(pre, 2)
    values = sorted(((max(float(v), 0.0), i) for i, v in enumerate(pre.flatten())),
                    reverse=True)
    want = torch.zeros(60)
    for v, i in values[:12]:
        want[i] = v
    assert torch.equal(c.flatten(), want)
    per_token = (c != 0).sum(-1)
    assert int(per_token.sum()) == 12 and per_token.min() != per_token.max()  # not per token


def test_batchtopk_threshold_is_a_moving_average_of_the_smallest_kept_code():
    sae = BatchTopKSAE(4, 16, k=3, threshold_lr=0.25)
    want = 0.0
    for seed in range(3):
        x = torch.randn(5, 4, generator=_g(seed))
        c = sae.train_forward(x).c
        smallest = min(float(v) for v in c.detach().flatten() if v > 0)
        want = 0.75 * want + 0.25 * smallest
        assert float(sae.threshold) == pytest.approx(want, rel=1e-12)
    sae.update_threshold(torch.zeros(5, 16))  # nothing fired: unchanged
    assert float(sae.threshold) == pytest.approx(want, rel=1e-12)


def test_batchtopk_inference_codes_are_jumprelu_codes_at_its_threshold():
    sae = _randomised(BatchTopKSAE(4, 16, k=3))
    sae.threshold.fill_(0.2)
    x = torch.randn(7, 4, generator=_g(1))
    pre = x @ sae.encoder.weight.T + sae.encoder.bias
    want = torch.where(pre > 0.2, pre, torch.zeros(()))
    assert torch.allclose(sae.encode(x), want, atol=1e-6)


def test_matryoshka_prefixes_reconstruct_from_their_own_elements():
    sae = _randomised(MatryoshkaSAE(4, 16, k=4, widths=[2, 8]))
    x = torch.randn(6, 4, generator=_g(2))
    coded = sae.train_forward(x)
    d = sae.decoder.weight / sae.decoder.weight.norm(dim=0)
    inner = sae.nested_reconstructions(coded)
    assert list(inner) == ["prefix2", "prefix8"]
    for m in (2, 8):
        want = sum(coded.c[:, [i]] * d[:, i] for i in range(m)) + sae.decoder.bias
        assert torch.allclose(inner[f"prefix{m}"], want, atol=1e-6)
    assert torch.allclose(sum(coded.c[:, [i]] * d[:, i] for i in range(16)) + sae.decoder.bias,
                          coded.x_hat, atol=1e-6)


# -- JumpReLU --------------------------------------------------------------------------------
def test_jumprelu_straight_through_gradients_follow_the_rectangle_kernel():
    eps = 0.1
    theta = torch.tensor([0.2, 0.5, 0.0], requires_grad=True)
    pre = torch.tensor([[0.23, 0.30, -0.01], [0.14, 0.56, 0.04], [0.26, 0.44, 0.2]],
                       requires_grad=True)
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    (jumprelu(pre, theta, eps) * w).sum().backward()
    want_theta = torch.zeros(3)
    want_pre = torch.zeros(3, 3)
    for t in range(3):
        for i in range(3):
            p, th = float(pre.detach()[t, i]), float(theta.detach()[i])
            if abs(p - th) < eps / 2:  # K((p - θ) / ε) = 1
                want_theta[i] -= w[t, i] * th / eps
            want_pre[t, i] = w[t, i] * (p > th)
    assert torch.allclose(theta.grad, want_theta, atol=1e-6)
    assert torch.allclose(pre.grad, want_pre)
    # by hand: only token 0 is within ε/2 of θ_0 (0.23 vs 0.2); w 1 -> -θ/ε = -2
    assert float(theta.grad[0]) == pytest.approx(-2.0)


def test_jumprelu_l0_term_counts_codes_and_moves_only_the_thresholds():
    sae = _randomised(JumpReLUSAE(4, 6, bandwidth=0.5))
    with torch.no_grad():
        sae.threshold.fill_(0.3)
    x = torch.randn(2, 5, 4, generator=_g(4))
    coded = sae.train_forward(x)
    loss = sae.sparsity_loss(coded, p=1.0)
    pre = coded.pre.detach().reshape(-1, 6)
    assert float(loss.detach()) == pytest.approx(float((pre > 0.3).sum()) / 10 / 4)  # L0 / d_in
    loss.backward()
    near = ((pre - 0.3).abs() < 0.25).sum(0).float()
    assert torch.allclose(sae.threshold.grad, -near / 0.5 / 10 / 4)
    assert sae.encoder.weight.grad is None  # DeepMind's estimator: thresholds only
    assert torch.equal(step(pre, sae.threshold, 0.5), (pre > 0.3).float())


def test_jumprelu_thresholds_are_projected_to_non_negative_before_training_forwards():
    sae = JumpReLUSAE(4, 6)
    with torch.no_grad():
        sae.threshold[:3] = -1.0
    sae.train_forward(torch.randn(3, 4, generator=_g()))
    th = sae.threshold.detach()
    assert float(th.min()) == 0.0 and float(th[3]) == pytest.approx(0.01)


# -- AuxK ------------------------------------------------------------------------------------
def test_auxk_loss_is_the_dead_latents_reconstruction_of_the_residual():
    g = _g(5)
    x, x_hat = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    pre = torch.randn(3, 8, generator=g)
    d = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=0)
    dead = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)  # 4 dead
    for k_aux in (2, 8):  # 8 > n_dead: all 4 used, scale 4/8
        total = 0.0
        for t in range(3):
            order = sorted((i for i in range(8) if dead[i]), key=lambda i: -float(pre[t, i]))
            e_hat = sum(float(pre[t, i]) * d[:, i] for i in order[:min(k_aux, 4)])
            total += float(((e_hat - (x[t] - x_hat[t])) ** 2).sum())
        want = min(4 / k_aux, 1.0) * total / 12
        assert float(auxk_loss(x, x_hat, pre, dead, d, k_aux)) == pytest.approx(want, rel=1e-5)
    assert float(auxk_loss(x, x_hat, pre, torch.zeros(8, dtype=torch.bool), d, 2)) == 0.0


def test_a_latent_is_dead_after_the_window_without_firing():
    t = DeadTracker(3, window_tokens=10)
    t.update(torch.tensor([[1.0, 0, 0]] * 6))  # 6 tokens
    assert t.dead.tolist() == [False, False, False]
    t.update(torch.tensor([[0, 2.0, 0]] * 4))  # 10 tokens since 0 and 2 last fired
    assert t.dead.tolist() == [False, False, True]  # 0 fired 4 tokens ago
    s = t.state_dict()
    u = DeadTracker(3, window_tokens=10)
    u.load_state_dict(s)
    assert torch.equal(u.since, torch.tensor([4, 0, 10]))


# -- in a member's loss ----------------------------------------------------------------------
def _member(tmp_path, **sae):
    cfg = CellConfig(source="synthetic", synthetic=SyntheticConfig(d=8, n_features=16,
                                                                   n_groups=2, group_size=8,
                                                                   active=2),
                     sae=SAEConfig(dict_size_to_input_ratio=2.0, **sae),
                     loss=LossConfig(setting="local", sparsity_coeff=0.0), device="cpu")
    return Member(cfg, tmp_path, d_in=8, n_layers=1, device=torch.device("cpu"))


def test_matryoshka_loss_adds_every_prefix_reconstruction(tmp_path):
    m = _member(tmp_path, activation="matryoshka", k=3, matryoshka_widths=(0.25, 0.5))
    x = torch.randn(5, 8, generator=_g(6))
    sae = m.saes[0]
    before = sae.threshold.clone()
    loss, terms, c = m._loss(None, CleanPass(x, None, [], None), sae, 0)
    sae.threshold.copy_(before)
    with torch.no_grad():
        coded = sae.train_forward(x)
        mse = [float(((r - x) ** 2).mean()) for r in (coded.x_hat,
                                                      *sae.nested_reconstructions(coded).values())]
    assert set(terms) == {"sparsity", "local_mse", "prefix4/local_mse", "prefix8/local_mse"}
    assert float(loss.detach()) == pytest.approx(sum(mse), rel=1e-6)


def test_auxk_is_added_with_its_coefficient_once_latents_are_dead(tmp_path):
    m = _member(tmp_path, activation="topk", k=2, auxk_coeff=0.5, auxk_dead_tokens=1,
                auxk_k=3)
    x = torch.randn(5, 8, generator=_g(7))
    clean = CleanPass(x, None, [], None)
    sae = m.saes[0]
    _, terms0, _ = m._loss(None, clean, sae, 0)
    assert float(terms0["auxk"].detach()) == 0.0  # nothing has had the chance to die
    m.deads[0].update(torch.zeros(1, 16))
    loss, terms, _ = m._loss(None, clean, sae, 0)
    with torch.no_grad():
        coded = sae.train_forward(x)
        want_aux = float(auxk_loss(x, coded.x_hat, coded.pre, torch.ones(16, dtype=torch.bool),
                                   sae.dict_elements, 3))
    got = {k: float(v.detach()) for k, v in terms.items()}
    assert got["auxk"] == pytest.approx(want_aux) and want_aux > 0
    assert float(loss.detach()) == pytest.approx(got["local_mse"] + 0.5 * want_aux)


# -- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fields,named", [
    ({"activation": "batchtopk"}, "sae.k"),
    ({"activation": "jumprelu", "k": 4}, "sae.k"),
    ({"activation": "relu", "auxk_coeff": 0.1}, "sae.auxk_coeff"),
    ({"activation": "matryoshka", "k": 4, "matryoshka_widths": (0.5, 0.25)},
     "sae.matryoshka_widths"),
    ({"activation": "matryoshka", "k": 4, "matryoshka_widths": (0.5, 1.0)},
     "sae.matryoshka_widths"),
    ({"activation": "jumprelu", "jumprelu_bandwidth": 0.0}, "sae.jumprelu_bandwidth"),
    ({"activation": "gated"}, "sae.activation"),
])
def test_bad_architecture_options_fail_in_one_line_naming_the_field(fields, named):
    with pytest.raises(ConfigError, match=named):
        CellConfig.from_dict({"sae": {**fields}})


def test_the_topk_family_has_k_on_the_lambda_axis_and_no_sparsity_term():
    cfg = CellConfig(sae=SAEConfig(activation="batchtopk", k=8),
                     loss=LossConfig(sparsity_coeff=0.0))
    assert cfg.lam == 8.0 and cfg.lam_label == "k8"
    with pytest.raises(ConfigError, match="loss.sparsity_coeff"):
        replace(cfg, loss=LossConfig(sparsity_coeff=1.0))
    jr = CellConfig(sae=SAEConfig(activation="jumprelu"), loss=LossConfig(sparsity_coeff=2.0))
    assert jr.lam == 2.0 and jr.lam_label == "lam2"


def test_matryoshka_widths_that_round_to_nothing_are_refused_at_the_hooks_width():
    from e2e.config import check_sizes

    cfg = CellConfig(sae=SAEConfig(dict_size_to_input_ratio=1.0, activation="matryoshka", k=2,
                                   matryoshka_widths=(0.01, 0.02)),
                     loss=LossConfig(sparsity_coeff=0.0))
    with pytest.raises(ConfigError, match="sae.matryoshka_widths"):
        check_sizes(cfg, 16)
    check_sizes(cfg, 1000)


def test_build_sae_gives_each_architecture_its_options():
    cfg = SAEConfig(activation="matryoshka", k=3, matryoshka_widths=(0.25, 0.5),
                    topk_threshold_lr=0.5)
    sae = build_sae(cfg, 4, 16)
    assert isinstance(sae, MatryoshkaSAE) and sae.widths == [4, 8] and sae.threshold_lr == 0.5
    jr = build_sae(SAEConfig(activation="jumprelu", jumprelu_bandwidth=0.2,
                             jumprelu_init_threshold=0.1), 4, 16)
    assert jr.bandwidth == 0.2 and torch.allclose(jr.threshold, torch.full((16,), 0.1))


# -- the grid --------------------------------------------------------------------------------
def test_the_architectures_grid_crosses_each_architecture_with_local_and_e2e(tmp_path):
    from jobs.plan.grid import cell_id, expand
    from jobs.plan.grids import ARCHITECTURES, ARCHITECTURES_GPT2, TINY

    cells = expand(ARCHITECTURES, tmp_path)
    by = {}
    for c in cells:
        by.setdefault((c.sae.label, c.loss.setting), []).append(c.lam)
    assert set(by) == {(a, s) for a in ("relu", "topk", "topk+auxk", "batchtopk", "matryoshka",
                                        "jumprelu") for s in ("local", "e2e")}
    assert by[("batchtopk", "e2e")] == [4, 8, 16, 32]  # k on the λ axis
    assert all(c.loss.sparsity_coeff == 0 for c in cells if c.sae.uses_k)
    assert len({cell_id(c) for c in cells}) == len(cells) == 50
    # ReLU's cells are tiny's own (its local and e2e)
    tiny = [c for c in expand(TINY, tmp_path) if c.loss.setting in ("local", "e2e")]
    relu = [c for c in cells if c.sae.label == "relu"]
    assert [c.loss for c in relu] == [c.loss for c in tiny] and relu[0].sae == tiny[0].sae
    gpt2 = expand(ARCHITECTURES_GPT2, tmp_path)
    assert {c.layer for c in gpt2} == {6} and len(gpt2) == 48
    mat = next(c for c in gpt2 if c.sae.activation == "matryoshka" and c.loss.setting == "e2e")
    assert ARCHITECTURES_GPT2.cell_gpu_hours(mat) == pytest.approx(11.33 * 2.2)


def test_variants_picks_parts_of_the_grid_and_refuses_names_it_does_not_have(tmp_path):
    """`variants=[batchtopk] optim.lr=0.003` is how docs/architectures.md's lr probe reruns
    BatchTopK's 8 cells; an unknown name, or variants on a grid without them, is one line."""
    from jobs.plan.make import make_plan

    plan = make_plan(["grid=architectures", "variants=[batchtopk,topk+auxk]", "optim.lr=0.003",
                      "dry_run=true", f"root={tmp_path}"])
    assert {(c.cfg.sae.label, c.cfg.optim.lr) for c in plan.cells} == {
        ("batchtopk", 0.003), ("topk+auxk", 0.003)}
    assert len(plan.cells) == 16
    with pytest.raises(ConfigError, match=r"variants='relux' is invalid: grid=architectures's "
                                          r"variants are \['relu', 'topk'"):
        make_plan(["grid=architectures", "variants=[relux]", f"root={tmp_path}"])
    with pytest.raises(ConfigError, match="variants= is given but grid=tiny has none"):
        make_plan(["grid=tiny", "variants=[relu]", f"root={tmp_path}"])


def test_a_fractional_lambda_for_the_topk_family_is_refused_in_one_line(tmp_path):
    from jobs.plan.grid import expand
    from jobs.plan.grids import ARCHITECTURES

    with pytest.raises(ConfigError, match="its λ axis is k"):
        expand(ARCHITECTURES, tmp_path, lambdas={"e2e": (0.5,)})


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka", "jumprelu"])
def test_the_fine_tune_stage_starts_each_architecture_where_its_local_parent_ended(
        smoke_cells, tmp_path, arch):
    from e2e.io import cell_paths
    from e2e.store import read_metrics
    from e2e.train import train
    from jobs.plan.finetune import Finetune, child, is_parent

    fields = {"activation": arch, "k": 4 if arch != "jumprelu" else 0}
    parent = next(c for c in smoke_cells if c.loss.setting == "local")
    parent = replace(parent, sae=replace(parent.sae, **fields),
                     loss=replace(parent.loss, sparsity_coeff=0.0 if fields["k"] else 1.0))
    assert is_parent(parent)
    train(parent, tmp_path / "P", progress=False)
    kid = child(parent, "P", "e2e", 0.25, Finetune(settings=("e2e",)))
    assert train(kid, tmp_path / "C", progress=False) == "done"
    p, c = (read_metrics(cell_paths(tmp_path / n).metrics) for n in ("P", "C"))
    for k in ("ce_loss_increase", "l0", "kl_orig_sae"):
        assert c["eval_history"][k][0] == p["eval"][k], k  # the parent's weights, threshold
    from safetensors.torch import load_file

    wp, wc = (load_file(str(cell_paths(tmp_path / n).sae / "sae_weights.safetensors"))
              for n in ("P", "C"))
    assert not torch.equal(wp["W_enc"], wc["W_enc"])  # and then it trained on its KL
    assert "kl_orig_sae" in c["train"] and "kl_orig_sae" not in p["train"]


def test_mfr_trains_several_saes_of_an_architecture_each_with_its_own_state(smoke_cells,
                                                                           tmp_path):
    from e2e.config import MFRConfig
    from e2e.io import cell_paths
    from e2e.saelens import load_saelens
    from e2e.store import read_metrics
    from e2e.train import train

    cfg = next(c for c in smoke_cells if c.loss.setting == "e2e")
    cfg = replace(cfg, sae=replace(cfg.sae, activation="batchtopk", k=4),
                  loss=replace(cfg.loss, sparsity_coeff=0.0), mfr=MFRConfig(n_saes=2, coeff=1.0))
    assert train(cfg, tmp_path, progress=False) == "done"
    ev = read_metrics(cell_paths(tmp_path).metrics)["eval"]
    assert "sae1/l0" in ev and "mfr_similarity/symmetric_max" in ev
    (a, _), (b, _) = (load_saelens(cell_paths(tmp_path).root / n) for n in ("sae", "sae_1"))
    ta, tb = a.threshold.detach(), b.threshold.detach()
    assert float(ta[0]) > 0 and float(ta[0]) != float(tb[0])


def test_switching_a_grid_to_the_topk_family_makes_its_lambda_axis_k(tmp_path):
    """`grid=smoke sae.activation=batchtopk sae.k=8` failed on the grid's sparsity λ (1.0);
    one rule now: the λ axis follows the architecture, or the message says what to type."""
    from e2e.config import ConfigError
    from jobs.plan.make import make_plan

    plan = make_plan(["grid=smoke", f"root={tmp_path}", "sae.activation=batchtopk", "sae.k=8"])
    sae = [c.cfg for c in plan.cells if c.cfg.loss.setting != "ksvd"]
    assert len(sae) == 3 and all(c.sae.activation == "batchtopk" and c.sae.k == 8
                                 and c.loss.sparsity_coeff == 0 for c in sae)
    ksvd = [c.cfg for c in plan.cells if c.cfg.loss.setting == "ksvd"]
    assert [c.ksvd.max_nnz for c in ksvd] == [4] and ksvd[0].sae.activation == "relu"
    plan = make_plan(["grid=smoke", f"root={tmp_path}", "sae.activation=topk",
                      "lambdas.e2e=[4,16]", "sae.k=32", "settings=[local,e2e]"])
    assert sorted((c.cfg.loss.setting, c.cfg.sae.k) for c in plan.cells) == [
        ("e2e", 4), ("e2e", 16), ("local", 32)]
    with pytest.raises(ConfigError, match=r"give k for local, e2e, e2e_ds: sae.k=32 \(one k\)"):
        make_plan(["grid=smoke", f"root={tmp_path}", "sae.activation=batchtopk"])
