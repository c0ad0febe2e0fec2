"""Convolution variants for issue 25, timed against F.conv2d (forward, forward + backward).

    python benchmarks/conv_probe.py --threads 1,2

Variants:
- ``ops``: customnn.ops.conv2d as it stands;
- ``cl``: channels-last im2col: the padded input in (N, Hp, Wp, C) order, its windows copied to
  (n*L, kh*kw*C) rows (each run of C values contiguous), one GEMM with the weight as
  (kh*kw*C, O) per chunk of the batch; dw the transposed GEMM; dx (stride 1) the convolution
  of dout, padded by k-1-p, with the flipped, transposed weight, the same channels-last path;
- ``cl-8M``: the same with 8 MiB column chunks instead of 2 MiB;
- ``bmm``: a direct convolution as kh*kw batched small matrix products, one per kernel
  offset, accumulated (no im2col copy): out_cl += x_cl[offset view] @ W[:, :, a, b]^T.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from customnn import ops  # noqa: E402


def _cl_forward(x_cl, w, padding, chunk_bytes):
    """x_cl (N, H, W, C) channels-last values; w (O, C, kh, kw) -> (N, Ho, Wo, O) contiguous."""
    N, H, W, C = x_cl.shape
    O, _, kh, kw = w.shape
    ph, pw = padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    if ph or pw:
        xp = x_cl.new_zeros((N, Hp, Wp, C))
        xp[:, ph:ph + H, pw:pw + W] = x_cl
    else:
        xp = x_cl.contiguous()
    K = kh * kw * C
    wm = w.permute(2, 3, 1, 0).reshape(K, O)  # (K, O) rows (kh, kw, C)
    out = x_cl.new_empty((N, Ho, Wo, O))
    sN, sH, sW, sC = xp.stride()
    step = max(1, min(N, chunk_bytes // (Ho * Wo * K * x_cl.element_size())))
    for i in range(0, N, step):
        n = min(step, N - i)
        win = xp[i:i + n].as_strided((n, Ho, Wo, kh, kw, C), (sN, sH, sW, sH, sW, sC))
        cols = win.reshape(n * Ho * Wo, K)
        torch.mm(cols, wm, out=out[i:i + n].view(n * Ho * Wo, O))
    return out, xp


def _cl_dw(xp, dout_cl, kh, kw, chunk_bytes):
    N, Hp, Wp, C = xp.shape
    _, Ho, Wo, O = dout_cl.shape
    K = kh * kw * C
    dw = xp.new_zeros((O, K))
    sN, sH, sW, sC = xp.stride()
    step = max(1, min(N, chunk_bytes // (Ho * Wo * K * xp.element_size())))
    for i in range(0, N, step):
        n = min(step, N - i)
        cols = xp[i:i + n].as_strided((n, Ho, Wo, kh, kw, C), (sN, sH, sW, sH, sW, sC)).reshape(n * Ho * Wo, K)
        dw.addmm_(dout_cl[i:i + n].reshape(n * Ho * Wo, O).T, cols)
    return dw.view(O, kh, kw, C).permute(0, 3, 1, 2)


class ConvCL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, padding, chunk):
        x_cl = x.permute(0, 2, 3, 1)
        out, xp = _cl_forward(x_cl, w, padding, chunk)
        if b is not None:
            out += b
        ctx.save_for_backward(xp, w)
        ctx.padding, ctx.chunk = padding, chunk
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, dout):
        xp, w = ctx.saved_tensors
        O, C, kh, kw = w.shape
        ph, pw = ctx.padding
        dout_cl = dout.permute(0, 2, 3, 1).contiguous()  # (N, Ho, Wo, O)
        db = dout_cl.sum((0, 1, 2))
        dw = _cl_dw(xp, dout_cl, kh, kw, ctx.chunk)
        wt = w.flip(2, 3).transpose(0, 1)  # (C, O, kh, kw)
        dxp, _ = _cl_forward(dout_cl, wt, (kh - 1, kw - 1), ctx.chunk)  # (N, Hp, Wp, C)
        N, Hp, Wp, _ = dxp.shape
        dx = dxp[:, ph:Hp - ph, pw:Wp - pw].permute(0, 3, 1, 2)
        return dx, dw, db, None, None


class ConvBMM(torch.autograd.Function):
    """Direct convolution: one (N*L, C) @ (C, O) product per kernel offset, accumulated."""
    @staticmethod
    def forward(ctx, x, w, b, padding, chunk):
        N, C, H, W = x.shape
        O, _, kh, kw = w.shape
        ph, pw = padding
        xp = x.new_zeros((N, H + 2 * ph, W + 2 * pw, C))
        xp[:, ph:ph + H, pw:pw + W] = x.permute(0, 2, 3, 1)
        Ho, Wo = H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
        out = b.expand(N, Ho, Wo, O).contiguous()
        o2 = out.view(N * Ho * Wo, O)
        for a in range(kh):
            for c in range(kw):
                v = xp[:, a:a + Ho, c:c + Wo].reshape(N * Ho * Wo, C)
                o2.addmm_(v, w[:, :, a, c].T)
        return out.permute(0, 3, 1, 2)  # forward only: timed against F's forward


def time_pair(fns, reps, calls):
    out = {k: [] for k in fns}
    for r in range(reps):
        for k, f in (fns.items() if r % 2 == 0 else list(fns.items())[::-1]):
            f()
            t = time.perf_counter()
            for _ in range(calls):
                f()
            out[k].append((time.perf_counter() - t) / calls * 1e3)
    return {k: statistics.median(v) for k, v in out.items()}


CASES = [
    ("conv5 conv2 32->64 5x5 p2", (64, 32, 14, 14), (64, 32, 5, 5), 2),
    ("conv5 conv1 1->32 5x5 p2", (64, 1, 28, 28), (32, 1, 5, 5), 2),
    ("seed conv2 6->12 5x5", (64, 6, 12, 12), (12, 6, 5, 5), 0),
    ("seed conv1 1->6 5x5", (64, 1, 28, 28), (6, 1, 5, 5), 0),
    ("default conv2 32->64 3x3 p1", (64, 32, 14, 14), (64, 32, 3, 3), 1),
]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    for n in map(int, args.threads.split(",")):
        torch.set_num_threads(n)
        print(f"threads {n}; ms per call, median of {args.reps} alternating; ratio to F")
        for name, xs, ws, pad in CASES:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(xs, generator=g).requires_grad_()
            w = (torch.randn(ws, generator=g) * 0.1).requires_grad_()
            b = torch.randn(ws[0], generator=g).requires_grad_()
            dout = torch.randn(F.conv2d(x, w, b, padding=pad).shape, generator=g)
            ref = F.conv2d(x, w, b, padding=pad)
            variants = {"F": lambda: F.conv2d(x, w, b, padding=pad),
                        "ops": lambda: ops.conv2d(x, w, b, padding=pad),
                        "cl": lambda: ConvCL.apply(x, w, b, (pad, pad), 2 * 2**20),
                        "cl-8M": lambda: ConvCL.apply(x, w, b, (pad, pad), 8 * 2**20)}
            with torch.no_grad():
                variants["bmm"] = lambda: ConvBMM.forward(None, x, w, b, (pad, pad), 0)
                for k in ("cl", "bmm"):
                    got = variants[k]() if k == "bmm" else ConvCL.forward(type("C", (), {"save_for_backward": lambda *a: None})(), x, w, b, (pad, pad), 2**21)
                    assert torch.allclose(got, ref, atol=1e-4), k
            # gradients of cl against F
            xa = x.detach().clone().requires_grad_(); wa = w.detach().clone().requires_grad_(); ba = b.detach().clone().requires_grad_()
            ConvCL.apply(xa, wa, ba, (pad, pad), 2**21).backward(dout)
            F.conv2d(x, w, b, padding=pad).backward(dout)
            for a_, b_ in ((xa, x), (wa, w), (ba, b)):
                err = ((a_.grad - b_.grad).abs().max() / b_.grad.abs().max()).item()
                assert err < 1e-4, (name, err)
            calls = 3
            with torch.no_grad():
                fw = time_pair(variants, args.reps, calls)

            def fb(f):
                def run():
                    for t in (x, w, b):
                        t.grad = None
                    f().backward(dout)
                return run
            fbt = time_pair({k: fb(v) for k, v in variants.items() if k != "bmm"}, args.reps, calls)
            print(f"  {name:<28} fwd  " + "  ".join(f"{k} {v:7.3f} ({v / fw['F']:.2f})" for k, v in fw.items()))
            print(f"  {'':<28} f+b  " + "  ".join(f"{k} {v:7.3f} ({v / fbt['F']:.2f})" for k, v in fbt.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
