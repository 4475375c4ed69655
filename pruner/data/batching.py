"""Mini-batches from :class:`ImageTensors`: normalization and batched GPU-friendly augmentation.

Everything here runs on whichever device the uint8 images (or ``device``) are on: with the
training set resident on a GPU (:func:`resident`) and a generator on that GPU, shuffling,
cropping, flipping and normalizing a batch are a handful of kernels and no host transfer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import PrunerError
from .tensors import ImageTensors


def crop_padding(height: int, width: int) -> tuple[int, int]:
    """Random-crop padding: 4 px for 32 px images, scaled linearly for other sizes (at least 1)."""
    return max(1, round(height / 8)), max(1, round(width / 8))


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, *,
                     channels_last: bool = False) -> torch.Tensor:
    """Randomly crop (zero padding, see :func:`crop_padding`) and horizontally flip each image.

    ``x`` is any-dtype ``[B, C, H, W]`` on any device; every random number comes from
    ``generator`` (drawn on the generator's device), so results are reproducible. The whole
    batch is one gather. ``channels_last`` returns the gather's own ``[B, H, W, C]`` memory
    layout (a channels-last tensor, no copy) instead of a contiguous one.
    """
    b, _, h, w = x.shape
    if b == 0:
        return x
    pad_h, pad_w = crop_padding(h, w)
    rng_device = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * pad_h + 1, (b,), generator=generator, device=rng_device).to(x.device)
    dx = torch.randint(0, 2 * pad_w + 1, (b,), generator=generator, device=rng_device).to(x.device)
    flip = (torch.rand(b, generator=generator, device=rng_device) < 0.5).to(x.device)

    padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h))  # zeros = black pixels before normalization
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # [B, H]
    cols = dx[:, None] + torch.where(flip[:, None], ar_w.flip(0), ar_w)  # [B, W]
    batch_index = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices split by the channel slice -> result is [B, H, W, C].
    out = padded[batch_index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()


def _stats(values: Sequence[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` as a float32 vector on ``device`` (the same tensor when it already is one)."""
    if isinstance(values, torch.Tensor) and values.device == device and values.dtype == torch.float32:
        return values.reshape(-1)
    return torch.as_tensor(values, dtype=torch.float32).to(device).reshape(-1)


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 ``(x / 255 - mean) / std`` (in ``x``'s memory format).

    ``mean``/``std`` may be float32 tensors already on ``x``'s device (no transfer per batch)."""
    channels = x.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values but images have {channels} channels")
    m, s = _stats(mean, x.device).view(1, -1, 1, 1), _stats(std, x.device).view(1, -1, 1, 1)
    return x.float().div_(255.0).sub_(m).div_(s)


def resident(data: ImageTensors, device: torch.device | str, *, max_fraction: float = 0.5) -> ImageTensors:
    """``data`` moved to ``device`` once (uint8, so CIFAR-10's 50,000 images take 150 MB), when it
    is a CUDA device with room for it (at most ``max_fraction`` of its free memory); else ``data``
    itself, and :func:`batches` moves each batch as before."""
    device = torch.device(device)
    if device.type != "cuda" or data.x.device == device:
        return data
    free, _ = torch.cuda.mem_get_info(device)
    if data.x.numel() + 8 * data.y.numel() > max_fraction * free:
        return data
    return data.to(device)


def batches(
    data: ImageTensors,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)``: float32 normalized ``[B, C, H, W]`` and int64 ``[B]`` on ``device``.

    ``shuffle`` permutes the order once per call; ``augment`` applies :func:`random_crop_flip`
    (on ``device``, before normalization). All randomness comes from ``generator`` (torch's global
    RNG when ``None``), drawn on the generator's device (a generator on the GPU that holds the
    data keeps every step there). ``drop_last`` skips a final batch smaller than ``batch_size``.
    ``channels_last`` yields images in channels-last memory format (same values).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PrunerError(f"batch size must be a positive integer, got {batch_size!r}; pick e.g. 128")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    m, s = _stats(mean, device), _stats(std, device)
    n = len(data)
    if shuffle:
        rng_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=rng_device).to(data.x.device)
    else:
        order = None
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if drop_last and stop - start < batch_size:
            break
        if order is None:
            xb, yb = data.x[start:stop], data.y[start:stop]
        else:
            index = order[start:stop]
            xb, yb = data.x[index], data.y[index]
        xb = xb.to(device, non_blocking=True)
        yb = yb.to(device, non_blocking=True)
        if augment:
            xb = random_crop_flip(xb, generator, channels_last=channels_last)
        elif channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield normalize(xb, m, s), yb
