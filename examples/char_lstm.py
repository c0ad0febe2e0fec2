"""A character-level LSTM language model, built from ``customnn.ops``: a text model of your own.

The LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000) reads the
characters one at a time; at each position t, from the embedded character x_t and the last
state (h, c)::

    i, f, g, o = split(x_t W_x + h W_h + b)             four gates, (B, H) each
    c = sigmoid(f) * c + sigmoid(i) * tanh(g)          the cell remembers
    h = sigmoid(o) * tanh(c)                            and shows part of itself
    logits_t = h W_out + b_out                          (B, V): the next character

The cell is composed of ops (``linear``, ``embedding``, ``cross_entropy``) and elementwise
math, so autograd chains their backwards; the loop over positions is plain Python. The text
task gives it ``vocab_size`` (and ``block_size``, which it does not need: it takes any length)::

    customnn train gpt --preset tiny --model examples/char_lstm.py:CharLSTM --model-arg hidden=64
    customnn generate runs/gpt-... --model examples/char_lstm.py:CharLSTM --prompt "ROMEO:"
"""

import torch

import customnn
from customnn import init, ops


class CharLSTM(customnn.Module):
    """``forward(idx, targets=None) -> (logits, loss)``: idx (B, T) int64 -> logits (B, T, V)."""

    def __init__(self, vocab_size: int, hidden: int = 128, embed: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)  # the task passes --seed
        H = hidden
        self.hidden = H
        self.wte = torch.randn(vocab_size, embed, generator=g).mul_(0.1).requires_grad_()  # (V, E)
        self.w_x = init.fan_in_uniform((embed, 4 * H), H, g)  # (E, 4H): input to the four gates
        self.w_h = init.fan_in_uniform((H, 4 * H), H, g)  # (H, 4H): last output to the gates
        self.b = init.zeros((4 * H,))
        with torch.no_grad():
            self.b[H:2 * H] = 1.0  # the forget gate starts open: the cell remembers from the start
        self.w_out = init.fan_in_uniform((H, vocab_size), H, g)  # (H, V)
        self.b_out = init.zeros((vocab_size,))

    def forward(self, idx, targets=None):
        B, T = idx.shape
        H = self.hidden
        gates_x = ops.linear(ops.embedding(idx, self.wte), self.w_x, self.b)  # (B, T, 4H): all positions at once
        h = gates_x.new_zeros(B, H)  # (B, H)
        c = gates_x.new_zeros(B, H)
        outputs = []
        for t in range(T):
            gates = gates_x[:, t] + ops.linear(h, self.w_h)  # (B, 4H)
            i, f, g, o = gates.split(H, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        logits = ops.linear(torch.stack(outputs, dim=1), self.w_out, self.b_out)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = ops.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss
