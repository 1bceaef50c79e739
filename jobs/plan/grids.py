"""The named grids (`grid=<name>`): the paper's, the small ones built on this machine, MFR's.

Each is plain data (`jobs.plan.grid.Grid`); `GRIDS` maps a name to it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from e2e.config import (
    SAE_SETTINGS,
    SETTINGS,
    CellConfig,
    DataConfig,
    EvalConfig,
    KSVDConfig,
    LossConfig,
    MFRConfig,
    ModelConfig,
    OptimConfig,
    SAEConfig,
)
from e2e.lm.pretrain import PretrainConfig
from e2e.typed import ConfigError
from jobs.plan.grid import OWN_LM_DATA, PAPER_HOURS, Grid, Variant, grid_pretrain_dir
from jobs.plan.grids_real import DEMO, DEMO_FP32, PYTHIA, SMOLLM2

SMOKE = Grid(
    name="smoke",
    base=CellConfig(
        model=ModelConfig("<pretrain>"),
        data=replace(OWN_LM_DATA, context_length=32),
        sae=SAEConfig(dict_size_to_input_ratio=4.0),
        optim=OptimConfig(warmup_samples=8, batch_size=4, grad_accum_steps=2, n_samples=96),
        eval=EvalConfig(every_samples=48, n_samples=8, batch_size=4, alive_window_tokens=1024,
                        grad_norm_after_samples=16, log_every_steps=2, checkpoint_every_steps=4,
                        alive_pass_tokens=512),
        ksvd=KSVDConfig(n_tokens=2048, batch_size=1024, n_passes=2, atom_chunk=64),
        device="cpu"),
    layers=(1,),
    lambdas={"local": (1.0,), "e2e": (1.0,), "e2e_ds": (1.0,), "ksvd": (4,)},
    # A random model on a 200k-character slice: exercises every part in seconds.
    pretrain=PretrainConfig(corpus_max_chars=200_000, vocab_size=512, n_layers=3, d_model=32,
                            n_heads=4, n_ctx=64, train_steps=0),
    time_min=10,
    local_minutes={"pretrain": 0.1, "sae": 0.2, "ksvd": 0.15, "collect": 0.1, "analyze": 0.2},
)

TINY = Grid(
    name="tiny",
    base=CellConfig(
        model=ModelConfig("<pretrain>"),
        data=replace(OWN_LM_DATA, context_length=128),
        sae=SAEConfig(dict_size_to_input_ratio=8.0),
        # From the small-scale study (docs/study-tiny.md): lr 3e-2 was the best of {2e-3,
        # 8e-3, 3e-2} for both local and e2e, and 1,200 steps instead of 600 took e2e from
        # 111% to 79% of local's CE loss increase at equal L0.
        optim=OptimConfig(lr=3e-2, warmup_samples=400, batch_size=8, grad_accum_steps=1,
                          n_samples=9600),
        eval=EvalConfig(every_samples=800, n_samples=64, batch_size=16,
                        alive_window_tokens=100_000, grad_norm_after_samples=400,
                        log_every_steps=10, checkpoint_every_steps=100,
                        alive_pass_tokens=100_000),
        # DB-KSVD on 2^18 cached activations (a fifth of what each SAE cell reads once),
        # 3 passes: a few CPU minutes per cell (chunks of 32 atoms: as good as 128 here and
        # faster on a CPU).
        ksvd=KSVDConfig(n_tokens=262_144, batch_size=65_536, n_passes=3, atom_chunk=32),
        device="cpu"),
    layers=(2,),
    # The three curves overlap at L0 ≈ 5-40 at this lr (e2e reaches a given L0 at a far
    # smaller λ than local, as in the paper; e2e_ds at about 10x e2e's); ksvd's λ is its L0
    # budget, spanning the same range.
    lambdas={"local": (0.3, 1.0, 4.0, 12.0), "e2e": (0.01, 0.03, 0.1, 0.3),
             "e2e_ds": (0.1, 0.3, 1.0, 3.0), "ksvd": (3, 6, 12, 24)},
    headline_note=("tiny: a 4-layer, 128-wide LM trained here on 4.9M tokens, layer 2, 1,200 "
                   "steps of 1,024 tokens per cell (0.3% of the paper's budget); the "
                   "small-scale study (docs/study-tiny.md) shows that this comparison's sign "
                   "changes with the learning rate, the L0 range and the layer: it tests the "
                   "system and the direction of the claim on a model built offline, not the "
                   "paper's GPT-2 numbers"),
    pretrain=PretrainConfig(),
    time_min=30,
    # measured here, 2026-11-26 (docs/study-tiny.md); analyze with the feature browser 2026-12-01
    local_minutes={"pretrain": 10.6, "sae": 7.0, "ksvd": 2.0, "collect": 0.1, "analyze": 2.5},
    # 12 cells in 3 tasks: the clean pass is shared 4 ways (see README, Performance).
    pack=4,
)

DEMO_TINY = replace(
    TINY,
    name="demo-tiny",
    # `make demo` until 2026-12-04 (now a real LM: grids_real.DEMO): tiny's comparison in
    # under 20 minutes on 2 CPU cores, install included.
    # Each cut was measured here (docs/demo.md): bf16 autocast (AMX; dtype=auto picks it where
    # the chip has it) runs the LM's steps 1.33x and the SAE steps 1.28x faster; the LM
    # trains half as long (600 steps, 2.5M tokens); 9 cells of 800 steps in one pack (one
    # clean pass for all) instead of 12 of 1,200 in three; two ksvd cells on half tiny's
    # activations, 2 passes.
    base=replace(TINY.base, optim=replace(TINY.base.optim, n_samples=6400),
                 ksvd=KSVDConfig(n_tokens=131_072, batch_size=65_536, n_passes=2,
                                 atom_chunk=32)),
    lambdas={"local": (0.3, 2.0, 12.0), "e2e": (0.01, 0.05, 0.3), "e2e_ds": (0.1, 0.5, 3.0),
             "ksvd": (4, 16)},
    headline_note=("demo: a 4-layer, 128-wide LM trained here on 2.5M tokens, layer 2, 800 "
                   "steps of 1,024 tokens per cell: the quick check of the system; "
                   "`grid=tiny` (twice the budget) is the small-scale study's grid, and its "
                   "comparison's sign changes with the learning rate, the L0 range and the "
                   "layer (docs/study-tiny.md): neither is the paper's GPT-2 result"),
    pretrain=PretrainConfig(train_steps=600, dtype="auto"),
    pack=9,
    # measured on a clean clone here, 2026-11-30 and (analyze, with the browser) 2026-12-01
    local_minutes={"pretrain": 3.8, "sae": 6.1, "ksvd": 0.55, "collect": 0.1, "analyze": 1.4},
)

_PAPER_HOURS = PAPER_HOURS

PAPER_TABLES = Grid(
    name="paper-tables",
    base=CellConfig(data=DataConfig()),  # the config defaults are the paper's GPT-2 settings
    layers=(2, 6, 10),
    # Only the λ values of the paper's Tables 1-3.
    lambdas={"local": (0.8, 4.0, 6.0, 10.0), "e2e": (0.5, 1.5, 3.0),
             "e2e_ds": (10.0, 35.0, 50.0)},
    layer_lambdas={(10, "e2e_ds"): (1.75,)},
    settings=SAE_SETTINGS,
    gpu_hours=_PAPER_HOURS,
    model_sizes={"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257,
                 "n_positions": 1024, "architectures": ["GPT2LMHeadModel"]},  # GPT-2 small
    # Table 6: up to 12.5 h on an A100 for e2e; ask for 16 h and let preemption requeue.
    time_min=16 * 60,
    # Alone by default: cells are hours long and a cluster runs them side by side; pack=4
    # shares the clean pass (fewer GPU-hours) for small allocations, time scaled to match.
    pack=1,
    cpus_per_cell=4,
    container="apptainer",
    image="containers/e2e-sae-hpc.sif",
)

PAPER = replace(
    PAPER_TABLES,
    name="paper",
    # Every GPT-2 table and figure: the tables' λ plus the published sweep values (local
    # {1,3,6,10,15,20,30}, e2e {0.08,0.2,0.8,2}) and e2e+ds values around the tables', so each
    # curve spans L0 ≈ 10-300 (Fig. 1), and the seed-1 runs of layer 6's similar-CE trio
    # (cross-seed geometry).
    lambdas={"local": (0.8, 1.0, 3.0, 4.0, 6.0, 10.0, 15.0, 20.0, 30.0),
             "e2e": (0.08, 0.2, 0.5, 0.8, 1.5, 2.0, 3.0),
             "e2e_ds": (3.0, 10.0, 20.0, 35.0, 50.0, 100.0),
             # DB-KSVD at the same hook and dictionary size (46,080), its L0 budgets spanning
             # the SAEs' L0 range (KSVD.jl's paper: 20-80 on Gemma-2-2B).
             "ksvd": (16, 32, 64, 128, 256)},
    settings=SETTINGS,
    # Our estimate for a ksvd cell (2.6M activations, 3 passes), not yet measured on a GPU.
    gpu_hours={**_PAPER_HOURS, **{(layer, "ksvd"): 1.0 for layer in (2, 6, 10)}},
    layer_lambdas={(10, "e2e_ds"): (0.5, 1.0, 1.75, 4.0, 10.0)},
    extra_cells=((6, "local", 4.0, {"seed": 1}), (6, "e2e", 3.0, {"seed": 1}),
                 (6, "e2e_ds", 50.0, {"seed": 1})),
)

_TOPK = SAEConfig(dict_size_to_input_ratio=4.0, activation="topk", k=6)


def _k_axis(k: int) -> dict[str, tuple[float, ...]]:
    """TopK's λ axis is k (it has no sparsity term): one k for every setting."""
    return {"local": (k,), "e2e": (k,), "e2e_ds": (k,)}


