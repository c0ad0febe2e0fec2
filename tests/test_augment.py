"""The hand-written augmentation (customnn/data/augment.py): the affine warp is exact where it
must be (identity, whole-pixel shifts = the trainer's random shifts = torch.roll with the
background filled in, 90-degree turns = torch.rot90 with pixel centres on integer points and the
centre at (H - 1) / 2), equals its per-pixel loop version on random parameters, fills the outside
with the background, and draws its parameters within the asked ranges from the one generator."""

from __future__ import annotations

import pytest
import torch

from customnn.data import augment as aug
from customnn.data.augment import (BACKGROUND, affine_warp, affine_warp_reference, augment, random_affine,
                                   random_shift)

pytestmark = pytest.mark.usefixtures("one_thread")

DTYPES = [(torch.float32, 1e-5), (torch.float64, 1e-12)]


def params(N, angle=0.0, scale=1.0, tx=0.0, ty=0.0, dtype=torch.float64):
    """(angle, scale, tx, ty), each (N,), the same for every image."""
    return [torch.full((N,), float(v), dtype=dtype) for v in (angle, scale, tx, ty)]


def roll_fill(x, dy, dx, fill):
    """x moved down by dy and right by dx whole pixels, the uncovered pixels set to fill."""
    H, W = x.shape[-2:]
    out = torch.roll(x, (dy, dx), dims=(-2, -1))
    rows, cols = torch.arange(H), torch.arange(W)
    outside = ((rows - dy < 0) | (rows - dy >= H))[:, None] | ((cols - dx < 0) | (cols - dx >= W))[None, :]
    return torch.where(outside, torch.full_like(out, fill), out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (3, 2, 7, 9)])
def test_identity_returns_the_input_exactly(dtype, shape):
    x = torch.randn(shape, dtype=dtype)
    y = affine_warp(x, *params(shape[0]), fill=BACKGROUND)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, x)


@pytest.mark.parametrize("dy, dx", [(0, 1), (2, -3), (-1, -1), (5, 0), (-27, 27)])
def test_whole_pixel_translation_is_torch_roll_with_the_background_filled_in(dy, dx):
    x = torch.randn(4, 1, 28, 28)
    y = affine_warp(x, *params(4, tx=dx, ty=dy), fill=BACKGROUND)
    assert torch.equal(y, roll_fill(x, dy, dx, BACKGROUND))


@pytest.mark.parametrize("max_shift", [1, 2, 4])
def test_whole_pixel_translations_equal_the_trainers_random_shift(max_shift):
    """random_shift's output pixel (i, j) is input pixel (i + dy - s, j + dx - s): the affine warp
    with t = (s - dx, s - dy), image by image, from the same draws."""
    x = torch.randn(64, 1, 28, 28)
    g = torch.Generator().manual_seed(5)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, 64), generator=torch.Generator().manual_seed(5))
    shifted = random_shift(x, max_shift, g)
    zero = torch.zeros(64)
    warped = affine_warp(x, zero, zero + 1, (max_shift - dx).double(), (max_shift - dy).double(), fill=BACKGROUND)
    assert torch.equal(shifted, warped)


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("angle, k", [(90, 1), (-90, -1), (180, 2), (270, 3)])
@pytest.mark.parametrize("size", [28, 7])
def test_quarter_turns_are_torch_rot90(dtype, tol, angle, k, size):
    """Pixel centres on integer points, centre at (size - 1) / 2: quarter turns move pixel centres
    onto pixel centres, so the warp equals rot90 up to the rounding of cos and sin; a positive
    angle is counterclockwise as displayed (row 0 at the top), rot90's k = 1 on dims (2, 3)."""
    x = torch.randn(3, 2, size, size, dtype=dtype)
    y = affine_warp(x, *params(3, angle=angle), fill=BACKGROUND)
    torch.testing.assert_close(y, torch.rot90(x, k, dims=(2, 3)), atol=tol, rtol=0)


def test_half_pixel_translation_averages_neighbours_and_blends_in_the_fill():
    x = torch.arange(1.0, 6.0).view(1, 1, 1, 5)  # one row: 1 2 3 4 5
    y = affine_warp(x, *params(1, tx=0.5), fill=-1.0)  # output pixel j reads the point j - 0.5
    assert y.flatten().tolist() == [0.5 * (-1.0 + 1), 1.5, 2.5, 3.5, 4.5]


