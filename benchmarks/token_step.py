"""One generated token with the KV cache: our GPT's cached step against the torch.nn twin's.

    python benchmarks/token_step.py --threads 1,0 [--block-sizes 64,128,256]
    customnn bench --only generate          # these rows come with the generate group

The twin (``customnn_ref.twins.TwinGPT``, same weights) has no cache of its own, so its cached
step is written here as a user of torch.nn would write it: the same preallocated key/value
buffers written in place, ``F.scaled_dot_product_attention`` over the filled part, nn.Linear,
nn.LayerNorm and F.gelu. Both run one position at a time under ``torch.no_grad()`` with the
cache half full (position ``block_size // 2``), alternating in one process; a sample is a run
of steps from that position (the cache length is put back after each step).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from customnn.models.gpt import GPT, GPTConfig  # noqa: E402
from customnn_ref.twins import gpt_twin  # noqa: E402


def twin_step(twin, ks, vs, idx, pos: int):
    """The twin's forward of one token at position ``pos`` with cached keys/values ks, vs (lists
    of (1, nh, block, hs)): logits (1, 1, V)."""
    x = twin.wte(idx) + (twin.wpe.weight[pos] if twin.wpe is not None else 0)  # (1, 1, C)
    B, T, C = x.shape
    for layer, block in enumerate(twin.blocks):
        attn = block.attn
        nh = attn.n_head
        q, k, v = attn.c_attn(block.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (1, nh, 1, hs)
        ks[layer][:, :, pos:pos + 1] = k
        vs[layer][:, :, pos:pos + 1] = v
        y = F.scaled_dot_product_attention(q, ks[layer][:, :, :pos + 1], vs[layer][:, :, :pos + 1])
        x = x + attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
        x = x + block.mlp(block.ln_2(x))
    return twin.lm_head(twin.ln_f(x))


def step_pair(config: GPTConfig, device):
    """(our cached step, the twin's), each a function of no arguments generating one token's logits."""
    model = GPT(config, seed=0).to(device).eval()
    twin = gpt_twin(model).eval()
    pos = config.block_size // 2
    idx = torch.randint(0, config.vocab_size, (1, pos), generator=torch.Generator().manual_seed(0)).to(device)
    cache = model.new_cache(1)
    hs = config.n_embd // config.n_head
    shape = (1, config.n_head, config.block_size, hs)
    ks = [torch.zeros(shape, device=device) for _ in range(config.n_layer)]
    vs = [torch.zeros(shape, device=device) for _ in range(config.n_layer)]
    with torch.no_grad():
        model(idx, cache=cache, last_only=True)  # prefill: the cache holds positions 0 .. pos-1
        for p in range(pos):  # the twin's cache, one position at a time
            twin_step(twin, ks, vs, idx[:, p:p + 1], p)
        token = idx[:, -1:]
        ours_logits = model(token, cache=cache, last_only=True)[0]
        cache.length = pos
        theirs_logits = twin_step(twin, ks, vs, token, pos)
    torch.testing.assert_close(ours_logits, theirs_logits, rtol=1e-4, atol=1e-4)

    def ours():
        with torch.no_grad():
            model(token, cache=cache, last_only=True)
            cache.length = pos

    def theirs():
        with torch.no_grad():
            twin_step(twin, ks, vs, token, pos)

    return ours, theirs


def bench_token_step(device, reps: int, sample_s: float, block_size: int | None = None) -> list[dict]:
    """The cached token step of the generate group's model (``GEN_CONFIG``), or of that model with
    another ``block_size`` (64: the nanogpt-cpu preset's, 128: the default preset's)."""
    from bench import GEN_CONFIG, _progress, compare  # benchmarks/bench.py

    config = GPTConfig(**{**GEN_CONFIG, "block_size": block_size or GEN_CONFIG["block_size"]}, pos="learned")
    ours, theirs = step_pair(config, device)
    row = dict(group="token", name="cached token step", size=f"at position {config.block_size // 2}, "
               f"L={config.n_layer} C={config.n_embd}", **compare(ours, theirs, device, reps, sample_s))
    _progress(row)
    return [row]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,0")
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--block-sizes", default="256",
                   help="comma-separated block sizes, the step at position block_size // 2 (64: nanogpt-cpu, "
                        "128: the default preset, 256: the generate group's)")
    args = p.parse_args(argv)
    old = torch.get_num_threads()
    for n in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(n or old)
        for block in (int(b) for b in args.block_sizes.split(",")):
            for r in bench_token_step(torch.device("cpu"), args.reps, 0.1, block):
                print(f"{torch.get_num_threads()} thread(s), {r['size']}: ours {r['custom_ms']:.3f} ms, twin "
                      f"{r['torch_ms']:.3f} ms, ratio {r['ratio']:.2f} ({r['ratio_q1']:.2f}-{r['ratio_q3']:.2f})",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
