"""The project's dense SAE step against a sparse-kernel prototype, at a planted L0: the
measurement behind the decision to keep the SAE dense (docs/performance.md).

    python benchmarks/bench_sparse_sae.py [tokens=1024 d_in=128 n_dict=2048 l0=[20,50,100]]

One step = encode, decode, per-element MSE + L1/d_in, backward. The prototype computes the
same values and gradients (checked here) with CSR products: decode `csr @ D^T`, the codes'
gradient only at the active entries (`sparse.sampled_addmm`), the decoder and encoder weight
gradients as `csr^T @ dense`. The encoder's forward product stays dense.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from e2e.sae import unit_norm_columns
from jobs import cli

warnings.filterwarnings("ignore", category=UserWarning)  # "sparse CSR support is in beta"


class _CSRSAE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_enc, b_enc, w_dec, inv_norm, b_dec):
        c = torch.relu(torch.addmm(b_enc, x, w_enc.T))
        scaled = (c * inv_norm).to_sparse_csr()  # codes times 1/||column||: D c = W (c/||W||)
        ctx.save_for_backward(x, w_dec, inv_norm, scaled, c)
        return scaled @ w_dec.T + b_dec, c

    @staticmethod
    def backward(ctx, g_x_hat, g_c):
        x, w_dec, inv_norm, scaled, c = ctx.saved_tensors
        crow, col = scaled.crow_indices(), scaled.col_indices()
        rows = torch.repeat_interleave(torch.arange(x.shape[0]), crow.diff())
        g_scaled = torch.sparse.sampled_addmm(scaled, g_x_hat, w_dec, beta=0.0).values()
        g_pre = g_scaled * inv_norm[col] + g_c[rows, col]  # ReLU: only active entries
        g_inv = torch.zeros_like(inv_norm).index_add_(0, col, g_scaled * c[rows, col])
        g_pre_csr = torch.sparse_csr_tensor(crow, col, g_pre, c.shape)
        g_b_enc = torch.zeros_like(inv_norm).index_add_(0, col, g_pre)
        return (None, g_pre_csr.t() @ x, g_b_enc, (scaled.t() @ g_x_hat).T, g_inv,
                g_x_hat.sum(0))


@dataclass(frozen=True)
class Options:
    tokens: int = 1024
    d_in: int = 128
    n_dict: int = 2048
    l0: tuple[int, ...] = (20, 50, 100)  # planted L0 values
    reps: int = 5


def main(*tokens: str) -> None:
    args = cli.parse_options(tokens, Options)
    torch.manual_seed(0)
    n, d = args.n_dict, args.d_in
    x = torch.randn(args.tokens, d)
    w_enc = (torch.randn(n, d) / d**0.5).requires_grad_()
    w_dec = torch.randn(d, n, requires_grad=True)
    b_dec = torch.zeros(d, requires_grad=True)
    params = None

    def dense(b_enc):  # the project's SAE forward
        c = F.relu(F.linear(x, w_enc, b_enc))
        return F.linear(c, unit_norm_columns(w_dec), b_dec), c

    def sparse(b_enc):
        inv = w_dec.norm(dim=0).reciprocal()
        return _CSRSAE.apply(x, w_enc, b_enc, w_dec, inv, b_dec)

    def step(f, b_enc):
        x_hat, c = f(b_enc)
        loss = F.mse_loss(x_hat, x) + c.sum(-1).mean() / d
        grads = torch.autograd.grad(loss, params)
        return loss.detach(), grads, float((c > 0).sum(-1).float().mean())

    def timed(f, b_enc) -> float:
        step(f, b_enc)
        t0 = time.perf_counter()
        for _ in range(args.reps):
            step(f, b_enc)
        return (time.perf_counter() - t0) / args.reps * 1e3

    print(f"{args.tokens} tokens, d_in {d}, n_dict {n}, {torch.get_num_threads()} threads")
    for target in args.l0:
        with torch.no_grad():  # a bias that leaves about `target` codes active per token
            thr = (x @ w_enc.T).kthvalue(n - target, dim=1).values.median()
        b_enc = torch.full((n,), -float(thr), requires_grad=True)
        params = (w_enc, b_enc, w_dec, b_dec)
        (la, ga, l0), (lb, gb, _) = step(dense, b_enc), step(sparse, b_enc)
        err = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(ga, gb, strict=True))
        td, ts = timed(dense, b_enc), timed(sparse, b_enc)
        print(f"L0 {l0:7.1f}: dense {td:8.1f} ms  sparse {ts:8.1f} ms  sparse/dense "
              f"{ts / td:5.2f}  (loss diff {float((la - lb).abs()):.1e}, grad rel diff {err:.1e})")


if __name__ == "__main__":
    cli.run(main)