SYNTHETIC = Grid(
    name="synthetic",
    # The MFR authors' generator (d 256, 512 features, 12 groups of 42, 32 active), SAE width
    # (512 = the true feature count) and baseline lr (1e-2), on 300k samples of batch 1,000
    # instead of their 50M of 10,000: CPU minutes (10x the samples moved MMCS 0.30 -> 0.33).
    base=CellConfig(
        source="synthetic",
        sae=SAEConfig(dict_size_to_input_ratio=2.0, activation="topk", k=32),
        loss=LossConfig(setting="local", sparsity_coeff=0.0),
        optim=OptimConfig(lr=1e-2, warmup_samples=10_000, batch_size=1000, grad_accum_steps=1,
                          n_samples=300_000),
        eval=EvalConfig(every_samples=50_000, n_samples=4000, batch_size=1000,
                        alive_window_tokens=100_000, grad_norm_after_samples=10_000,
                        log_every_steps=20, checkpoint_every_steps=100,
                        alive_pass_tokens=20_000),
        device="cpu"),
    layers=(0,),
    settings=("local",),
    lambdas={"local": (32,)},  # k, as in base; the sweep's sae.k replaces it
    sweep={"sae.k": (16, 32), "mfr.n_saes": (2, 5), "mfr.coeff": (0.0, 1.0, 3.0),
           "seed": (0, 1, 2)},
    time_min=30,
)

