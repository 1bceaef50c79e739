"""What the chip runs natively, and the training dtype that follows: bf16 autocast where the
chip has bf16 (a GPU from Ampere on; a CPU with AVX512-BF16 or AMX), fp32 elsewhere."""

from __future__ import annotations

import functools
import os
import re
import time
from contextlib import nullcontext
from pathlib import Path

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether the chip runs bf16 matmuls natively: a CUDA GPU with bf16 (Ampere on), or a CPU
    whose flags (Linux's /proc/cpuinfo) have AVX512-BF16 or AMX-BF16 and whose kernels, as
    PyTorch and oneDNN dispatch them, may use them. On a CPU without them autocast emulates
    bf16: 3.2x slower than fp32 on SmolLM2's prefix (`EMULATED_BF16`).

    `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` (set before Python starts) make an
    AVX-512 machine dispatch an AVX2 chip's kernels, and this answer no: how the other CPU kind
    is tried on one machine (docs/performance.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return _cpu_bf16()


# Measured on the AVX2-only kind (AMD EPYC, 2 cores, 2026-12-06; docs/performance.md): what a
# user's dtype=bfloat16 costs on a CPU that emulates it, said in the plan.
EMULATED_BF16 = ("bf16 is emulated on a CPU without AVX512-BF16 or AMX: SmolLM2's 6-layer prefix "
                 "of 1,024 tokens took 8.65 s under bf16 autocast against 2.68 s in float32 "
                 "(3.2x), a 1,024^2 matmul ran ~60x slower")

# oneDNN's ISA caps below the first with bf16 instructions (AVX512_CORE_BF16)
_NO_BF16_ISA = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                "AVX512_CORE_VNNI"}


@functools.cache
def _cpu_bf16() -> bool:  # read once a process: every checkpoint records the resolved dtype
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is None:
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL"))
    return (isa.upper() not in _NO_BF16_ISA
            and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))


def train_dtype(dtype: str, device: torch.device) -> str:
    """A config's `dtype` ("auto", "float32" or "bfloat16": a cell's, the small LM's
    pre-training's) resolved for `device` (a resumed cell keeps the one its checkpoint
    recorded: `e2e.train.member.Member.train_dtype`)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bf16(device) else "float32"


def autocast_for(dtype: str, device: torch.device):
    """bf16 autocast (fp32 weights) for a resolved training dtype of "bfloat16", else
    nothing."""
    return (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
            else nullcontext())


def dense_gflops(device: torch.device, dtype: torch.dtype, n: int = 1024,
                 seconds: float = 0.3) -> float:
    """This machine's rate for an (n, n) @ (n, n) matmul in `dtype`, GFLOP/s: the ceiling a
    step's matmuls are measured against (benchmarks) and how the status line scales a grid's
    measured minutes to this machine (`jobs.run.progress`). Repeats for about `seconds` after
    three warm-up products."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 50 == 0:
            sync()
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def compile_cache_per_kernels() -> None:
    """Points inductor's cache at a folder of its own per kernel set this process dispatches
    (`<default>-<ATen capability>`, e.g. `/tmp/torchinductor_root-AVX2`), unless the user set
    TORCHINDUCTOR_CACHE_DIR. Inductor's cache keys do not tell AVX-512 from AVX2 code: under
    the AVX2 emulation a kernel compiled earlier for AVX-512 came back from the cache and a
    smoke cell's loss became NaN within 3 steps; on a shared /tmp across nodes of both kinds
    it would be an illegal instruction. Called before anything compiles (`e2e.kernels`)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    # importing torch._inductor writes its default into the variable: not the user's choice
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default) == default:
        capability = torch.backends.cpu.get_cpu_capability().replace(" ", "_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default}-{capability}"
