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

The clean pass's graph is checked once against the eager pass on two batches of its shape
(the first and a shifted copy of it, so that a constant that secretly depended on the tokens
shows); the suffix has a graph per dtype of the residual it is given, checked on its first
input, forward and backward. The largest difference must stay within `TOLERANCE` of the
values' scale (the gradient's within `GRAD_TOLERANCE` of its norm), the rounding of reordered
bf16 arithmetic, far below what a wrong mask or position does. A pass whose trace or check
fails runs eagerly, after one warning. Evaluation always runs eagerly.
"""

from __future__ import annotations

import warnings

import torch
import torch.fx
import torch.utils.checkpoint

from e2e.kernels import CleanTarget, Compiled
from e2e.kernels.heap import return_freed_heap
from e2e.model.split import (
    CleanPass,
    clean_pass,
    masked,
    resid_pre,
    run_blocks,
    run_to_final,
    unembedding,
)

# Largest |compiled - eager| over the values' max |.|, per dtype the pass computes in: fp32
# reorders sums (1e-6 seen); bf16 rounds each fused intermediate once instead of per op.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}
# The suffix's gradient, |compiled - eager| / |eager| (L2): a bf16 backward rounds its
# residual stream and every product (two bf16 backwards of a small LM's suffix: 5% apart on
# average, 13% at the worst element); a wrong mask or position is of the gradient's own size.
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.25}


class TracedPassError(RuntimeError):
    """A compiled pass differs from the eager one by more than `TOLERANCE` (or its gradient
    by more than `GRAD_TOLERANCE`)."""


def _autocast_dtype(device: torch.device) -> torch.dtype:
    on = torch.is_autocast_enabled(device.type)
    return torch.get_autocast_dtype(device.type) if on else torch.float32


def _autocast(device: torch.device, dtype: torch.dtype):
    """The inverse of `_autocast_dtype`: autocast to `dtype`, off for fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


class Traced:
    """The compiled clean pass and patched suffix of one frozen model, per (batch shape,
    layer, skip, full, autocast dtype); built on first use, eager (and warned once) for a
    model whose graphs cannot be traced or do not match."""

    def __init__(self, model):
        self.model = model
        self.graphs: dict[tuple, tuple] = {}
        self.failed = False

    def clean_pass(self, tokens: torch.Tensor, layer: int, full: bool, skip: int = 0,
                   keep: torch.Tensor | None = None, norm_multiple: float = 0.0) -> CleanPass:
        """`e2e.model.clean_pass(model, tokens, layer, full, skip, logits=False, keep,
        norm_multiple)` for
        token ids (batch, pos), its blocks compiled; with `full`, the result's `suffix` is the
        compiled patched suffix (on whole rows: the kept positions are written into them
        outside it). The first call of a shape traces, compiles and checks (the eager passes,
        after one warning, where that fails)."""
        return masked(self._clean_pass(tokens, layer, full, skip), keep, norm_multiple)

    def _clean_pass(self, tokens: torch.Tensor, layer: int, full: bool, skip: int
                    ) -> CleanPass:
        if self.failed:
            return clean_pass(self.model, tokens, layer, full, skip, logits=False)
        dtype = _autocast_dtype(tokens.device)
        key = (tuple(tokens.shape), layer, full, skip, dtype)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._build(tokens, layer, full, skip, dtype)
            except torch.OutOfMemoryError:
                raise  # not a property of the model: the step would fail eagerly too
            except Exception as e:  # noqa: BLE001 (any failure: the eager passes are exact)
                _warn_eager("the model's passes", e)
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
        """(calls from `layer`, the compiled prefix, the suffix or None) for this shape, the
        prefix checked against the eager pass on `tokens` and on tokens shifted by one."""
        from torch.fx.experimental.proxy_tensor import make_fx

        model, n = self.model, self.model.cfg.n_layers
        with torch.no_grad():
            calls = clean_pass(model, tokens, 0, full=True, logits=False).calls
            h0 = resid_pre(model, tokens, 0)
        last = n if full else layer

        def prefix(h):  # block inputs from `layer` on (and the final norm's output if full)
            with _autocast(tokens.device, dtype):
                ins = run_blocks(model, h, 0, calls[:last])
                return [*ins[layer:last], model.ln_final(ins[-1])] if full else [ins[-1]]

        with torch.no_grad():
            graph = Compiled(make_fx(prefix, tracing_mode="real")(h0), name="the clean pass")
        for toks in (tokens, tokens.roll(1, dims=1)):
            with torch.no_grad(), _autocast(toks.device, dtype):
                eager = clean_pass(model, toks, layer, full, skip, logits=False)
                got = _call(graph, resid_pre(model, toks, 0))
                want = [eager.resid, *eager.later_resids]
                if full:
                    want.append(eager.target.x.reshape(got[-1][:, skip:].shape))
                _check([(g[:, skip:], w) for g, w in zip(got, want, strict=True)], dtype)
        suffix = _Suffix(model, calls[layer:], layer, skip, dtype) if full else None
        return_freed_heap()
        return calls[layer:], graph, suffix


