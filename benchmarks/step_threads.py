"""Wall-clock time of one nanogpt-cpu training step, ours against the torch.nn twin, alternating.

Unlike `customnn bench` (1 thread, CPU time), this uses whatever threads torch has, to compare
with whole training runs:

    OMP_NUM_THREADS=2 python benchmarks/step_threads.py
"""
import statistics, time, torch
from customnn.core.runtime import tune_allocator; tune_allocator()
from customnn.models.gpt import GPT, GPTConfig
from customnn.optim import AdamW
from customnn_ref.twins import gpt_twin
torch.manual_seed(0)
m = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False), seed=0)
tw = gpt_twin(m)
o1 = AdamW(m.parameters(), lr=1e-4); o2 = torch.optim.AdamW(tw.parameters(), lr=1e-4)
idx = torch.randint(0, 65, (12, 64)); y = torch.randint(0, 65, (12, 64))
def step(model, opt):
    t = time.perf_counter(); _, loss = model(idx, y); loss.backward(); opt.step(); opt.zero_grad(); return time.perf_counter() - t
for _ in range(5): step(m, o1); step(tw, o2)
a, b = [], []
for _ in range(40): a.append(step(m, o1)); b.append(step(tw, o2))
print(f"threads {torch.get_num_threads()}: ours {statistics.median(a)*1e3:.1f} ms, twin {statistics.median(b)*1e3:.1f} ms, ratio {statistics.median([x/y for x, y in zip(a, b)]):.3f}")
