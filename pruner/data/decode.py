"""Decoding image files to uint8 ``[N, 3, S, S]`` tensors.

JPEGs are decoded in batches with ``torchvision.io.decode_jpeg`` (libjpeg-turbo; measured about
3x faster than PIL in a 2-process pool on 32 px CIFAR JPEGs, and pixel-identical to PIL);
other formats go through ``torchvision.io.decode_image``. Anything torchvision cannot read is
retried with PIL, and only a file PIL cannot read either is reported as corrupt. If
torchvision's decoders are unavailable (they are deprecated), PIL does all the work.

Sizing rule (see :func:`resize_square`): an image already ``S x S`` is kept as is; otherwise
its shorter side is resized to ``S`` (``S <= 64``) or to ``round(S * 256 / 224)`` (larger ``S``,
the ImageNet convention: 256 then crop 224), then the centre ``S x S`` is cropped.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from ..errors import PrunerError

SMALL_IMAGE_MAX = 64  # auto size keeps square images up to this size as they are
LARGE_DEFAULT_SIZE = 224  # auto size for everything else
CHUNK = 512  # files read and decoded per batch

Progress = Callable[[str, float], None]


@functools.cache
def _tv():
    """torchvision's decoders and resize functions, imported on first use: importing torchvision pulls in
    ``torch._dynamo`` (several seconds), which a CLI command or a job that decodes nothing should not pay.
    Returns ``(functional, decode_image, decode_jpeg, ImageReadMode)``; the decoders are ``None`` where this
    torchvision has none (deprecated since 0.29; PIL takes over)."""
    from torchvision.transforms.v2 import functional

    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError:  # pragma: no cover - depends on the installed torchvision
        decode_jpeg = decode_image = ImageReadMode = None
    return functional, decode_image, decode_jpeg, ImageReadMode


class SizeMismatch(Exception):
    """Internal: an image is not ``S x S`` although ``exact=True`` was asked for."""


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence torchvision's per-call deprecation warning for its image decoders."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _read_bytes(path: str) -> torch.Tensor:
    """The raw bytes of ``path`` as a uint8 tensor; unreadable files are a :class:`PrunerError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PrunerError(f"cannot read image file {path} ({e.strerror}); fix its permissions or remove it") from e
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def _decode_pil(path: str) -> torch.Tensor:
    """Decode one file with PIL to uint8 ``[3, H, W]``; a file PIL rejects is a :class:`PrunerError`."""
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many types for bad files
        raise PrunerError(
            f"cannot decode image {path} ({type(e).__name__}: {e}); the file is corrupt or not an image, "
            f"delete or replace it"
        ) from e
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _decode_bytes(path: str, data: torch.Tensor) -> torch.Tensor:
    """Decode one file's bytes (torchvision first, PIL as the fallback) to uint8 ``[3, H, W]``."""
    _, decode_image, _, ImageReadMode = _tv()
    if decode_image is not None and data.numel() > 0:
        try:
            with _quiet():
                img = decode_image(data, mode=ImageReadMode.RGB)
            if img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3:
                return img
        except RuntimeError:
            pass
    return _decode_pil(path)


def decode_image_file(path: str) -> torch.Tensor:
    """Decode a single image file to uint8 ``[3, H, W]`` (RGB)."""
    return _decode_bytes(path, _read_bytes(path))


def _is_jpeg(path: str) -> bool:
    return path.lower().endswith((".jpg", ".jpeg"))


def _decode_chunk(paths: Sequence[str]) -> list[torch.Tensor]:
    """Decode a few hundred files, batching the JPEGs."""
    datas = [_read_bytes(p) for p in paths]
    out: list[torch.Tensor | None] = [None] * len(paths)
    jpeg_idx = [i for i, p in enumerate(paths) if _is_jpeg(p) and datas[i].numel() > 0]
    _, _, decode_jpeg, ImageReadMode = _tv()
    if decode_jpeg is not None and jpeg_idx:
        try:
            with _quiet():
                decoded = decode_jpeg([datas[i] for i in jpeg_idx], mode=ImageReadMode.RGB)
            for i, img in zip(jpeg_idx, decoded):
                out[i] = img
        except RuntimeError:
            pass  # one bad file fails the batch: decode each one below to find it
    return [img if img is not None else _decode_bytes(p, d) for p, d, img in zip(paths, datas, out)]


def resize_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Bring a uint8 ``[3, H, W]`` image to ``[3, size, size]`` by the module's sizing rule."""
    h, w = img.shape[-2:]
    if h == size and w == size:
        return img
    shorter = size if size <= SMALL_IMAGE_MAX else round(size * 256 / 224)
    TF = _tv()[0]
    img = TF.resize(img, [shorter], antialias=True)
    return TF.center_crop(img, [size, size])


def resize_batch(x: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """:func:`resize_square` for a uint8 ``[N, 3, H, W]`` batch of same-sized images."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], chunk):
        out[start : start + chunk] = resize_square(x[start : start + chunk], size)
    return out


def auto_size(first: torch.Tensor) -> tuple[int, bool]:
    """Default size from the first image: ``(its side, True)`` if square and small, else ``(224, False)``.

    The boolean says every other image must then have exactly that size (else fall back to 224).
    """
    h, w = first.shape[-2:]
    if h == w and h <= SMALL_IMAGE_MAX:
        return int(h), True
    return LARGE_DEFAULT_SIZE, False


def decode_images(
    paths: Sequence[str],
    size: int,
    *,
    exact: bool = False,
    progress: Progress | None = None,
    label: str = "decoding images",
) -> torch.Tensor:
    """Decode ``paths`` to one uint8 ``[N, 3, size, size]`` tensor.

    With ``exact=True`` an image of any other size raises :class:`SizeMismatch` instead of
    being resized. ``progress(label, fraction)`` is called after every chunk.
    """
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for start in range(0, len(paths), CHUNK):
        chunk = paths[start : start + CHUNK]
        images = _decode_chunk(chunk)
        if all(tuple(img.shape[-2:]) == (size, size) for img in images):
            torch.stack(images, out=out[start : start + len(chunk)])
        else:
            for offset, img in enumerate(images):
                if exact and tuple(img.shape[-2:]) != (size, size):
                    raise SizeMismatch(chunk[offset])
                out[start + offset] = resize_square(img, size)
        if progress is not None:
            progress(label, min(1.0, (start + len(chunk)) / len(paths)))
    return out
