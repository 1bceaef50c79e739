"""A training step's passes over the frozen blocks as compiled graphs: the clean pass and the
patched suffix without the per-call cost of the model's Python.

Through TransformerLens's bridge a block is dozens of small kernels wrapped in Python (hook
points, attention rebuilt from split q/k/v, the mask re-applied per block, autocast casting
every frozen weight at every call); on 2 CPU cores a 4-layer d_model 128 model's clean pass
took 23 ms where its matmuls take 6. `Traced` records each pass once per batch shape as an
aten graph (`make_fx` on real tensors: the operations the bridge ran, autocast's casts
included, its Python gone; a branch on a tensor's value fails the trace instead of being
baked into it) and compiles it with inductor (`e2e.kernels.Compiled`: static shapes, so every
batch of a cell, and its resumed run, uses the same kernels). The blocks' other arguments
(masks, position ids, rotary tables: the calls `clean_pass` records) depend on the batch's
shape only and become constants of the graph; token-dependent tensors are its inputs.

Each graph is checked once against the eager passes on two batches of its shape (the first
and a shifted copy of it, so that a constant that secretly depended on the tokens shows): the
largest difference must stay within `TOLERANCE` of the values' scale, the rounding of
reordered bf16 arithmetic, far below what a wrong mask or position does. A model whose trace
or check fails runs eagerly, after one warning. Evaluation always runs eagerly.
"""

from __future__ import annotations

import warnings

import torch

from e2e.kernels import CleanTarget, Compiled
from e2e.model.split import CleanPass, clean_pass, resid_pre, run_blocks, run_to_final, unembedding

# Largest |compiled - eager| over the values' max |.|, per dtype the pass computes in: fp32
# reorders sums (1e-6 seen); bf16 rounds each fused intermediate once instead of per op.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


class TracedPassError(RuntimeError):
    """A compiled pass differs from the eager one by more than `TOLERANCE`."""


def _autocast_dtype(device: torch.device) -> torch.dtype:
    on = torch.is_autocast_enabled(device.type)
    return torch.get_autocast_dtype(device.type) if on else torch.float32


class Traced:
    """The compiled clean pass and patched suffix of one frozen model, per (batch shape,
    layer, skip, full, autocast dtype); built on first use, eager (and warned once) for a
    model whose graphs cannot be traced or do not match."""

    def __init__(self, model):
        self.model = model
        self.graphs: dict[tuple, tuple] = {}
        self.failed = False

    def clean_pass(self, tokens: torch.Tensor, layer: int, full: bool, skip: int = 0
                   ) -> CleanPass:
        """`e2e.model.clean_pass(model, tokens, layer, full, skip, logits=False)`, its blocks
        compiled; the result's `suffix` is the compiled patched suffix (`full` only)."""
        if self.failed:
            return clean_pass(self.model, tokens, layer, full, skip, logits=False)
        dtype = _autocast_dtype(tokens.device)
        key = (tuple(tokens.shape), layer, full, skip, dtype)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._build(tokens, layer, full, skip, dtype)
            except Exception as e:  # noqa: BLE001 (any failure: the eager passes are exact)
                warnings.warn(f"compiling the model's passes failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); running them eagerly",
                              stacklevel=2)
                self.failed = True
                return clean_pass(self.model, tokens, layer, full, skip, logits=False)
        calls, prefix, suffix = self.graphs[key]
        with torch.no_grad():
            outs = _call(prefix, resid_pre(self.model, tokens, 0))
        r = outs[0]
        clean = CleanPass(r[:, skip:], None, [o[:, skip:] for o in outs[1:-1]], None, layer,
                          calls, skip, r[:, :skip], suffix)
        if full:
            x = outs[-1][:, skip:]
            clean.target = CleanTarget(x.reshape(-1, x.shape[-1]), *unembedding(self.model))
        return clean

    def _build(self, tokens, layer, full, skip, dtype):
        """(calls from `layer`, compiled prefix, compiled suffix or None) for this shape,
        each checked against the eager pass on `tokens` and on tokens shifted by one."""
        from torch.fx.experimental.proxy_tensor import make_fx

        model, n = self.model, self.model.cfg.n_layers
        with torch.no_grad():
            calls = clean_pass(model, tokens, 0, full=True, logits=False).calls
            h0 = resid_pre(model, tokens, 0)
        last = n if full else layer

        def prefix(h):  # block inputs from `layer` on (and the final norm's output if full)
            with torch.autocast(tokens.device.type, dtype=dtype, enabled=dtype != torch.float32):
                ins = run_blocks(model, h, 0, calls[:last])
                return [*ins[layer:last], model.ln_final(ins[-1])] if full else [ins[-1]]

        with torch.no_grad():
            graph = Compiled(make_fx(prefix, tracing_mode="real")(h0))
        suffix = None
        if full:
            def run_suffix(resid, head):
                with torch.autocast(tokens.device.type, dtype=dtype,
                                    enabled=dtype != torch.float32):
                    clean = CleanPass(resid, None, [], None, layer, calls[layer:], skip, head)
                    final, later = run_to_final(model, resid, clean)
                    return [final, *later]

            with torch.no_grad():
                r = prefix(h0)[0]
            # traced with grad on, as the training step calls it
            graph_s = Compiled(make_fx(run_suffix, tracing_mode="real")(
                r[:, skip:].clone().requires_grad_(), r[:, :skip].clone()))

            def suffix(resid, head):  # called under the step's autocast: off around it too
                return _call(graph_s, resid, head)
        for toks in (tokens, tokens.roll(1, dims=1)):
            self._check(toks, layer, full, skip, dtype, graph, suffix)
        return calls[layer:], graph, suffix

    def _check(self, tokens, layer, full, skip, dtype, graph, suffix) -> None:
        """TracedPassError unless the compiled passes match the eager ones on `tokens`."""
        with torch.no_grad(), torch.autocast(tokens.device.type, dtype=dtype,
                                             enabled=dtype != torch.float32):
            eager = clean_pass(self.model, tokens, layer, full, skip, logits=False)
            got = _call(graph, resid_pre(self.model, tokens, 0))
            pairs = [(got[0][:, skip:], eager.resid)]
            if full:
                pairs += [(got[-1][:, skip:].reshape(eager.target.x.shape), eager.target.x)]
                final, later = run_to_final(self.model, eager.resid, eager)
        if full:  # with grad, as in training: no-grad would compile the suffix a second time
            resid = eager.resid.clone().requires_grad_()
            got = [t.detach() for t in suffix(resid, eager.head)]
            pairs += list(zip(got, [final, *later], strict=True))
        for a, b in pairs:
            diff, scale = float((a.float() - b.float()).abs().max()), float(b.float().abs().max())
            if not diff <= TOLERANCE[dtype] * max(scale, 1e-6):
                raise TracedPassError(f"compiled pass differs from the eager one by {diff:.3g} "
                                      f"(scale {scale:.3g})")


def _call(graph: Compiled, *args: torch.Tensor) -> list[torch.Tensor]:
    """A traced graph on `args`: its casts are explicit, so autocast is off around it (also
    for one compiled form: dynamo compiles again for another autocast state, and under
    autocast the suffix compiled to slower code: 14.4k against 16.5k tokens/s, small e2e)."""
    with torch.autocast(args[0].device.type, enabled=False):
        return graph(*args)


def traced_for(model) -> Traced:
    """The model's `Traced` passes, one per model (kept on it: its compiled graphs live as long
    as the model)."""
    if getattr(model, "_e2e_traced", None) is None:
        model._e2e_traced = Traced(model)
    return model._e2e_traced
