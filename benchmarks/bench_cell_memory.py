"""Peak RSS of one real e2e cell at the GPT-2 shape on this CPU (issue 31's memory target).

    python benchmarks/bench_cell_memory.py [--batch 4 --dtype auto --compile auto
                                            --stage /tmp/e2e-bench-memory --tree PATH]

A random GPT-2 small (12 layers, 768 wide, vocab 50,257, context 1,024) and random token rows
are staged once under --stage; the cell then runs in a fresh process, as a cell loads its model
from disk: `e2e.train.train`, layer 6, ratio 60 (46,080 elements), e2e, micro-batch --batch,
two optimizer steps, the start and final evaluation on one eval batch and the alive pass.
Prints that process's peak RSS (model and libraries included) and its time. `--tree` imports
`e2e` from another checkout (a `git worktree` of an older commit) into the same harness, for
a ratio side by side; `--compile none` leaves `model.compile` out, for a tree without it.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
SHAPE = dict(n_layers=12, d_model=768, vocab=50257, ctx=1024, layer=6, ratio=60.0)


def stage(root: Path, batch: int) -> Path:
    """The model and rows, written once (a marker file holds the rows' folder)."""
    done = root / f"rows-{batch}"
    if not done.exists():
        sys.path.insert(0, str(HERE))
        from bench_settings import build_model
        from gpu_check import _stage_random_rows

        build_model(SimpleNamespace(**SHAPE, device="cpu"), root / "model")
        rows = _stage_random_rows(root / f"b{batch}", {**SHAPE, "batch": batch}, 4 * batch)
        done.write_text(str(rows))
    return Path(done.read_text())


def cell(args) -> None:
    import e2e
    from e2e.config import (
        CellConfig,
        DataConfig,
        EvalConfig,
        LossConfig,
        ModelConfig,
        OptimConfig,
        SAEConfig,
    )
    from e2e.train import train

    b, ctx = args.batch, SHAPE["ctx"]
    model = ModelConfig(str(args.stage / "model"),
                        **({} if args.compile == "none" else {"compile": args.compile}))
    cfg = CellConfig(
        layer=SHAPE["layer"], model=model, device="cpu", dtype=args.dtype,
        data=DataConfig(dataset=str(stage(args.stage, b)), column="input_ids",
                        context_length=ctx, eval_split="eval"),
        sae=SAEConfig(dict_size_to_input_ratio=SHAPE["ratio"]),
        loss=LossConfig(setting="e2e", sparsity_coeff=1.0),
        optim=OptimConfig(lr=1e-3, warmup_samples=b, batch_size=b, grad_accum_steps=1,
                          n_samples=2 * b),
        eval=EvalConfig(every_samples=100 * b, n_samples=b, batch_size=b,
                        alive_window_tokens=10 * b * ctx, grad_norm_after_samples=b,
                        log_every_steps=1, checkpoint_every_steps=10,
                        alive_pass_tokens=b * ctx))
    t0 = time.perf_counter()
    train(cfg, Path(tempfile.mkdtemp()) / "cell", progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB, cell {time.perf_counter() - t0:.0f} s "
          f"(batch {b} x {ctx}, dtype {args.dtype}, compile {args.compile}, "
          f"e2e from {Path(e2e.__file__).parent.parent})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off", "none"])
    p.add_argument("--stage", type=Path, default=Path(tempfile.gettempdir()) / "e2e-bench-memory")
    p.add_argument("--tree", default="")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return cell(args)
    stage(args.stage, args.batch)  # here, so that the cell's process holds none of it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [args.tree, str(HERE)]))}
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child"], env=env, check=True)


if __name__ == "__main__":
    main()
