"""The workbook against PyTorch on the same machine, in one run: `finetune bench` and
`bench_torch.py` back to back for each backbone and batch size (same threads, random data,
fp32, or with `--precision bf16` the workbook's bf16 convolutions against PyTorch's bf16
autocast with channels-last), then one real epoch on the photos each (`--data`), as one
Markdown table with the ratios.
Peak RSS is each benchmark process's own (os.wait4), so both sides are measured alike.

    just bench-compare
    python3 tools/bench/compare.py --backbone resnet18 --batch-sizes 32 --threads 2 --data ../shared/data/hotdog-seefood

Ratios are workbook / PyTorch: above 1.0 the workbook is faster.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile


def run(cmd, env):
    """Run `cmd`; return (its JSON-lines results, peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
        out = f.name
    proc = subprocess.Popen(cmd + ["--json", out], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{text}")
    with open(out) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    os.unlink(out)
    return rows, usage.ru_maxrss / 1024


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18,efficientnet-lite0")
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--data", help="also one real epoch on DIR/train (decode, augment, train) at --data-batch")
    p.add_argument("--data-batch", type=int, default=128)
    p.add_argument("--finetune", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "finetune"))
    p.add_argument("--python", default=".venv/bin/python", help="a Python with torch and torchvision")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="bf16: the workbook's --precision bf16 against PyTorch's bf16 autocast (channels-last)")
    p.add_argument("--torch-precision", choices=["f32", "bf16"],
                   help="PyTorch's side when it should differ from --precision (e.g. the workbook in bf16 against PyTorch in fp32)")
    a = p.parse_args()

    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    torch_cmd = [a.python, "tools/bench/bench_torch.py", "--threads", str(a.threads), "--image-size", str(a.image_size)]
    ours_cmd = [a.finetune, "bench", "--image-size", str(a.image_size), "--precision", a.precision]
    torch_precision = a.torch_precision or a.precision
    if torch_precision == "bf16":
        torch_cmd.append("--bf16")
    ours_kind = "fp32" if a.precision == "f32" else "bf16 products, f32 sums"
    torch_kind = "fp32" if torch_precision == "f32" else "bf16 autocast, channels-last"
    kind = "fp32" if ours_kind == torch_kind == "fp32" else f"workbook {ours_kind}, PyTorch {torch_kind}"
    print(f"{cpu_name()}, {os.cpu_count()} cores, {a.threads} threads each, {kind}, {a.image_size} px, "
          f"{a.warmup} warm-up + {a.steps} timed steps, random data\n")
    print("| backbone | batch | train img/s: workbook / PyTorch | ratio | inference img/s: workbook / PyTorch | ratio | peak RSS MiB: workbook / PyTorch | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.backbone.split(","):
        for batch in [int(b) for b in a.batch_sizes.split(",")]:
            common = ["--backbone", name, "--batch-size", str(batch), "--warmup", str(a.warmup), "--steps", str(a.steps)]
            ours, ours_rss = run(ours_cmd + common, env)
            theirs, theirs_rss = run(torch_cmd + common, env)
            o, t = ours[0], theirs[0]
            print(f"| {name} | {batch} | {o['train_img_per_sec']:.1f} / {t['train_img_per_sec']:.1f} | "
                  f"{o['train_img_per_sec'] / t['train_img_per_sec']:.2f}x | "
                  f"{o['eval_img_per_sec']:.1f} / {t['eval_img_per_sec']:.1f} | {o['eval_img_per_sec'] / t['eval_img_per_sec']:.2f}x | "
                  f"{ours_rss:.0f} / {theirs_rss:.0f} | {ours_rss / theirs_rss:.2f}x |", flush=True)
    if a.data:
        print(f"\nOne epoch on {a.data}/train (decode once, then augment + train), batch {a.data_batch}:\n")
        print("| backbone | decode s: workbook / PyTorch | epoch s: workbook / PyTorch | epoch speed ratio |")
        print("|---|---|---|---|")
        for name in a.backbone.split(","):
            common = ["--backbone", name, "--batch-size", str(a.data_batch), "--steps", "0", "--data", a.data]
            (o,), _ = run(ours_cmd + common, env)
            (t,), _ = run(torch_cmd + common, env)
            print(f"| {name} | {o['decode_seconds']:.1f} / {t['decode_seconds']:.1f} | "
                  f"{o['epoch_seconds']:.1f} / {t['epoch_seconds']:.1f} | {t['epoch_seconds'] / o['epoch_seconds']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
