"""Models as a user writes them: layers called straight from ``ops``, in the textbook order.

    python benchmarks/textbook.py               # 1 thread, then torch's default
    python benchmarks/textbook.py --quick --threads 1
    customnn bench --only textbook

The same model code runs twice, once with ``customnn.ops`` and once with
``torch.nn.functional`` (the ``F`` adapter below), on the same weights and batch; only the
layer calls differ. A step is forward, cross-entropy, backward (the optimizer would be the
same code on both sides, so it is left out). Rows:

- ``seed textbook``: the seed's net as the seed writes it, conv -> ReLU -> max-pool twice,
  then a linear layer; ``seed ours-order``: ReLU after the pool, as ``CustomCNN`` does;
- ``conv5``: the 5x5 convolution net of issue 25: conv 1->32 5x5 pad 2, ReLU, pool, conv 32->64
  5x5 pad 2, ReLU, pool, linear 3136->256, ReLU, linear 256->10 (batch 64);
- ``gpt``: a GPT of nanogpt-cpu's shape (B 12, T 64, C 128, 4 heads, 4 layers) written as
  nanoGPT writes its blocks: embeddings, pre-norm attention and GELU MLP, final norm, head.

``bench_textbook(threads, quick) -> list[dict]``; the timing is benchmarks/bench.py's ``compare``
(alternating, median of pairs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from customnn import ops  # noqa: E402

# PyTorch's layers under our names and argument orders (linear's weight is (in, out) in both:
# F.linear is given its transpose, a view, as the product x @ w either way).
TORCH = SimpleNamespace(
    conv2d=F.conv2d, relu=F.relu, max_pool2d=F.max_pool2d, flatten=lambda x: x.flatten(1),
    linear=lambda x, w, b=None: F.linear(x, w.T, b), cross_entropy=F.cross_entropy, gelu=F.gelu,
    embedding=F.embedding, layer_norm=lambda x, w, b: F.layer_norm(x, w.shape, w, b),
    attention=lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
)
CNN_BATCH = 64


def _uniform(g, shape, fan_in):
    bound = fan_in ** -0.5
    return (torch.rand(shape, generator=g) * 2 - 1) * bound


def seed_textbook(L, p, x, y, relu_first=True):
    """The seed's CNN: conv 1->6 5x5, ReLU, pool 2, conv 6->12 5x5, ReLU, pool 2, linear 192->10."""
    for i in (1, 2):
        x = L.conv2d(x, p[f"c{i}w"], p[f"c{i}b"])
        x = L.max_pool2d(L.relu(x), 2) if relu_first else L.relu(L.max_pool2d(x, 2))
    return L.cross_entropy(L.linear(L.flatten(x), p["fw"], p["fb"]), y)


def conv5(L, p, x, y, relu_first=True):
    """conv 1->32 5x5 pad 2, ReLU, pool, conv 32->64 5x5 pad 2, ReLU, pool, fc 3136->256, ReLU, fc 256->10."""
    for i in (1, 2):
        x = L.conv2d(x, p[f"c{i}w"], p[f"c{i}b"], padding=2)
        x = L.max_pool2d(L.relu(x), 2) if relu_first else L.relu(L.max_pool2d(x, 2))
    x = L.relu(L.linear(L.flatten(x), p["f1w"], p["f1b"]))
    return L.cross_entropy(L.linear(x, p["f2w"], p["f2b"]), y)


def gpt(L, p, idx, y, n_layer=4, n_head=4):
    """nanoGPT's forward, written from layer calls: (B, T) tokens -> loss."""
    B, T = idx.shape
    x = L.embedding(idx, p["wte"]) + L.embedding(torch.arange(T), p["wpe"])  # (B, T, C)
    C = x.shape[-1]
    for i in range(n_layer):
        h = L.layer_norm(x, p[f"{i}.ln1w"], p[f"{i}.ln1b"])
        q, k, v = L.linear(h, p[f"{i}.attnw"], p[f"{i}.attnb"]).split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        a = L.attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + L.linear(a, p[f"{i}.projw"], p[f"{i}.projb"])
        h = L.layer_norm(x, p[f"{i}.ln2w"], p[f"{i}.ln2b"])
        x = x + L.linear(L.gelu(L.linear(h, p[f"{i}.fcw"], p[f"{i}.fcb"])), p[f"{i}.fc2w"], p[f"{i}.fc2b"])
    x = L.layer_norm(x, p["lnfw"], p["lnfb"])
    return L.cross_entropy(L.linear(x, p["head"]).view(B * T, -1), y.view(-1))