class _Suffix:
    """The patched suffix of one (batch shape, layer, skip, autocast dtype) as compiled
    graphs, one per dtype of the residual it is given (an SAE's output is bf16 under bf16
    autocast, a sum with an fp32 bias fp32: the bridge's casts differ), each traced on its
    first input and checked there against the eager suffix, forward and backward; the eager
    suffix, after one warning, for a dtype where that fails."""

    def __init__(self, model, calls, layer: int, skip: int, dtype: torch.dtype):
        self.model, self.calls, self.layer, self.skip, self.dtype = model, calls, layer, skip, dtype
        self.graphs: dict[torch.dtype, object] = {}
        self.recomputed = 0  # attention cores the last graph built recomputes in its backward

    def eager(self, resid: torch.Tensor, head: torch.Tensor, checkpoint: bool = False
              ) -> list[torch.Tensor]:
        clean = CleanPass(resid, None, [], None, self.layer, self.calls, self.skip, head)
        with _autocast(resid.device, self.dtype):
            final, later = run_to_final(self.model, resid, clean, checkpoint)
        return [final, *later]

    def __call__(self, resid: torch.Tensor, head: torch.Tensor) -> list[torch.Tensor]:
        """[final normalised residual, later resids] of the blocks from `layer` on, run on
        resid (batch, pos - skip, d_model) after the clean head (batch, skip, d_model)."""
        if resid.dtype not in self.graphs:
            try:
                self.graphs[resid.dtype] = self._build(resid, head)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 (any failure: the eager suffix is exact)
                _warn_eager(f"the patched suffix on {resid.dtype} residuals", e)
                self.graphs[resid.dtype] = None
        graph = self.graphs[resid.dtype]
        return self.eager(resid, head) if graph is None else _call(graph, resid, head)

    def _build(self, resid, head) -> Compiled:
        from torch.fx.experimental.proxy_tensor import make_fx

        # traced with grad on, as the training step calls it
        x = resid.detach().clone().requires_grad_()
        traced = make_fx(lambda r, h: self.eager(r, h), tracing_mode="real")(x, head)
        self.recomputed = _recompute_attention(traced)
        graph = Compiled(traced, name="the patched suffix")
        # One pass at a time, the eager one block by block (`checkpoint`), so that the
        # check's peak stays below a training step's: the eager suffix's activations for the
        # backward are 7 GiB at the GPT-2 shape, batch 4, layer 6.
        outs, grads = [], []
        for run in (lambda: _call(graph, x, head), lambda: self.eager(x, head, checkpoint=True)):
            out = run()  # the gradient of sum(out^2) / 2: each output its own cotangent
            (g,) = torch.autograd.grad(out, x, [o.detach() for o in out])
            outs.append([o.detach() for o in out])
            grads.append(g)
            del out, g
        _check(list(zip(outs[0], outs[1], strict=True)), self.dtype)
        err = float((grads[0] - grads[1]).float().norm() / grads[1].float().norm().clamp_min(1e-12))
        if not err <= GRAD_TOLERANCE[self.dtype]:
            raise TracedPassError(f"the compiled suffix's gradient differs from the eager one's "
                                  f"by {err:.3g} of its norm")
        return_freed_heap()
        return graph


