"""Everyday pictures of digits turned into MNIST's form, for ``customnn predict``.

A photo or drawing is turned into MNIST's form the way MNIST itself was made (LeCun, Cortes
& Burges, http://yann.lecun.com/exdb/mnist/: "normalized to fit in a 20x20 pixel box while
preserving their aspect ratio ... centered in a 28x28 image by computing the center of mass
of the pixels"):

1. grayscale (a transparent background is filled with the colour opposite the ink);
2. ink made white on black, whatever the background: the border's median brightness is the
   background, a light background is inverted, and the contrast is stretched so the
   background is 0 and the strongest ink 1;
3. cropped to the ink's bounding box;
4. scaled (anti-aliased) so the longer side is 20 pixels, keeping the aspect ratio;
5. pasted into 28x28 so the ink's centre of mass is at the centre;
6. normalised like the training images.

    x = to_mnist(load_image("my_seven.png"))   # (28, 28) floats in [0, 1], ink white on black
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from customnn.errors import UserError

INK_THRESHOLD = 0.1  # after contrast stretching, pixels above this count as ink for the crop


def load_image(path: str | Path) -> np.ndarray:
    """The picture at ``path`` as grayscale floats in [0, 1], shape (H, W); ``UserError`` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                rgba = np.asarray(im, dtype=np.float32) / 255.0  # (H, W, 4)
                gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
                alpha = rgba[..., 3]
                opaque = alpha > 0.5
                ink_is_dark = gray[opaque].mean() < 0.5 if opaque.any() else True
                fill = 1.0 if ink_is_dark else 0.0  # a background the ink stands out against
                return gray * alpha + fill * (1 - alpha)
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise UserError(f"{path} is not an image Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or damaged image data
        raise UserError(f"cannot read image {path}: {e}") from None


def to_mnist(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """A grayscale picture (H, W) in [0, 1] -> an MNIST-style (28, 28) image in [0, 1], white ink on black."""
    from PIL import Image

    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = 1.0 - gray if background > 0.5 else gray.copy()  # white ink on black
    low, high = min(background, 1 - background), float(ink.max())
    if high - low < 0.05:
        raise UserError(f"{name}: no digit found (the picture is one flat colour)")
    ink = np.clip((ink - low) / (high - low), 0.0, 1.0)  # background 0, strongest ink 1

    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]  # crop to the ink
    h, w = ink.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    box = Image.fromarray((ink * 255).astype(np.uint8)).resize((nw, nh), Image.Resampling.LANCZOS)
    box = np.asarray(box, dtype=np.float32) / 255.0  # (nh, nw), the longer side 20

    total = box.sum()
    cy = (box.sum(axis=1) * np.arange(nh)).sum() / total  # centre of mass
    cx = (box.sum(axis=0) * np.arange(nw)).sum() / total
    top, left = int(round(14.0 - cy)), int(round(14.0 - cx))  # MNIST digits have their mass at (14, 14)
    top, left = min(max(top, 0), 28 - nh), min(max(left, 0), 28 - nw)
    out = np.zeros((28, 28), dtype=np.float32)
    out[top:top + nh, left:left + nw] = box
    return out