MFR = Grid(
    name="mfr",
    # TopK SAEs (4x dictionary, k 16) at layer 2 of tiny's LM, baseline against MFR, with the
    # budget measured for the README (600 steps at lr 2e-3), pinned here so it stays put.
    base=replace(TINY.base, sae=replace(_TOPK, k=16), loss=LossConfig(sparsity_coeff=0.0),
                 mfr=MFRConfig(n_saes=3),
                 optim=OptimConfig(lr=2e-3, warmup_samples=400, batch_size=8,
                                   grad_accum_steps=1, n_samples=4800)),
    layers=(2,),
    settings=("local", "e2e"),
    lambdas=_k_axis(16),
    # One seed (CPU time: a pack of local + e2e with 3 SAEs each); add seeds with
    # sweep.seed=[0,1,2].
    sweep={"mfr.coeff": (0.0, 1.0)},
    pretrain=TINY.pretrain,
    time_min=60,
    pack=2,  # local and e2e share the clean pass
)

MFR_GPT2 = Grid(
    name="mfr-gpt2",
    # The paper's GPT-2 setting: 10 TopK SAEs, k 6, 4x dictionary (3,072), coefficient 0.005.
    # The paper hooked block 0's MLP output; this system's hook point is resid_pre, so the
    # SAEs read blocks.1.hook_resid_pre (which contains that output).
    base=CellConfig(data=DataConfig(), sae=_TOPK, loss=LossConfig(sparsity_coeff=0.0),
                    optim=OptimConfig(lr=1e-3), mfr=MFRConfig(n_saes=10)),
    layers=(1,),
    settings=("local", "e2e"),
    lambdas=_k_axis(6),
    sweep={"mfr.coeff": (0.0, 0.005)},
    time_min=24 * 60,
    cpus_per_cell=4,
    container="apptainer",
    image="containers/e2e-sae-hpc.sif",
)


def _architectures(relu: dict, k: tuple[int, ...], jumprelu: dict, dead_tokens: int
                   ) -> tuple[Variant, ...]:
    """Issue 22: each SAE architecture under local and e2e, its own λ axis (k for the TopK
    family, whose L0 is k: on average for BatchTopK at training time)."""
    family = {"loss.sparsity_coeff": 0.0, "sae.k": k[0]}  # _cell sets each k
    ks = {"local": k, "e2e": k}
    return (
        Variant("relu", {}, relu),
        Variant("topk", {"sae.activation": "topk", **family}, ks),
        # Gao et al.'s AuxK coefficient 1/32 and k_aux d_in / 2; dead after `dead_tokens`
        Variant("topk+auxk", {"sae.activation": "topk", "sae.auxk_coeff": 1 / 32,
                              "sae.auxk_dead_tokens": dead_tokens, **family}, ks),
        Variant("batchtopk", {"sae.activation": "batchtopk", **family}, ks),
        # prefixes of 1/16 and 1/4 of the dictionary, then all of it
        Variant("matryoshka", {"sae.activation": "matryoshka", **family}, ks),
        Variant("jumprelu", {"sae.activation": "jumprelu"}, jumprelu),
    )


