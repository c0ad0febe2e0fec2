"""The GPT's memory: how many bytes a step of a GPT of given sizes needs, before one is built.

``GPT.memory_estimate`` (``customnn/models/gpt.py``) answers from these, so that a request
such as ``--n-embd 8192 --block-size 65536`` is refused in one line by
``customnn.core.memory.check_memory`` before anything is allocated.
"""

from __future__ import annotations

FLOAT = 4  # bytes of a float32


def gpt_parameters(vocab_size: int, block_size: int, n_layer: int, n_embd: int, bias: bool = False,
                   tie_weights: bool = True, position_table: bool = True) -> int:
    """The number of parameters of a GPT (``customnn/models/gpt.py``) of these sizes (a position
    table of ``block_size`` rows unless the positions are rotary)."""
    c = n_embd
    per_block = 12 * c * c + (13 * c if bias else 0) + 4 * c  # attention 4C^2, MLP 8C^2; two layer norms
    head = 0 if tie_weights else vocab_size * c
    return vocab_size * c + (block_size * c if position_table else 0) + n_layer * per_block + 2 * c + head


def gpt_bytes(vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, batch_size: int,
              training: bool = True, dropout: float = 0.0, bias: bool = False, tie_weights: bool = True,
              position_table: bool = True, element_bytes: int = FLOAT) -> int:
    """A lower bound on the bytes a GPT step needs: weights (and, training, their gradients and
    AdamW's two moments), the activations a step keeps (about 16 values of width C per position
    and block for backward, the logits and their gradient) and, with dropout, the dense (T, T)
    attention weights and mask of every head (without dropout the attention is tiled, linear in T)."""
    p = gpt_parameters(vocab_size, block_size, n_layer, n_embd, bias, tie_weights, position_table)
    positions = batch_size * block_size
    if training:
        acts = n_layer * 16 * positions * n_embd + 3 * positions * vocab_size
        if dropout > 0:
            acts += n_layer * 2 * batch_size * n_head * block_size * block_size
        return element_bytes * (4 * p + acts)
    acts = 6 * positions * n_embd + 2 * positions * vocab_size  # a forward: a few tensors alive at a time
    return element_bytes * (p + acts)
