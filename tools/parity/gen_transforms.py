#!/usr/bin/env python3
"""Generate tests/fixtures/parity/transforms.safetensors: torchvision's d2l test preprocessing
(Resize([256, 256]) + CenterCrop(224) + ToTensor + Normalize(ImageNet)) of three real JPEGs of
the hot-dog data set, for tests/parity/transforms.rs.

Run from the repository root:

    .venv/bin/python tools/parity/gen_transforms.py

Per image <i> (0, 1, 2; the file names are in the metadata) the fixture holds:

  decoded_center/<i>  u8 [64, 64, 3]  the centre of PIL's decoded RGB image
  decoded_sum/<i>     f64 [3]         per-channel sums of PIL's decoded image (exact integers)
  crop/<i>            u8 [224, 224, 3] PIL's image after Resize + CenterCrop (ToTensor and
                                      Normalize are a fixed function of it)
  tensor_center/<i>   f32 [3, 64, 64]  the centre of torchvision's normalized output tensor
  tensor_mean/<i>, tensor_std/<i>  f64 [3]  per-channel mean / std (population) of that tensor

and the metadata holds the SHA-256 of PIL's decoded RGB bytes, so the test can tell whether the
`image` crate decodes exactly the same pixels.

JPEG decoders differ (they do here), so the resampler is also compared on its own, on synthetic
images that both sides build from a formula (`synthetic` below; no decoder involved):

  synthetic_crop/<k>  u8 [224, 224, 3]  PIL's Resize([256, 256]) + CenterCrop(224) of image k
"""

import hashlib
import json
import os
import sys

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, JpegImagePlugin
from safetensors.torch import save_file
from torchvision import transforms as T

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "hotdog-seefood"))
OUT = os.path.join(ROOT, "tests", "fixtures", "parity", "transforms.safetensors")

# Different sizes and chroma subsamplings (4:2:0, 4:2:2, 4:4:4 with an ICC profile).
IMAGES = ["test/hot_dog/530316.jpg", "test/hot_dog/210861.jpg", "test/hot_dog/248122.jpg"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CENTER = 64
# (width, height) of the synthetic images: the real images' sizes, and one upscale.
SYNTHETIC = [(306, 512), (512, 341), (512, 512), (200, 150)]
SYNTHETIC_STREAM = 0x5EED0000


def splitmix(stream, n):
    """SplitMix64's finaliser of ((stream << 32) | i) + 0x9E3779B97F4A7C15, i in 0..n (uint64)."""
    z = (np.uint64(stream) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def synthetic(k, width, height):
    """Image k: v(x, y, c) = ((3x + 2y + 85c) mod 256 + (h >> 59)) mod 256, h = splitmix(stream k,
    (y * width + x) * 3 + c): diagonal ramps with hard wrap-around edges plus 0..31 of noise."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    noise = (splitmix(SYNTHETIC_STREAM + k, width * height * 3) >> np.uint64(59)).astype(np.int64).reshape(height, width, 3)
    return (((3 * x + 2 * y + 85 * c) % 256 + noise) % 256).astype(np.uint8)


def center(a, size, axes):
    """The size x size centre of `a` along the two `axes` (offsets rounded down)."""
    sl = [slice(None)] * a.ndim
    for ax in axes:
        start = (a.shape[ax] - size) // 2
        sl[ax] = slice(start, start + size)
    return a[tuple(sl)]


def main():
    geometric = T.Compose([T.Resize([256, 256]), T.CenterCrop(224)])
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    out, info = {}, []
    for i, rel in enumerate(IMAGES):
        path = os.path.join(DATA, rel)
        img = Image.open(path)
        sampling = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(JpegImagePlugin.get_sampling(img), "other")
        rgb = img.convert("RGB")
        dec = np.asarray(rgb)
        crop = geometric(rgb)
        t = to_tensor(crop)
        assert torch.equal(t, to_tensor(Image.fromarray(np.asarray(crop)))), "the tensor is not a function of the crop"
        out[f"decoded_center/{i}"] = torch.from_numpy(center(dec, CENTER, (0, 1)).copy())
        out[f"decoded_sum/{i}"] = torch.from_numpy(dec.reshape(-1, 3).astype(np.float64).sum(0))
        out[f"crop/{i}"] = torch.from_numpy(np.asarray(crop).copy())
        out[f"tensor_center/{i}"] = center(t, CENTER, (1, 2)).contiguous().clone()
        out[f"tensor_mean/{i}"] = t.double().mean((1, 2))
        out[f"tensor_std/{i}"] = t.double().std((1, 2), unbiased=False)
        info.append(dict(file=rel, width=img.width, height=img.height, sampling=sampling,
                         decoded_sha256=hashlib.sha256(dec.tobytes()).hexdigest()))
        print(f"{rel}: {img.width}x{img.height} {sampling}")
    for k, (w, h) in enumerate(SYNTHETIC):
        crop = geometric(Image.fromarray(synthetic(k, w, h), "RGB"))
        out[f"synthetic_crop/{k}"] = torch.from_numpy(np.asarray(crop).copy())
    meta = {
        "generator": "tools/parity/gen_transforms.py",
        "pipeline": "Resize([256, 256]) (bilinear, antialias) + CenterCrop(224) + ToTensor + Normalize(ImageNet)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "python": sys.version.split()[0],
        "center": str(CENTER),
        "images": json.dumps(info),
        "synthetic": json.dumps([dict(width=w, height=h, stream=SYNTHETIC_STREAM + k) for k, (w, h) in enumerate(SYNTHETIC)]),
    }
    save_file(out, OUT, metadata=meta)
    os.chmod(OUT, 0o644)
    print(f"{OUT}: {os.path.getsize(OUT) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