ARCHITECTURES = replace(
    TINY,
    name="architectures",
    # Does e2e's gain hold for each architecture? Each under local and e2e on tiny's LM, at
    # tiny's budget: ReLU at tiny's λ; the TopK family at k 4-32 (tiny's curves overlap at L0
    # 5-40); JumpReLU's L0 coefficients from a short calibration (below).
    settings=("local", "e2e"),
    lambdas={},
    variants=_architectures(
        relu={"local": TINY.lambdas["local"], "e2e": TINY.lambdas["e2e"]}, k=(4, 8, 16, 32),
        # JumpReLU measured here at tiny's budget (2026-11-30): local λ 0.1 / 1 / 10 -> L0 32 /
        # 18 / 8; e2e λ 0.003 / 0.03 / 0.3 -> L0 93 / 53 / 35 (unlike ReLU, e2e needs the
        # larger λ), so e2e's range starts where that ended
        jumprelu={"local": (0.1, 0.3, 1.0, 3.0, 10.0), "e2e": (0.3, 1.0, 3.0, 10.0, 30.0)},
        # tiny's alive window: a cell reads 1.2M tokens, Gao's 10M would never fire
        dead_tokens=100_000),
    headline_note=("architectures: tiny's LM and budget (1,200 steps of 1,024 tokens per cell, "
                   "layer 2); each architecture's e2e against its own local at equal L0; "
                   "tiny's own comparison changes sign with the learning rate, the L0 range "
                   "and the layer (docs/study-tiny.md), and the learning rate here is the one "
                   "tuned for ReLU"),
    # 50 cells in 21 tasks: ReLU and JumpReLU pack 4 cells, each k of the TopK family 2
    # (local and e2e). Measured here (2026-12-01, docs/architectures.md): 2.0-7.5 min per task,
    # ~4.1 on average; the collector and the analysis step 4 min.
    local_minutes={"pretrain": 10.6, "sae": 4.1, "collect": 0.2, "analyze": 4.0},
)

# GPT-2 small, layer 6: the paper's SAE (λ around Tables 1-3) against the other architectures
# at k 16-128 (the paper's L0 range at layer 6: 27-70 at its table points).
ARCHITECTURES_GPT2 = replace(
    PAPER_TABLES,
    name="architectures-gpt2",
    layers=(6,),
    settings=("local", "e2e"),
    lambdas={},
    layer_lambdas={},
    variants=_architectures(
        relu={"local": (2.0, 4.0, 6.0, 10.0), "e2e": (0.5, 1.5, 3.0, 6.0)},
        k=(16, 32, 64, 128),
        # not calibrated on GPT-2: tiny's λ ranges, e2e's above local's as measured there
        jumprelu={"local": (0.1, 0.5, 2.0, 10.0), "e2e": (0.5, 2.0, 8.0, 32.0)},
        dead_tokens=10_000_000),  # Gao et al.'s (a cell reads 409.6M tokens)
    # Table 6's hours for layer 6; Matryoshka runs the suffix once per level in e2e (3 levels:
    # ~3x the suffix's share of an e2e cell, 11.33 - 4.75 h) and decodes 3 times locally.
    # Our estimates, not measured on a GPU.
    gpu_hours={(6, "local"): 4.75, (6, "e2e"): 11.33},
    gpu_hours_factor={("matryoshka", "local"): 1.2, ("matryoshka", "e2e"): 2.2},
)

GRIDS: dict[str, Grid] = {g.name: g for g in (SMOKE, DEMO, DEMO_FP32, DEMO_TINY, TINY, PAPER,
                                               PAPER_TABLES, SYNTHETIC, MFR, MFR_GPT2,
                                               ARCHITECTURES, ARCHITECTURES_GPT2, SMOLLM2,
                                               PYTHIA)}


def grid_named(name: str) -> Grid:
    """The grid called `name`, or ConfigError naming the grids there are."""
    if name not in GRIDS:
        raise ConfigError(f"grid={name!r} is invalid: must be one of {sorted(GRIDS)}")
    return GRIDS[name]


def pretrain_dir(root: Path, grid: str) -> Path:
    """`<root>/<grid>/_pretrain-<hash>` of a named grid (see `jobs.plan.grid.grid_pretrain_dir`)."""
    return grid_pretrain_dir(root, GRIDS[grid])
