"""`make gpu-check`: the cluster path on one GPU, at the paper's GPT-2 shape with random weights.

    python benchmarks/gpu_check.py [size=gpt2|cpu] [steps=10] [out=<dir>]

1. Each setting (local, e2e, e2e_ds) in fp32 (TF32 matmuls) and bf16 autocast, compiled (the
   model's passes, `model.compile=on`, and the KL's core) and not ("eager": the bridge's own
   blocks, `torch.compile` off): tokens/s, peak memory, achieved
   TFLOP/s of the step's matmuls against a dense matmul of the same dtype timed in the same
   run, and the hours a paper cell (409.6M tokens, layer 6) would take at that rate, beside
   the paper's Table 6 (one A100).
2. Resume after a kill: a real cell (`python -m jobs.cell`) SIGKILLed after its first
   checkpoint, resumed, and compared with the same cell run straight through.
3. One ksvd cell (DB-KSVD on the GPU: caching, pursuit, update, scoring).
4. A fine-tune: a local cell, then its KL+MSE child (`jobs.plan.finetune`, the grid's defaults):
   the child's step-0 evaluation against its parent's final one (equal on the same device),
   its time, and its FLOPs against the parent's.
`size=cpu` runs the same code on a small shape on the CPU (CI runs it, so it never rots);
`out=` writes the numbers as gpu_check.json there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch
from bench_settings import bench, build_model

from e2e.config import (
    CellConfig,
    DataConfig,
    EvalConfig,
    KSVDConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    SAEConfig,
)
from e2e.io import cell_paths
from e2e.kernels.chip import dense_gflops
from e2e.train import train
from jobs import cli

REPO = Path(__file__).resolve().parent.parent
PAPER_TOKENS = 400_000 * 1024  # a paper cell: 400k samples of 1,024 tokens
TABLE6_LAYER6_H = {"local": 4.75, "e2e": 11.33, "e2e_ds": 11.4}  # one A100
SHAPES = {  # the model, the SAE and the micro-batch of each size
    "gpt2": dict(n_layers=12, d_model=768, vocab=50257, ctx=1024, batch=8, layer=6, ratio=60.0),
    "cpu": dict(n_layers=3, d_model=64, vocab=512, ctx=32, batch=4, layer=1, ratio=4.0),
}


@dataclass(frozen=True)
class Options:
    size: str = "gpt2"
    steps: int = 10
    out: str = ""
    parts: tuple[str, ...] = ("settings", "resume", "ksvd", "finetune")


def settings_report(shape: dict, device: str, steps: int, tmp: Path) -> list[dict]:
    import torch._dynamo

    rows = []
    n = 8192 if device == "cuda" else 512
    for dtype in ("float32", "bfloat16"):
        args = SimpleNamespace(**shape, steps=steps, pack=1, dtype=dtype, device=device,
                               warmup=2)
        model = build_model(args, tmp / f"model-{dtype}")
        peak = dense_gflops(torch.device(device), getattr(torch, dtype), n) / 1e3
        for mode in ("compiled", "eager"):
            for setting in ("local", "e2e", "e2e_ds"):
                if device == "cuda":
                    torch.cuda.empty_cache()
                args.compile = "on" if mode == "compiled" else "off"
                with torch._dynamo.config.patch(disable=mode == "eager"):
                    tps, mem, gflops, mean_tps = bench(model, args, setting,
                                                       tmp / f"{dtype}-{setting}")
                hours = PAPER_TOKENS / tps / 3600
                rows.append(dict(dtype=dtype, mode=mode, setting=setting, tokens_per_s=tps,
                                 tokens_per_s_mean_step=mean_tps,
                                 peak_mib=mem, tflops=gflops / 1e3, dense_tflops=peak,
                                 paper_cell_hours=hours))
                paper = (f"  paper cell {hours:6.2f} h (Table 6, one A100: "
                         f"{TABLE6_LAYER6_H[setting]} h)" if shape == SHAPES["gpt2"] else "")
                print(f"{dtype:8} {mode:8} {setting:6} {tps:10.0f} tokens/s  peak {mem:9.0f} "
                      f"MiB  {gflops / 1e3:8.3f} TFLOP/s ({100 * gflops / 1e3 / peak:3.0f}% of "
                      f"a dense {dtype} matmul's {peak:.3g}){paper}", flush=True)
        del model
    return rows


def _stage_random_rows(root: Path, shape: dict, n_rows: int) -> Path:
    """Random token rows written as a stage (`e2e.data.staged`'s layout, numpy only), so the
    check needs no `datasets` on the GPU machine."""
    import numpy as np

    from e2e.data.staged import MANIFEST, ROWS_FILE, sha256

    rows = root / "stage" / "rows"
    rows.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "eval"):
        np.save(rows / f"{split}-00000.npy",
                rng.integers(1, shape["vocab"], (n_rows, shape["ctx"]), dtype=np.int32))
        splits[split] = {"rows": n_rows, "shards": [{"file": f"{split}-00000.npy",
                                                     "rows": n_rows}]}
    (rows / ROWS_FILE).write_text(json.dumps({"context_length": shape["ctx"],
                                              "splits": splits}))
    files = {str(p.relative_to(rows.parent)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(rows.iterdir())}
    (rows.parent / MANIFEST).write_text(json.dumps({"files": files}))
    (rows.parent / "DONE").write_text("ok\n")
    return rows


def _cell(shape: dict, root: Path, device: str) -> CellConfig:
    """A short real cell on random token rows and a random model."""
    ctx, batch = shape["ctx"], shape["batch"]
    return CellConfig(
        layer=shape["layer"], model=ModelConfig(str(root / "model-float32")),
        data=DataConfig(dataset=str(_stage_random_rows(root, shape, 64 * batch)),
                        column="input_ids", context_length=ctx, eval_split="eval"),
        sae=SAEConfig(dict_size_to_input_ratio=shape["ratio"]),
        loss=LossConfig(setting="e2e", sparsity_coeff=1.0),
        optim=OptimConfig(lr=1e-3, warmup_samples=batch, batch_size=batch, grad_accum_steps=1,
                          n_samples=30 * batch),
        eval=EvalConfig(every_samples=10 * batch, n_samples=batch, batch_size=batch,
                        alive_window_tokens=10 * batch * ctx, grad_norm_after_samples=batch,
                        log_every_steps=5, checkpoint_every_steps=10,
                        alive_pass_tokens=2 * batch * ctx),
        ksvd=KSVDConfig(n_tokens=8 * batch * ctx, batch_size=4 * batch * ctx, n_passes=1,
                        atom_chunk=256, max_nnz=16),
        device=device, dtype="auto")  # bf16 where the chip has it (e2e.kernels.chip)


def resume_report(cfg: CellConfig, root: Path) -> dict:
    from safetensors.torch import load_file

    straight, killed = root / "straight", root / "killed"
    for d in (straight, killed):
        cell_paths(d).root.mkdir(parents=True, exist_ok=True)
        cell_paths(d).config.write_text(cfg.to_json())
    # Every run in its own process, as on the cluster: this one has compiled the KL's core
    # for other shapes and dtypes above, and may pick another kernel for the same shape.
    cell = [sys.executable, "-m", "jobs.cell"]
    t0 = time.perf_counter()
    subprocess.run([*cell, str(straight)], cwd=REPO, check=True, capture_output=True)
    straight_s = time.perf_counter() - t0
    proc = subprocess.Popen([*cell, str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not cell_paths(killed).checkpoint.exists() and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = torch.load(cell_paths(killed).checkpoint, weights_only=True)["step"]
    subprocess.run([*cell, str(killed)], cwd=REPO, check=True, capture_output=True)
    a = load_file(str(cell_paths(straight).sae / "sae_weights.safetensors"))
    b = load_file(str(cell_paths(killed).sae / "sae_weights.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    same = "bit-identical" if diff == 0 else "differs"
    print(f"resume after SIGKILL at step {step} of {cfg.optim.n_steps}: max |weight "
          f"difference| against the uninterrupted cell {diff:.3g} ({same}); the cell took "
          f"{straight_s:.1f} s straight", flush=True)
    return {"killed_at_step": step, "max_abs_weight_diff": diff, "cell_seconds": straight_s}


def ksvd_report(cfg: CellConfig, root: Path) -> dict:
    from e2e.store import read_metrics

    kcfg = replace(cfg, loss=LossConfig(setting="ksvd", sparsity_coeff=0.0),
                   optim=OptimConfig())
    t0 = time.perf_counter()
    train(kcfg, root / "ksvd", progress=False)
    wall = time.perf_counter() - t0
    m = read_metrics(cell_paths(root / "ksvd").metrics)
    fit_s = float(m["attrs"]["train_time_s"] - m["attrs"]["cache_time_s"])
    rows = kcfg.ksvd.n_tokens * kcfg.ksvd.n_passes
    print(f"ksvd cell: K {int(kcfg.sae.dict_size_to_input_ratio * cfg_width(kcfg))} atoms, "
          f"max_nnz {kcfg.ksvd.max_nnz}, {rows:,} rows fitted in {fit_s:.1f} s "
          f"({rows / fit_s:,.0f} rows/s), {wall:.1f} s with caching and scoring; L0 "
          f"{m['eval']['l0']:.1f}, CE loss increase {m['eval']['ce_loss_increase']:.4f}",
          flush=True)
    return {"rows_per_s": rows / fit_s, "fit_seconds": fit_s, "cell_seconds": wall}


def finetune_report(cfg: CellConfig, root: Path) -> dict:
    from e2e.store import read_metrics
    from jobs.plan.finetune import Finetune, child

    parent = replace(cfg, loss=LossConfig(setting="local", sparsity_coeff=1.0))
    train(parent, root / "ft" / "parent", progress=False)
    kid = child(parent, "parent", "e2e_mse", 0.5, Finetune(settings=("e2e_mse",)))
    t0 = time.perf_counter()
    train(kid, root / "ft" / "child", progress=False)
    wall = time.perf_counter() - t0
    p, c = (read_metrics(cell_paths(root / "ft" / d).metrics) for d in ("parent", "child"))
    keys = [k for k in p["eval"] if k in c["eval_history"] and k != "alive_dict_elements"]
    worst = max(abs(float(c["eval_history"][k][0]) - float(p["eval"][k])) for k in keys)
    print(f"fine-tune (e2e_mse, half the parent's steps): step-0 eval against the parent's "
          f"final, max |difference| over {len(keys)} metrics {worst:.3g}"
          f"{' (equal)' if worst == 0 else ''}; CE loss increase "
          f"{p['eval']['ce_loss_increase']:.4f} -> {c['eval']['ce_loss_increase']:.4f}, L0 "
          f"{p['eval']['l0']:.1f} -> {c['eval']['l0']:.1f}; FLOPs {c['attrs']['flops']:.3g} "
          f"({c['attrs']['flops'] / p['attrs']['flops']:.2f}x the parent's); {wall:.1f} s",
          flush=True)
    return {"start_eval_max_abs_diff": worst, "child_seconds": wall,
            "flops_ratio": c["attrs"]["flops"] / p["attrs"]["flops"]}


def cfg_width(cfg: CellConfig) -> int:
    return json.loads((Path(cfg.model.name_or_path) / "config.json").read_text())["n_embd"]


def main(*tokens: str) -> None:
    o = cli.parse_options(tokens, Options)
    if o.size not in SHAPES:
        raise cli.ConfigError(f"size={o.size!r} is invalid: must be one of {sorted(SHAPES)}")
    device = "cuda" if o.size == "gpt2" and torch.cuda.is_available() else "cpu"
    if o.size == "gpt2" and device == "cpu":
        raise cli.ConfigError("size=gpt2 needs a CUDA GPU (size=cpu runs the same on a CPU)")
    shape = SHAPES[o.size]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"gpu-check on {name}, torch {torch.__version__}: {shape}", flush=True)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report = {"device": name, "torch": torch.__version__, "shape": shape}
        if "settings" in o.parts:
            report["settings"] = settings_report(shape, device, o.steps, tmp)
        else:  # the random model the cells read
            build_model(SimpleNamespace(**shape, device=device), tmp / "model-float32")
        cfg = _cell(shape, tmp, device)
        if "resume" in o.parts:
            report["resume"] = resume_report(cfg, tmp)
        if "ksvd" in o.parts:
            report["ksvd"] = ksvd_report(cfg, tmp)
        if "finetune" in o.parts:
            report["finetune"] = finetune_report(cfg, tmp)
    if o.out:
        Path(o.out).mkdir(parents=True, exist_ok=True)
        (Path(o.out) / "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.run(main)
