"""Would Winograd's F(2x2, 3x3) convolution close the gap to oneDNN? A probe, at 1 thread and at
torch's default thread count, on the default CNN's two widest 3x3 convolutions (stride 1,
padding 1), forward only.

Winograd (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) computes
each 2x2 output tile from a 4x4 input tile with 16 products instead of 36: V = B^T d B per
input tile, U = G g G^T per filter, M = U V as 16 batched matrix products over (K, C) x (C,
tiles), Y = A^T M A. Printed: the time of that probe written in tensor operations, of its 16
batched products alone, of our im2col convolution (``ops.conv2d``) and its one matrix product
alone, and of ``F.conv2d`` (oneDNN), medians of 30 alternating samples.

    python benchmarks/winograd_probe.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from customnn import ops  # noqa: E402

B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))  # input transform (4, 4)
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))  # filter transform (4, 3)


def winograd_conv3x3(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W), w (K, C, 3, 3) -> (N, K, H, W): stride 1, padding 1."""
    N, C, H, W = x.shape
    K = w.shape[0]
    tH, tW = (H + 1) // 2, (W + 1) // 2  # 2x2 output tiles
    xp = x.new_zeros(N, C, 2 * tH + 2, 2 * tW + 2)  # padding 1, and up to a whole tile
    xp[:, :, 1:H + 1, 1:W + 1] = x
    s = xp.stride()
    d = xp.as_strided((N, C, tH, tW, 4, 4), (s[0], s[1], 2 * s[2], 2 * s[3], s[2], s[3]))  # input tiles
    bt = x.new_tensor(B_T)
    v = torch.einsum("ai,nchwij,bj->abcnhw", bt, d, bt).reshape(16, C, N * tH * tW)  # (16, C, P)
    g = w.new_tensor(G)
    u = torch.einsum("ai,kcij,bj->abkc", g, w, g).reshape(16, K, C)  # (16, K, C)
    m = torch.bmm(u, v).view(4, 4, K, N, tH, tW)  # (16, K, P): the products
    r0, r1 = m[0] + m[1] + m[2], m[1] - m[2] - m[3]  # A^T M: (4, K, N, tH, tW) each
    y = torch.stack([torch.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]], -1) for r in (r0, r1)], -3)
    return y.reshape(K, N, 2 * tH, 2 * tW)[:, :, :H, :W].permute(1, 0, 2, 3)  # (N, K, H, W)


def median_ms(fns: dict, n: int = 30) -> dict:
    times = {k: [] for k in fns}
    for _ in range(n):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        probe(threads)


def probe(threads: int) -> None:
    torch.manual_seed(0)
    print(f"3x3 convolution forward, batch 64, {threads} thread(s), ms (median of 30)")
    for C, K, H in ((32, 64, 14), (64, 128, 7)):
        x, w = torch.randn(64, C, H, H), torch.randn(K, C, 3, 3)
        err = (winograd_conv3x3(x, w) - F.conv2d(x, w, padding=1)).abs().max().item()
        P = 64 * ((H + 1) // 2) ** 2
        u, v = torch.randn(16, K, C), torch.randn(16, C, P)
        wm, cols = torch.randn(K, C * 9), torch.randn(C * 9, 64 * H * H)
        t = median_ms({"winograd": lambda: winograd_conv3x3(x, w), "its 16 products": lambda: torch.bmm(u, v),
                       "im2col (ops.conv2d)": lambda: ops.conv2d(x, w, padding=1),
                       "its one product": lambda: torch.mm(wm, cols), "F.conv2d": lambda: F.conv2d(x, w, padding=1)})
        print(f"  {C:3d} -> {K:3d} channels, {H}x{H}: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
              + f"; winograd max error {err:.1e}")


if __name__ == "__main__":
    main()
