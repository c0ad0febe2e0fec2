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

from customnn.core.errors import UserError

INK_THRESHOLD = 0.1  # after contrast stretching, pixels above this count as ink for the crop
MAX_PIXELS = 2**28  # 268 megapixels (16384 x 16384): larger pictures are refused before decoding
MAX_SIDE = 2048  # a picture is reduced to at most this many pixels a side before any float copy is made
# Bytes per pixel of a decoded picture in Pillow's memory, by mode (4 for the others).
_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")


def load_image(path: str | Path) -> np.ndarray:
    """The picture at ``path`` as grayscale floats in [0, 1], shape (H, W), at most ``MAX_SIDE`` a
    side; ``UserError`` if unreadable, too large or not finite.

    The file is opened lazily (only its header is read), its size checked against
    ``MAX_PIXELS`` and the memory its decoding needs against what the machine has, before a pixel
    is decoded; a JPEG is decoded at a reduced scale (``draft``); a large picture is reduced in
    its own mode. Every mode Pillow reads is scaled by its own range: 8-bit modes by 255, 16-bit
    greyscale (``I;16``) by 65535, 32-bit (``I``, ``F``) by the range their values use.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    from customnn.core.memory import check_memory
    from customnn.core.validate import shown

    path = Path(path)
    name = shown(path)
    if not path.is_file():
        raise UserError(f"image not found: {name}")
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own limit: it refuses at twice this
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit is checked below
            with Image.open(path) as im:  # lazy: the header only
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise UserError(f"{name} is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels), more than the "
                                    f"{MAX_PIXELS / 1e6:.0f} megapixels customnn reads; make it smaller first")
                if im.format == "JPEG":
                    im.draft("L", (min(w, MAX_SIDE), min(h, MAX_SIDE)))  # decoded at 1/2, 1/4 or 1/8 scale
                    w, h = im.size
                check_memory(w * h * (_BYTES.get(im.mode, 4) + 2), f"decoding {name} ({w} x {h} pixels)", "cpu",
                             "make the picture smaller first")
                im.load()
                return _gray(_reduced(_small_mode(im)), name)
    except Image.DecompressionBombError as e:
        raise UserError(f"{name} is too large to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise UserError(f"{name} is not an image Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or damaged image data
        raise UserError(f"cannot read image {name}: {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _small_mode(im):
    """The picture in the smallest mode that keeps what ``_gray`` needs: greyscale (``L``), with
    alpha (``LA``), or its own 16/32-bit greyscale (``I;16``, ``I``, ``F``)."""
    if im.mode in ("L", "LA", "I", "F", "La") or im.mode in _SIXTEEN:
        return im  # already small: no copy
    if im.mode == "LAB":
        return im.getchannel("L")  # lightness
    if im.mode in _ALPHA or (im.mode == "P" and "transparency" in im.info):
        return im.convert("LA")
    return im.convert("L")  # 1, L, P, RGB, CMYK, YCbCr, HSV, RGBX, ...


def _reduced(im):
    """At most ``MAX_SIDE`` pixels a side (area averaging), in the picture's own mode."""
    w, h = im.size
    f = -(-max(w, h) // MAX_SIDE)
    if f <= 1:
        return im
    from PIL import Image

    return im.resize((max(1, -(-w // f)), max(1, -(-h // f))), Image.Resampling.BOX)


def _gray(im, name: str) -> np.ndarray:
    """Grayscale floats in [0, 1] (a transparent background filled with the colour opposite the ink)."""
    a = np.asarray(im)
    if im.mode in ("LA", "La"):
        gray, alpha = a[..., 0].astype(np.float32) / 255.0, a[..., 1].astype(np.float32) / 255.0
        if im.mode == "La":  # premultiplied by alpha
            gray = np.divide(gray, alpha, out=np.zeros_like(gray), where=alpha > 0)
        opaque = alpha > 0.5
        ink_is_dark = gray[opaque].mean() < 0.5 if opaque.any() else True
        fill = 1.0 if ink_is_dark else 0.0  # a background the ink stands out against
        return gray * alpha + fill * (1 - alpha)
    if im.mode == "L":
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float64)
    if im.mode in _SIXTEEN:
        return (a / 65535.0).astype(np.float32)
    if not np.isfinite(a).all():
        raise UserError(f"{name}: some of its pixels are not numbers (NaN or infinite)")
    low, high = float(a.min()), float(a.max())
    if low >= 0 and high <= 1 and im.mode == "F":
        scale = 1.0  # floats in [0, 1]
    elif low >= 0 and high <= 255:
        scale = 255.0  # 8-bit values in a 32-bit mode
    elif low >= 0 and high <= 65535:
        scale = 65535.0  # 16-bit values (how older Pillow opens a 16-bit PNG)
    else:  # any other range: its own
        return ((a - low) / (high - low if high > low else 1.0)).astype(np.float32)
    return (a / scale).astype(np.float32)


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
