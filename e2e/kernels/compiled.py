"""`Compiled`: a function compiled by inductor where it can be, eager where it cannot."""

from __future__ import annotations

import warnings

import torch
import torch._inductor.config  # noqa: F401 (patched per call below)

from e2e.kernels.chip import compile_cache_per_kernels

compile_cache_per_kernels()  # before anything compiles: AVX-512 and AVX2 kernels apart


class Compiled:
    """`fn` compiled by inductor, for the elementwise passes it fuses (a CPU's or a GPU's), on
    its first call with each shape unless `dynamic`: a shape keeps its own kernel whatever
    other shapes the process saw (a dynamic kernel compiled later could sum in another order,
    and a resumed cell must be bit-identical). TORCH_COMPILE_DISABLE=1 (PyTorch's own switch)
    runs it eagerly, as does a process where compiling fails (a container without a C++
    compiler), after one warning."""

    def __init__(self, fn, dynamic: bool = False, name: str | None = None):
        self.eager = fn
        self.fn = torch.compile(fn, dynamic=dynamic)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, *args):
        try:
            # No limit on the shapes compiled: past dynamo's default of 8 a process runs new
            # shapes eagerly, and a cell resumed in a fresh process (compiled) would not be
            # bit-identical to one that ran on in a process that had seen many shapes. No
            # kernel chosen by timing it on the device (a GPU's reductions: configurations
            # that sum in different orders), so a resumed cell compiles the same kernels.
            with torch._dynamo.config.patch(recompile_limit=10**6,
                                            accumulated_recompile_limit=10**6), \
                    torch._inductor.config.patch(deterministic=True):
                return self.fn(*args)
        except torch.OutOfMemoryError:
            raise  # the step's memory, not the compiler: eagerly it would not fit either
        except Exception as e:
            if self.fn is self.eager:
                raise
            warnings.warn(f"compiling {self.name} failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); running it eagerly", stacklevel=2)
            self.fn = self.eager
            return self.eager(*args)
