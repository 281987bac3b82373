"""PyTorch's side of `finetune bench`: the same training step (forward, summed cross-entropy,
backward, SGD with weight decay) and inference on random data, in img/s, so Candle and PyTorch
numbers come from the same machine, back to back.

    .venv/bin/python tools/bench/bench_torch.py --backbone resnet18,efficientnet-lite0 --batch-size 32 --device cpu
    python3 tools/bench/bench_torch.py --device cuda --bf16   # on a GPU machine: + channels-last bf16 autocast
"""
import argparse
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name, device, batch, size, warmup, steps, bf16):
    m = build(name).to(device)
    if bf16:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=1e-5, weight_decay=1e-3)
    x = torch.randn(batch, 3, size, size, device=device)
    if bf16:
        x = x.to(memory_format=torch.channels_last)
    y = torch.arange(batch, device=device) % 2
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

    def step():
        opt.zero_grad(set_to_none=True)
        if bf16:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = loss_fn(m(x), y)
        else:
            loss = loss_fn(m(x), y)
        loss.backward()
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
    for name in a.backbone.split(","):
        train, infer = bench(name.strip(), device, a.batch_size, a.image_size, a.warmup, a.steps, a.bf16)
        print(f"{name:<20} {a.batch_size:>6} {a.image_size:>6} {train:>12.1f} {infer:>12.1f}")


if __name__ == "__main__":
    main()