def _recompute_attention(gm: torch.fx.GraphModule) -> int:
    """Rewrites a traced pass so that its backward recomputes each attention core (from the
    scores' matmul to the probabilities' matmul with the values: every tensor of (.., pos,
    pos)) instead of keeping it: `torch.utils.checkpoint` around each, which inductor's
    partitioner honours. The bridge computes attention itself, so each block's scores,
    probabilities and masks stay for the backward: compiled, 1.4 GiB of the 2.4 GiB that a
    GPT-2 shape e2e step keeps at batch 4 x 1,024 (eagerly about 6 tensors of batch * heads *
    pos^2 a block). Recomputing them costs one more scores' matmul and softmax a block.
    An attention whose inner tensors are used outside it is left as it is. Returns how many
    were rewritten."""
    g, n_done = gm.graph, 0
    g.eliminate_dead_code()
    for softmax in [n for n in g.nodes if n.target is torch.ops.aten._softmax.default]:
        qk, pv = _nearest_bmm(softmax, up=True), _nearest_bmm(softmax, up=False)
        if qk is None or pv is None:
            continue
        region = _reach(qk, up=False) & _reach(pv, up=True)
        if any(u not in region for n in region - {pv} for u in n.users):
            continue
        region = [n for n in g.nodes if n in region]  # in graph order
        inputs = list(dict.fromkeys(a for n in region for a in n.all_input_nodes
                                    if a not in region))
        sub, env = torch.fx.Graph(), {}
        for a in inputs:
            env[a] = sub.placeholder(a.name)
        for n in region:
            env[n] = sub.node_copy(n, env.__getitem__)
        sub.output(env[pv])
        name = f"_attention_core{n_done}"
        gm.add_submodule(name, torch.fx.GraphModule(gm, sub))
        with g.inserting_before(pv):
            core = g.call_function(torch.utils.checkpoint.checkpoint,
                                   (g.get_attr(name), *inputs), {"use_reentrant": False})
        pv.replace_all_uses_with(core)
        for n in reversed(region):
            g.erase_node(n)
        n_done += 1
    g.lint()
    gm.recompile()
    return n_done


def _nearest_bmm(node: torch.fx.Node, up: bool) -> torch.fx.Node | None:
    """The first batched matmul above (`up`) or below `node` in the graph, breadth first."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop(0)
        for m in (n.all_input_nodes if up else n.users):
            if m.target is torch.ops.aten.bmm.default:
                return m
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return None


def _reach(node: torch.fx.Node, up: bool) -> set[torch.fx.Node]:
    """`node` and every node above (`up`) or below it."""
    seen, todo = {node}, [node]
    while todo:
        n = todo.pop()
        for m in (n.all_input_nodes if up else n.users):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _check(pairs: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> None:
    """TracedPassError unless each (compiled, eager) pair agrees within `TOLERANCE`."""
    for a, b in pairs:
        a, b = a.detach().float(), b.detach().float()
        diff, scale = float((a - b).abs().max()), float(b.abs().max())
        if not diff <= TOLERANCE[dtype] * max(scale, 1e-6):
            raise TracedPassError(f"compiled pass differs from the eager one by {diff:.3g} "
                                  f"(scale {scale:.3g})")


def _warn_eager(what: str, e: Exception) -> None:
    warnings.warn(f"compiling {what} failed ({type(e).__name__}: "
                  f"{str(e).splitlines()[0][:200] if str(e) else ''}); running it eagerly",
                  stacklevel=3)


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
