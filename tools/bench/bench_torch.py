"""PyTorch's side of `finetune bench`: the same training step (forward, summed cross-entropy,
backward, SGD with weight decay) and inference on random data, in img/s, so Candle and PyTorch
numbers come from the same machine, back to back.

    .venv/bin/python tools/bench/bench_torch.py --backbone resnet18,efficientnet-lite0 --batch-size 32 --device cpu
    python3 tools/bench/bench_torch.py --device cuda --bf16   # on a GPU machine: + channels-last bf16 autocast
    .venv/bin/python tools/bench/bench_torch.py --data ../shared/data/hotdog-seefood   # + one real epoch

`--data DIR` also times what `finetune bench --data DIR` times: decoding DIR/train, then one
epoch of d2l's augmentation (RandomResizedCrop + flip + normalize) and training steps through a
torch DataLoader (`--workers` processes). `--json FILE` appends one JSON object per result.
"""
import argparse
import json
import time

import torch
import torchvision


def build(name):
    if name == "resnet18":
        m = torchvision.models.resnet18()
        m.fc = torch.nn.Linear(512, 2)
    elif name == "resnet50":
        m = torchvision.models.resnet50()
        m.fc = torch.nn.Linear(2048, 2)
    elif name == "efficientnet-lite0":
        from efficientnet_lite_pytorch import EfficientNet

        m = EfficientNet.from_name("efficientnet-lite0", num_classes=2)
    else:
        raise SystemExit(f"unknown backbone {name}")
    return m


def prepared(m, bf16):
    """The model as the run uses it: channels-last for bf16 (oneDNN's fast bf16 layout)."""
    return m.to(memory_format=torch.channels_last) if bf16 else m


def loss_of(m, x, y, loss_fn, bf16):
    """The training loss, under bf16 autocast (channels-last input) when asked."""
    if not bf16:
        return loss_fn(m(x), y)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return loss_fn(m(x.to(memory_format=torch.channels_last)), y)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name, device, batch, size, warmup, steps, bf16):
    m = prepared(build(name).to(device), bf16)
    opt = torch.optim.SGD(m.parameters(), lr=1e-5, weight_decay=1e-3)
    x = torch.randn(batch, 3, size, size, device=device)
    if bf16:
        x = x.to(memory_format=torch.channels_last)
    y = torch.arange(batch, device=device) % 2
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of(m, x, y, loss_fn, bf16).backward()
        opt.step()

    m.train()
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    train = steps * batch / (time.perf_counter() - t0)
    m.eval()
    with torch.no_grad():
        for _ in range(warmup):
            m(x)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            if bf16:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    m(x)
            else:
                m(x)
        sync(device)
        infer = steps * batch / (time.perf_counter() - t0)
    return train, infer


def bench_epoch(name, device, data, batch, size, workers, bf16=False):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    norm = ([0.5] * 3, [0.5] * 3) if name == "efficientnet-lite0" else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    aug = transforms.Compose([
        transforms.RandomResizedCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(*norm),
    ])
    t0 = time.perf_counter()
    # Decode every photo once, as the workbook does, so the epoch times augmentation + training.
    raw = datasets.ImageFolder(f"{data}/train")
    decoded = [(raw.loader(p).copy(), y) for p, y in raw.samples]
    decode = time.perf_counter() - t0

    class Decoded(torch.utils.data.Dataset):
        def __len__(self):
            return len(decoded)

        def __getitem__(self, i):
            img, y = decoded[i]
            return aug(img), y

    loader = DataLoader(Decoded(), batch_size=batch, shuffle=True, num_workers=workers)
    m = prepared(build(name).to(device), bf16)
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=5e-5, weight_decay=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    t1 = time.perf_counter()
    n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        loss_of(m, x, y, loss_fn, bf16).backward()
        opt.step()
        n += len(y)
    sync(device)
    epoch = time.perf_counter() - t1
    return decode, epoch, n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="resnet18,efficientnet-lite0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="channels-last + bf16 autocast")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    p.add_argument("--data", help="also time one real epoch on DIR/train")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes for --data")
    p.add_argument("--json", help="append results as JSON lines to this file")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"{'backbone':<20} {'batch':>6} {'size':>6} {'train img/s':>12} {'infer img/s':>12}")
    def record(r):
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")

    for name in a.backbone.split(","):
        name = name.strip()
        if a.steps > 0:
            train, infer = bench(name, device, a.batch_size, a.image_size, a.warmup, a.steps, a.bf16)
            print(f"{name:<20} {a.batch_size:>6} {a.image_size:>6} {train:>12.1f} {infer:>12.1f}")
            record({"backbone": name, "batch_size": a.batch_size, "image_size": a.image_size,
                    "train_img_per_sec": train, "eval_img_per_sec": infer, "threads": torch.get_num_threads()})
        if a.data:
            decode, epoch, n = bench_epoch(name, device, a.data, a.batch_size, a.image_size, a.workers, a.bf16)
            print(f"{name:<20} epoch on {a.data}: decode {decode:.1f} s, augment + train {epoch:.1f} s "
                  f"for {n} photos ({n / epoch:.1f} img/s, {a.workers} loader workers)")
            record({"backbone": name, "batch_size": a.batch_size, "image_size": a.image_size, "images": n,
                    "decode_seconds": decode, "epoch_seconds": epoch, "epoch_img_per_sec": n / epoch})


if __name__ == "__main__":
    main()
