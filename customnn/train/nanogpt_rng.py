"""nanoGPT's random stream, so that ``--preset nanogpt-cpu`` replays nanoGPT's own run.

nanoGPT's ``train.py`` calls ``torch.manual_seed(seed)`` once and draws everything from that one
generator, in this order:

1. building the model: ``GPT(config)`` constructs torch.nn layers whose default initialisers
   draw (``nn.Embedding``: normal(0, 1); ``nn.Linear``: a kaiming-uniform weight, then a
   uniform bias). Every one of these values is overwritten a moment later, but the draws
   still move the generator;
2. ``self.apply(self._init_weights)``: every Embedding and Linear weight, in module order,
   redrawn normal(0, 0.02). The tied token embedding is reached twice, as ``wte`` and as
   ``lm_head``, and the second draw is the one that stays;
3. every ``c_proj.weight`` (the projections into the residual stream) redrawn
   normal(0, 0.02 / sqrt(2 n_layer)), in parameter order;
4. the first training batch;
5. then, step after step: the evaluation's batches when the step is an evaluation step
   (``eval_iters`` from the train split, then ``eval_iters`` from val), the training step,
   and the next training batch, drawn while that step runs.

``init_like_nanogpt_`` does 1-3 on our ``GPT`` with a ``torch.Generator``. The same calls
(``uniform_``, ``normal_``) on float32 tensors of the same shapes consume a generator exactly as
torch.nn's do, and ``torch.Generator().manual_seed(s)`` is the same Mersenne twister stream as
``torch.manual_seed(s)``, so the weights come out bit for bit nanoGPT's (transposed into our
(in, out) layout). The trainer does 4-5 when ``GPTTrainConfig.nanogpt_rng`` is set: one
generator for the initialisation, the training batches and the evaluation batches.

With the same seed, the same settings and dropout 0, a run then prints nanoGPT's evaluation
lines (to float rounding; checked against a torch.nn re-creation of nanoGPT's loop,
``customnn_ref.nanogpt``). Dropout masks are not replayed: nanoGPT's come from
``torch.nn.functional.dropout`` in the middle of the same stream.
"""

from __future__ import annotations

import math

import torch

from customnn.models.gpt import GPT


def init_like_nanogpt_(model: GPT, generator: torch.Generator) -> None:
    """Redraw ``model``'s weights as nanoGPT's ``GPT(config)`` draws them from ``generator``.

    Biases and layer-norm parameters keep their zeros and ones (nanoGPT's too). The generator
    ends where nanoGPT's global generator is after building the model.
    """
    C, V, T, L = model.config.n_embd, model.config.vocab_size, model.config.block_size, model.config.n_layer

    def normal(shape, std=1.0) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=generator)

    def uniform(shape) -> torch.Tensor:  # kaiming_uniform_ and the bias init are uniform_ draws
        return torch.empty(shape, dtype=torch.float32).uniform_(generator=generator)

    def linears(block):  # in the order nanoGPT builds them; torch.nn's weight is our weight.T, (out, in)
        return block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj

    # 1) construction: wte, wpe, the blocks (layer norms draw nothing), lm_head (no bias)
    normal((V, C))
    normal((T, C))
    for block in model.blocks:
        for layer in linears(block):
            uniform(layer.weight.T.shape)
            if layer.bias is not None:
                uniform(layer.bias.shape)
    uniform((V, C))

    with torch.no_grad():
        # 2) _init_weights in module order
        model.wte.copy_(normal((V, C), 0.02))  # (V, C)
        model.wpe.copy_(normal((T, C), 0.02))  # (block_size, C)
        for block in model.blocks:
            for layer in linears(block):
                layer.weight.copy_(normal(layer.weight.T.shape, 0.02).T)  # drawn (out, in), kept (in, out)
        head = normal((V, C), 0.02)  # lm_head: with tied weights this replaces wte's draw
        if model.lm_head is None:
            model.wte.copy_(head)
        else:
            model.lm_head.copy_(head.T)  # (C, V)
        # 3) the residual projections, scaled down
        std = 0.02 / math.sqrt(2 * L)
        for block in model.blocks:
            for layer in (block.attn.c_proj, block.mlp.c_proj):
                layer.weight.copy_(normal(layer.weight.T.shape, std).T)
