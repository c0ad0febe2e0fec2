"""``torch.compile(mode="max-autotune")`` over ``customnn.ops.conv2d`` (forward + backward), against
the eager op and ``F.conv2d``, alternating in one process (issue 25's idea: inductor's C++ GEMM
templates use AVX-512 on this CPU where MKL's float32 GEMM runs its AVX2 path).

    python benchmarks/conv_autotune.py 1      # threads
"""
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from customnn import ops  # noqa: E402
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
import torch._inductor.config as ic  # noqa: E402

ic.max_autotune_gemm_backends = "CPP,ATEN"  # inductor's C++ GEMM templates, and ATen's kernels to choose from
shapes = {"conv5 conv2 32->64 5x5 p2": ((64, 32, 14, 14), (64, 32, 5, 5), 2),
          "seed conv2 6->12 5x5": ((64, 6, 12, 12), (12, 6, 5, 5), 0)}
for name, (xs, ws, p) in shapes.items():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(xs, generator=g).requires_grad_()
    w = (torch.randn(ws, generator=g) * 0.1).requires_grad_()
    b = torch.zeros(ws[0]).requires_grad_()
    dout = torch.randn(F.conv2d(x, w, b, padding=p).shape, generator=g)
    def step(fn):
        def run():
            out = fn(x, w, b)
            gx, gw, gb = torch.autograd.grad(out, (x, w, b), dout)
            return out, gw
        return run
    eager = step(lambda x, w, b: ops.conv2d(x, w, b, padding=p))
    ref = step(lambda x, w, b: F.conv2d(x, w, b, padding=p))
    t0 = time.perf_counter()
    comp_fn = torch.compile(lambda x, w, b: ops.conv2d(x, w, b, padding=p), mode="max-autotune", dynamic=False)
    comp = step(comp_fn)
    o1, g1 = comp(); comp()
    compile_s = time.perf_counter() - t0
    o2, g2 = ref()
    err = max((o1 - o2).abs().max().item(), (g1 - g2).abs().max().item())
    times = {"F": [], "ops": [], "ops max-autotune": []}
    for r in range(7):
        for k, f in (("F", ref), ("ops", eager), ("ops max-autotune", comp)):
            t = time.perf_counter(); f(); f(); f(); times[k].append((time.perf_counter() - t) / 3 * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{name} threads {torch.get_num_threads()}: fwd+bwd ms " + ", ".join(f"{k} {v:.2f} ({v / med['F']:.2f})" for k, v in med.items())
          + f"; compile {compile_s:.0f} s; max diff vs F {err:.2e}", flush=True)
