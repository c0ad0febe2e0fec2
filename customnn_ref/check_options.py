"""The configurations of ``customnn check``'s option rows: each layer's options beyond its
defaults (conv2d's groups and "same" padding, the pools' ceil mode, dilation, indices and
divisors, cross-entropy's class weights and probability targets, layer norm over two dims),
with unbatched and non-contiguous inputs. ``check.py`` puts each row beside its layer's own.

``option_trials(make, integers, Trial)`` returns name -> ``trials(ours, ref)``, as the
functions in ``check.py``'s ``_configs``: ``make(*shape)`` draws a random tensor in the
check's dtype and device, ``integers(low, high, shape)`` random indices.
"""

from __future__ import annotations


def option_trials(make, integers, Trial) -> dict:
    def conv_options(ours, ref):  # groups (depthwise too), "same" with an even kernel, unbatched
        return [Trial(ours, ref, [("x", make(2, 4, 9, 7), True), ("w", make(6, 2, 3, 2), True), ("b", make(6), True)],
                      dict(groups=2, padding="same", dilation=(2, 1))),
                Trial(ours, ref, [("x", make(3, 8, 8), True), ("w", make(6, 1, 3, 3), True), ("b", None, False)],
                      dict(groups=3, stride=2, padding="valid"))]

    def max_pool_options(ours, ref):  # ceil mode, dilation, indices, unbatched
        return [Trial(ours, ref, [("x", make(2, 3, 9, 8), True)],
                      dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2), ceil_mode=True, return_indices=True)),
                Trial(ours, ref, [("x", make(2, 7, 7), True)], dict(kernel_size=2, ceil_mode=True))]

    def avg_pool_options(ours, ref):  # ceil mode, count_include_pad=False, divisor_override, unbatched
        return [Trial(ours, ref, [("x", make(2, 3, 9, 8), True)],
                      dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
                Trial(ours, ref, [("x", make(3, 7, 7), True)], dict(kernel_size=2, ceil_mode=True, divisor_override=3))]

    def cross_entropy_weight(ours, ref):
        n, c = 9, 7
        ignored = integers(0, c, (n,))
        ignored[::3] = -100
        w = make(c).abs() + 0.1
        return [Trial(ours, ref, [("logits", make(n, c) * 3, True), ("target", ignored, False)],
                      dict(weight=w, label_smoothing=0.2)),
                Trial(ours, ref, [("logits", make(3, c, 4), True), ("target", integers(0, c, (3, 4)), False)],
                      dict(weight=w, reduction="none"))]

    def cross_entropy_probs(ours, ref):
        def probs(*shape):
            p = make(*shape).exp()
            return p / p.sum(1, keepdim=True)

        return [Trial(ours, ref, [("logits", make(9, 7) * 3, True), ("target", probs(9, 7), True)],
                      dict(label_smoothing=0.1)),
                Trial(ours, ref, [("logits", make(3, 5, 4), True), ("target", probs(3, 5, 4), True)],
                      dict(reduction="sum", weight=make(5).abs() + 0.1))]

    def layer_norm_dims(ours, ref):  # over the last two dims: from the weight's shape, or normalized_shape
        return [Trial(ours, ref, [("x", make(4, 3, 5) * 2 + 1, True), ("w", make(3, 5), True), ("b", make(3, 5), True)]),
                Trial(ours, ref, [("x", make(5, 3, 4).transpose(0, 2), True), ("w", None, False), ("b", None, False)],
                      dict(normalized_shape=(3, 5)))]

    return {"conv_options": conv_options, "max_pool_options": max_pool_options, "avg_pool_options": avg_pool_options,
            "cross_entropy_weight": cross_entropy_weight, "cross_entropy_probs": cross_entropy_probs,
            "layer_norm_dims": layer_norm_dims}
