"""Training-time augmentation of image batches, written by hand: random whole-pixel shifts, and
random affine transforms (rotation, scaling, translation) resampled bilinearly.

Small affine distortions of the training digits are how Simard, Steinkraus & Platt train their
MNIST networks ("Best practices for convolutional neural networks applied to visual document
analysis", ICDAR 2003, section 2). Every output pixel is read from the point it came from, the
inverse mapping (the sampling grid of Jaderberg et al. 2015, "Spatial Transformer Networks",
sections 3.2-3.3), so every output pixel gets exactly one value and none is left empty.

Coordinates. Pixel (i, j), row i and column j, is centred at the point x = j, y = i (y points
down, as the image is displayed); the image's centre is c = ((W - 1) / 2, (H - 1) / 2), (13.5,
13.5) for MNIST. An image is rotated by theta (counterclockwise as displayed) and scaled by s
about c, then translated by t = (tx, ty) pixels, so that its point q goes to

    p = c + s R(theta) (q - c) + t,        R(theta) = [[ cos, sin],     (x right, y down)
                                                       [-sin, cos]]

and output pixel p is read from the source point (the inverse mapping)

    q = c + R(-theta) (p - c - t) / s,     R(-theta) = R(theta)^T = [[cos, -sin], [sin, cos]].

Pixel centres sit on integer points and c on a half-integer, so a rotation by 90 degrees takes
pixel centres to pixel centres: ``affine_warp`` at 90 degrees is ``torch.rot90(x, 1, dims=(2,
3))`` of a square image, up to the rounding of cos(90 degrees) ~ 6e-17.

Bilinear resampling. With x0 = floor(qx), y0 = floor(qy), a = qx - x0, b = qy - y0:

    out(p) = (1-b)(1-a) I(y0, x0) + (1-b) a I(y0, x0+1) + b (1-a) I(y0+1, x0) + b a I(y0+1, x0+1)

where I is the input extended by ``fill`` outside the image: the background, which for
normalised MNIST is the normalised black pixel (0 - MEAN) / STD, not 0. Identity parameters give
a = b = 0 and return the input exactly; integer translations alone are exact whole-pixel shifts.

Dimension letters: N images, C channels, H rows, W columns.

    g = torch.Generator().manual_seed(0)
    xb = augment(xb, g, shift=2, rotate=10.0, scale=0.1)   # xb (N, 1, 28, 28), normalised
"""

from __future__ import annotations

import math

import torch

from customnn.data.mnist import MEAN, STD

BACKGROUND = (0.0 - MEAN) / STD  # a black MNIST pixel, normalised: what lies outside the image


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator,
                 fill: float = BACKGROUND, rows: slice | None = None) -> torch.Tensor:
    """Move each image by a whole number of pixels in [-max_shift, max_shift] in x and y, filling
    with the background.

    x (N, C, H, W); the offsets are drawn on the CPU from ``generator`` (so they are the same on
    every device) and applied as one gather on x's device. Output pixel (i, j) of image n is input
    pixel (i + dy[n] - max_shift, j + dx[n] - max_shift): the translation t = (max_shift - dx[n],
    max_shift - dy[n]) of ``affine_warp``.
    """
    s = max_shift
    dy, dx = torch.randint(0, 2 * s + 1, (2, x.shape[0]), generator=generator).to(x.device)  # (N,), (N,)
    if rows is not None:  # only these images, with the offsets they draw in the whole batch
        x, dy, dx = x[rows], dy[rows], dx[rows]
    N, C, H, W = x.shape
    xp = torch.full((N, C, H + 2 * s, W + 2 * s), fill, dtype=x.dtype, device=x.device)
    xp[:, :, s:s + H, s:s + W] = x
    src_rows = (torch.arange(H, device=x.device) + dy[:, None])[:, None, :, None]  # (N, 1, H, 1)
    src_cols = (torch.arange(W, device=x.device) + dx[:, None])[:, None, None, :]  # (N, 1, 1, W)
    images = torch.arange(N, device=x.device)[:, None, None, None]  # (N, 1, 1, 1)
    channels = torch.arange(C, device=x.device)[None, :, None, None]  # (1, C, 1, 1)
    return xp[images, channels, src_rows, src_cols]  # (N, C, H, W)


def affine_warp_reference(x: torch.Tensor, angle, scale, tx, ty, fill: float = 0.0) -> torch.Tensor:
    """``affine_warp`` one output pixel at a time, in Python floats: the formulas of the module
    docstring as written. Slow; it is what the tests check ``affine_warp`` against."""
    N, C, H, W = x.shape
    cx, cy = (W - 1) / 2, (H - 1) / 2
    out = torch.empty_like(x)
    for n in range(N):
        theta, s = math.radians(float(angle[n])), float(scale[n])
        cos, sin = math.cos(theta), math.sin(theta)
        for i in range(H):
            for j in range(W):
                u, v = j - cx - float(tx[n]), i - cy - float(ty[n])  # p - c - t
                qx, qy = cx + (cos * u - sin * v) / s, cy + (sin * u + cos * v) / s  # the source point q
                x0, y0 = math.floor(qx), math.floor(qy)
                a, b = qx - x0, qy - y0
                for c in range(C):
                    def I(row, col):  # the input, extended by fill outside the image
                        return float(x[n, c, row, col]) if 0 <= row < H and 0 <= col < W else fill

                    out[n, c, i, j] = ((1 - b) * (1 - a) * I(y0, x0) + (1 - b) * a * I(y0, x0 + 1)
                                       + b * (1 - a) * I(y0 + 1, x0) + b * a * I(y0 + 1, x0 + 1))
    return out