def test_outside_the_image_is_the_fill_value():
    x = torch.ones(2, 1, 28, 28)
    assert torch.equal(affine_warp(x, *params(2, tx=40.0), fill=BACKGROUND), torch.full_like(x, BACKGROUND))
    small = affine_warp(x, *params(2, scale=0.5), fill=BACKGROUND)  # the image, half size, in the middle
    assert torch.equal(small[:, :, 10:18, 10:18], torch.ones(2, 1, 8, 8))
    assert torch.equal(small[:, :, :6], torch.full((2, 1, 6, 28), BACKGROUND))
    assert BACKGROUND == pytest.approx(-0.4242, abs=1e-4)  # the normalised black pixel, not 0


@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_vectorised_warp_equals_the_loop_version_on_random_parameters(dtype, tol):
    g = torch.Generator().manual_seed(0)
    N = 6
    x = torch.randn(N, 2, 9, 11, generator=g, dtype=dtype)  # two channels, not square
    angle = (torch.rand(N, generator=g) * 2 - 1) * 180
    scale = 0.5 + torch.rand(N, generator=g)
    tx, ty = (torch.rand(2, N, generator=g) * 2 - 1) * 4
    fast = affine_warp(x, angle, scale, tx, ty, fill=-0.3)
    slow = affine_warp_reference(x, angle, scale, tx, ty, fill=-0.3)
    assert fast.dtype == dtype
    torch.testing.assert_close(fast, slow, atol=tol, rtol=0)


def test_mnist_sized_random_affine_equals_the_loop_version():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 28, 28, generator=g)
    seen = {}
    warp = aug.affine_warp

    def spy(x, *p, fill):
        seen["p"] = p
        return warp(x, *p, fill=fill)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aug, "affine_warp", spy)
        fast = random_affine(x, 15.0, 0.15, 2.0, torch.Generator().manual_seed(2))
    torch.testing.assert_close(fast, affine_warp_reference(x, *seen["p"], fill=BACKGROUND), atol=1e-5, rtol=0)


def test_random_affine_draws_within_the_ranges_from_its_generator(monkeypatch):
    seen = []
    monkeypatch.setattr(aug, "affine_warp", lambda x, *p, fill: seen.append(p) or x)
    x = torch.zeros(4096, 1, 2, 2)
    random_affine(x, 12.0, 0.2, 3.0, torch.Generator().manual_seed(0))
    angle, scale, tx, ty = seen[0]
    for values, low, high in ((angle, -12, 12), (scale, 0.8, 1.2), (tx, -3, 3), (ty, -3, 3)):
        assert values.shape == (4096,) and low <= values.min() < low + 0.05 * (high - low)
        assert high - 0.05 * (high - low) < values.max() <= high
    random_affine(x, 12.0, 0.2, 3.0, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[1]))  # the same generator state, the same draws


def test_augment_chooses_shifts_or_the_affine_warp_and_draws_only_what_it_uses():
    x = torch.randn(8, 1, 28, 28)
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    assert augment(x, g) is x and torch.equal(g.get_state(), before)  # all off: nothing drawn
    assert torch.equal(augment(x, g, shift=2), random_shift(x, 2, torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(3)
    expected = random_affine(x, 10.0, 0.0, 2, torch.Generator().manual_seed(3))
    assert torch.equal(augment(x, g, shift=2, rotate=10.0), expected)
    assert not torch.equal(augment(x, g, scale=0.1), x)


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_same_draws_give_the_same_images_on_any_device_and_dtype(device, dtype):
    """The parameters are drawn on the CPU in float64 whatever the batch's device and dtype."""
    x = torch.randn(16, 1, 28, 28, dtype=torch.float64)
    cpu = augment(x, torch.Generator().manual_seed(0), shift=2, rotate=10.0, scale=0.1)
    out = augment(x.to(device, dtype), torch.Generator().manual_seed(0), shift=2, rotate=10.0, scale=0.1)
    assert out.device.type == device and out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.cpu().double(), cpu, atol=tol, rtol=0)


@pytest.mark.parametrize("kind", [dict(), dict(shift=2), dict(shift=2, rotate=10.0, scale=0.1), dict(scale=0.2)])
@pytest.mark.parametrize("rows", [slice(0, 5), slice(5, 9), slice(8, 9), slice(0, 9)])
def test_rows_are_the_whole_batchs_augmentation_of_those_images_and_leave_the_generator_where_it_would(kind, rows):
    """A data-parallel process augments its own rows of the global batch: the same images, with
    the same draws, as augmenting the whole batch and slicing; the generator ends in the same state."""
    x = torch.randn(9, 1, 28, 28, dtype=torch.float64)
    whole_g, part_g = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    whole = augment(x, whole_g, **kind)[rows]
    part = augment(x, part_g, **kind, rows=rows)
    assert part.shape == whole.shape and torch.equal(part, whole)
    assert torch.equal(part_g.get_state(), whole_g.get_state())
