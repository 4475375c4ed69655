"""Score an exported ONNX model on an ImageFolder split with nothing but ONNX Runtime, PIL and NumPy.

    python bench/score_onnx.py runs/demo/artifacts/model.onnx ../shared/data/cifar10-jpeg/test

This is the "someone else" check: it imports no project code and uses only the preprocessing
(mean, std, input size) and class names stored in the ONNX metadata. Images are resized to the
stored input size when they differ from it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def read_metadata(sess: ort.InferenceSession) -> dict:
    """The JSON-valued entries of the model's custom metadata."""
    meta = {}
    for key, value in sess.get_modelmeta().custom_metadata_map.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    return meta


def score(onnx_path: str | Path, split_dir: str | Path, batch: int = 500) -> tuple[int, int]:
    """(correct, total) of the model on ``split_dir/<class>/*`` with the class order from the metadata."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = read_metadata(sess)
    mean = np.asarray(meta["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(meta["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    size = tuple(meta["input_size"])[-2:]
    name = sess.get_inputs()[0].name
    correct = total = 0
    for label, cls in enumerate(meta["class_names"]):
        files = sorted(p for p in (Path(split_dir) / cls).iterdir() if p.is_file())
        for i in range(0, len(files), batch):
            imgs = []
            for f in files[i:i + batch]:
                img = Image.open(f).convert("RGB")
                if img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                imgs.append(np.asarray(img, dtype=np.float32))
            x = (np.stack(imgs).transpose(0, 3, 1, 2) / 255.0 - mean) / std
            logits = sess.run(None, {name: x.astype(np.float32)})[0]
            correct += int((logits.argmax(1) == label).sum())
            total += len(imgs)
    return correct, total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx")
    p.add_argument("split_dir", help="an ImageFolder split, e.g. .../cifar10-jpeg/test")
    args = p.parse_args()
    correct, total = score(args.onnx, args.split_dir)
    print(f"{args.onnx}: top-1 {100.0 * correct / total:.2f}% ({correct}/{total}) on {args.split_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
