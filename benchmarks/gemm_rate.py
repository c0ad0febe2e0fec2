"""Floating-point rate of the matrix product that im2col convolution uses, against PyTorch's own
convolution (oneDNN) of the same arithmetic, at 1 thread:

    python benchmarks/gemm_rate.py

The first line is the default CNN's second convolution as our conv2d computes it (weight (64, 288)
times columns (288, 64*14*14)); the last is F.conv2d doing the same products. On an AMD CPU the
torch wheel's MKL takes its AVX2 path (MKL_CBWR does not change it), while oneDNN's kernels use
AVX-512: that gap, not the im2col copies, is most of what our convolutions lose there.
"""
import torch, time
torch.set_num_threads(1)
a = torch.randn(64, 288); b = torch.randn(288, 12544)
def bench(f, n=30):
    for _ in range(3): f()
    t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n
t = bench(lambda: a @ b)
print(f"mm 64x288x12544: {t*1e3:.2f} ms, {2*64*288*12544/t/1e9:.0f} GFLOP/s")
a2 = torch.randn(1024, 1024); b2 = torch.randn(1024, 1024)
t = bench(lambda: a2 @ b2, 10)
print(f"mm 1024^3: {t*1e3:.2f} ms, {2*1024**3/t/1e9:.0f} GFLOP/s")
x = torch.randn(64, 32, 14, 14); w = torch.randn(64, 32, 3, 3)
t = bench(lambda: torch.nn.functional.conv2d(x, w, padding=1))
print(f"F.conv2d fwd: {t*1e3:.2f} ms, {2*64*196*64*288/t/1e9:.0f} GFLOP/s")
print([l.strip() for l in torch.__config__.show().splitlines() if 'Math Kernel' in l or 'MKL-DNN' in l or 'CPU capability' in l])