def affine_warp(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor,
                ty: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Each image n of x (N, C, H, W) rotated by ``angle[n]`` degrees (counterclockwise as
    displayed) and scaled by ``scale[n]`` about its centre, then translated by ``(tx[n], ty[n])``
    pixels (x right, y down), resampled bilinearly with ``fill`` outside the image.

    angle, scale, tx, ty: (N,) tensors on any device. x float32 or float64; the result is on
    x's device, in its dtype. The source points of all pixels of all images are computed at once
    (the inverse mapping of the module docstring), then read with four gathers, one per corner;
    ``affine_warp_reference`` above is the same, one pixel at a time.
    """
    N, C, H, W = x.shape
    dtype, device = x.dtype, x.device
    angle, scale, tx, ty = (p.to(device, dtype)[:, None, None] for p in (angle, scale, tx, ty))  # (N, 1, 1)
    theta = angle * (math.pi / 180)
    cos, sin = torch.cos(theta), torch.sin(theta)  # (N, 1, 1)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    u = torch.arange(W, dtype=dtype, device=device)[None, None, :] - cx - tx  # (N, 1, W): x of p - c - t
    v = torch.arange(H, dtype=dtype, device=device)[None, :, None] - cy - ty  # (N, H, 1): y of p - c - t
    # The source point q, clamped to one pixel beyond the image: farther out all four corners are
    # fill, and on that border q reads fill with weight 1 (its other corners weigh 0), the same value.
    qx = (cx + (cos * u - sin * v) / scale).clamp(-1, W)  # (N, H, W): the source point's column
    qy = (cy + (sin * u + cos * v) / scale).clamp(-1, H)  # (N, H, W): and row
    x0, y0 = torch.floor(qx), torch.floor(qy)
    a, b = (qx - x0)[:, None], (qy - y0)[:, None]  # (N, 1, H, W): the same weights for every channel
    # I: the input inside a border of fill, one pixel before and two after (the corner x0 + 1 of a
    # point on the far border): input pixel (i, j) is padded pixel (i + 1, j + 1). No masks needed.
    Wp = W + 3
    padded = torch.full((N, C, H + 3, Wp), fill, dtype=dtype, device=device)
    padded[:, :, 1:H + 1, 1:W + 1] = x
    padded = padded.reshape(N, C, (H + 3) * Wp)
    top_left = ((y0.long() + 1) * Wp + x0.long() + 1).reshape(N, 1, H * W).expand(N, C, H * W)  # I(y0, x0)

    def I(offset):  # (N, C, H, W): the corner ``offset`` places after (y0, x0) in the padded image
        return padded.gather(2, top_left + offset).reshape(N, C, H, W)

    return (1 - b) * ((1 - a) * I(0) + a * I(1)) + b * ((1 - a) * I(Wp) + a * I(Wp + 1))


def random_affine(x: torch.Tensor, rotate: float, scale: float, shift: float, generator: torch.Generator,
                  fill: float = BACKGROUND, rows: slice | None = None) -> torch.Tensor:
    """x (N, C, H, W) with each image rotated by an angle uniform in [-rotate, rotate] degrees,
    scaled by a factor uniform in [1 - scale, 1 + scale] and translated by tx, ty uniform in
    [-shift, shift] pixels (fractions of a pixel too), by ``affine_warp``.

    The four numbers per image are drawn on the CPU from ``generator``, in float64, so that they
    are the same on every device and in every dtype.
    """
    r = 2 * torch.rand((4, x.shape[0]), generator=generator, dtype=torch.float64) - 1  # (4, N) in [-1, 1)
    if rows is not None:  # only these images, with the numbers they draw in the whole batch
        x, r = x[rows], r[:, rows]
    return affine_warp(x, rotate * r[0], 1 + scale * r[1], shift * r[2], shift * r[3], fill=fill)


def augment(x: torch.Tensor, generator: torch.Generator, shift: int = 0, rotate: float = 0.0,
            scale: float = 0.0, rows: slice | None = None) -> torch.Tensor:
    """The training batch's augmentation, all drawn from ``generator``: whole-pixel shifts
    (``random_shift``) when ``shift`` is the only one set, rotations, scalings and shifts of any
    fraction (``random_affine``) when ``rotate`` or ``scale`` is; x itself, nothing drawn, when all
    are 0. Whole-pixel shifts alone need no interpolation, so they keep the image sharp.

    ``rows``: return only ``x[rows]``, augmented as those images are when the whole batch is (the
    numbers are drawn for every image, so the generator ends where it would), warping just them:
    each process of a data-parallel run augments its own rows of the global batch."""
    if rotate or scale:
        return random_affine(x, rotate, scale, shift, generator, rows=rows)
    if shift:
        return random_shift(x, shift, generator, rows=rows)
    return x if rows is None else x[rows]