def _params(kind, g):
    if kind.startswith("seed"):
        shapes = dict(c1w=((6, 1, 5, 5), 25), c1b=((6,), 25), c2w=((12, 6, 5, 5), 150), c2b=((12,), 150),
                      fw=((192, 10), 192), fb=((10,), 192))
    elif kind.startswith("conv5"):
        shapes = dict(c1w=((32, 1, 5, 5), 25), c1b=((32,), 25), c2w=((64, 32, 5, 5), 800), c2b=((64,), 800),
                      f1w=((3136, 256), 3136), f1b=((256,), 3136), f2w=((256, 10), 256), f2b=((10,), 256))
    else:
        V, T, C = 65, 64, 128
        shapes = dict(wte=((V, C), 1), wpe=((T, C), 1), lnfw=((C,), 0), lnfb=((C,), 0), head=((C, V), C))
        for i in range(4):
            shapes.update({f"{i}.ln1w": ((C,), 0), f"{i}.ln1b": ((C,), 0), f"{i}.ln2w": ((C,), 0),
                           f"{i}.ln2b": ((C,), 0), f"{i}.attnw": ((C, 3 * C), C), f"{i}.attnb": ((3 * C,), C),
                           f"{i}.projw": ((C, C), C), f"{i}.projb": ((C,), C), f"{i}.fcw": ((C, 4 * C), C),
                           f"{i}.fcb": ((4 * C,), C), f"{i}.fc2w": ((4 * C, C), 4 * C), f"{i}.fc2b": ((C,), 4 * C)})
    return {k: (torch.ones(s) + 0.1 * torch.randn(s, generator=g) if fan == 0 else _uniform(g, s, fan))
            for k, (s, fan) in shapes.items()}


MODELS = {  # name -> (forward, keyword arguments, size)
    "seed textbook": (seed_textbook, {}, "64x1x28x28, conv-ReLU-pool"),
    "seed ours-order": (seed_textbook, dict(relu_first=False), "64x1x28x28, conv-pool-ReLU"),
    "conv5 textbook": (conv5, {}, "64x1x28x28, 32/64 ch pad 2"),
    "conv5 ours-order": (conv5, dict(relu_first=False), "64x1x28x28, conv-pool-ReLU"),
    "gpt textbook": (gpt, {}, "B=12 T=64 C=128 L=4"),
}


def step_pair(name: str):
    """(our step, PyTorch's step) of model ``name``: forward, loss, backward on copies of one set
    of weights and one batch."""
    forward, kwargs, _ = MODELS[name]
    g = torch.Generator().manual_seed(0)
    base = _params(name, g)
    if name.startswith("gpt"):
        x = torch.randint(0, 65, (12, 64), generator=g)
        y = torch.randint(0, 65, (12, 64), generator=g)
    else:
        x = torch.randn(CNN_BATCH, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (CNN_BATCH,), generator=g)

    def make(L):
        p = {k: v.clone().requires_grad_(True) for k, v in base.items()}

        def step():
            for t in p.values():
                t.grad = None
            forward(L, p, x, y, **kwargs).backward()
        return step

    return make(ops), make(TORCH)


def bench_textbook(device, reps: int, sample_s: float, names=None) -> list[dict]:
    from bench import _progress, compare  # benchmarks/bench.py

    rows = []
    for name in names or MODELS:
        ours, theirs = step_pair(name)
        rows.append(dict(group="textbook", name=name, size=MODELS[name][2],
                         **compare(ours, theirs, device, reps, sample_s)))
        _progress(rows[-1])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", default="1,0")
    p.add_argument("--only", default=None, help="comma-separated model names")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else None
    old = torch.get_num_threads()
    for n in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(n or old)
        rows = bench_textbook(torch.device("cpu"), 5 if args.quick else 11, 0.05 if args.quick else 0.2, names)
        print(f"training step fwd+loss+bwd, ops vs F, {torch.get_num_threads()} thread(s)")
        for r in rows:
            print(f"  {r['name']:<18} {r['size']:<28} {r['custom_ms']:8.3f} {r['torch_ms']:8.3f} {r['ratio']:6.2f}"
                  f"  ({r['ratio_q1']:.2f}-{r['ratio_q3']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
