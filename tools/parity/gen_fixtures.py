#!/usr/bin/env python3
"""Generate the ResNet parity fixtures: tests/fixtures/parity/resnet{18,50}.safetensors.

Run from the repository root (CPU is enough; about two minutes):

    .venv/bin/python tools/parity/gen_fixtures.py [resnet18] [resnet50]

Nothing random is involved. The weights and the input come from a closed formula (an integer
hash, `uniform` below; docs/parity.md states it) that tests/parity/resnet.rs re-implements bit for
bit, so no weights are committed; the fixture stores fingerprints of them to prove the two sides
agree. torchvision's results are stored twice:

  f64/...   the model and input cast to float64. The Rust test builds the same model in F64 and
            compares to ~1e-9: this is the proof that the arithmetic is the same, because float64
            rounding noise (1e-16) cannot flip a ReLU mask or a max-pool argmax.
  f32/...   the ordinary float32 model, compared at float32 tolerances.

Keys (<p> = f64 or f32):

  <p>/<case>/eval_logits, <p>/<case>/train_logits, <p>/<case>/loss ([1])
  <p>/<case>/grad/<name>          d loss / d name after that one train-mode forward
  <p>/<case>/bn1/<bn>.running_*   BatchNorm running stats after that forward
  <p>/sgd1/<name>, <p>/sgd2/<name>, <p>/sgd2/loss, <p>/bn2/<bn>.running_*
                                  SGD from the formula weights: step, second train-mode forward on
                                  the same batch, step (so momentum matters)
  <p>/adamw1/<name>               one AdamW step from the formula weights (fresh model)

Cases: x64 [2,3,64,64] everywhere; for resnet18 also x224 [2,3,224,224] (f32 forward, running
stats and head gradients only: see docs/parity.md on why backbone gradients of the big input are
not compared in float32).

A tensor with more than CAP elements is stored as `<key>:head` (its first k slices along dim 0,
k = max(1, CAP // slice size); for fc.weight that includes the row of label 1),
`<key>:sum0` (sum over dim 0) and `<key>:sum1` (sum over the other dims), sums in float64.

Input selection: float32 backward through ReLU is discontinuous (an activation within rounding
noise of 0 can switch its mask, and one switched element moves early-layer gradients by ~1%), so
the generator tries input streams in order and keeps the first whose float32 gradients and SGD
weights agree with float64 in three different float32 torch executions (default, channels_last,
mkldnn off); the chosen stream is in the metadata.
"""

import json
import math
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "parity")

LABELS = [1, 7]
CAP = 4096
# γ of the last BatchNorm of every residual branch is scaled by this (a softened torchvision
# `zero_init_residual`): with γ ≈ 1 everywhere ResNet-50's float32 backward is ill-conditioned
# (torch's own float32 and float64 gradients differ by 1-4%), which would make the float32
# comparison measure rounding noise instead of the implementation.
LAST_BN_SCALE = 0.2
INPUT_STREAM_BASE = 1 << 31  # weight tensors use streams 0, 1, 2, ...; inputs 2^31 + k
SEARCH = 64
AGREE_GRAD = 5e-5  # float32 variants vs float64: max |diff| / max |ref| over the selected gradients
AGREE_WEIGHTS = 2e-6  # ... and max |diff| of the SGD weights

SGD = dict(momentum=0.9, weight_decay=1e-3, lr_backbone=0.01, lr_head=0.1)
ADAMW = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, lr_backbone=1e-3, lr_head=1e-2)

ARCHS = {
    "resnet18": dict(
        ctor=torchvision.models.resnet18,
        last_bn="bn2",
        selected=["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.bias", "fc.weight", "fc.bias"],
        bns=["bn1", "layer2.0.downsample.1", "layer4.1.bn2"],
        extra_cases={"x224": (2, 3, 224, 224)},
    ),
    "resnet50": dict(
        ctor=torchvision.models.resnet50,
        last_bn="bn3",
        selected=["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.2.bn3.bias", "fc.weight", "fc.bias"],
        bns=["bn1", "layer2.0.downsample.1", "layer4.2.bn3"],
        extra_cases={},
    ),
}
X64 = (2, 3, 64, 64)


# ------------------------------------------------------------------------------------------------
# The formula


def uniform(stream, n):
    """u(stream, i) in [-1, 1) for i in 0..n, float64: SplitMix64's finaliser, integer arithmetic
    mod 2^64, then an exact scaling of the top 53 bits.

        z = ((stream << 32) | i) + 0x9E3779B97F4A7C15
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        z =  z ^ (z >> 31)
        u = (z >> 11) * 2^-53 * 2 - 1
    """
    i = np.arange(n, dtype=np.uint64)
    z = (np.uint64(stream) << np.uint64(32)) | i
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 2.0 - 1.0


def formula_tensor(arch, name, shape, j):
    """Tensor `name` (index j among the sorted names): float64 arithmetic, one rounding to float32."""
    n = int(np.prod(shape))
    s = uniform(j, n)
    parts = name.split(".")
    leaf = parts[-1]
    if name == "fc.weight":
        v = s / math.sqrt(shape[1])
    elif name == "fc.bias":
        v = 0.01 * s
    elif len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        v = s * math.sqrt(6.0 / fan_in)
    elif leaf == "running_mean":
        v = 0.1 * s
    elif leaf == "running_var":
        v = 1.0 + 0.5 * np.abs(s)
    elif leaf == "weight":
        v = 1.0 + 0.1 * s
        if parts[0].startswith("layer") and parts[-2] == ARCHS[arch]["last_bn"]:
            v = LAST_BN_SCALE * v
    elif leaf == "bias":
        v = 0.1 * s
    else:
        raise ValueError(f"no formula for {name} {shape}")
    return v.astype(np.float32).reshape(shape)


def formula_input(stream, shape):
    """x_i = 2 u(stream, i), in [-2, 2), rounded to float32."""
    n = int(np.prod(shape))
    return (2.0 * uniform(stream, n)).astype(np.float32).reshape(shape)


def bitsum(a):
    """Sum of the float32 bit patterns: an exact fingerprint the Rust side recomputes."""
    return int(np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64).sum())


def formula_state(arch):
    sd = ARCHS[arch]["ctor"](weights=None).state_dict()
    names = sorted(k for k in sd if not k.endswith("num_batches_tracked"))
    return {name: formula_tensor(arch, name, tuple(sd[name].shape), j) for j, name in enumerate(names)}


# ------------------------------------------------------------------------------------------------
# Experiments


def fresh_model(arch, weights, dtype=torch.float32, channels_last=False):
    m = ARCHS[arch]["ctor"](weights=None)
    sd = m.state_dict()
    m.load_state_dict({k: (torch.from_numpy(weights[k].copy()) if k in weights else v) for k, v in sd.items()}, strict=True)
    for k, v in m.state_dict().items():
        assert k in weights or k.endswith("num_batches_tracked"), k
    m = m.to(dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


def param_groups(model, lr_backbone, lr_head):
    named = list(model.named_parameters())
    return [
        dict(params=[p for n, p in named if not n.startswith("fc.")], lr=lr_backbone),
        dict(params=[p for n, p in named if n.startswith("fc.")], lr=lr_head),
    ]


def train_forward_backward(model, x):
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, torch.tensor(LABELS))
    loss.backward()
    return logits, loss


def bn_stats(model, bns):
    sd = model.state_dict()
    return {f"{bn}.{s}": sd[f"{bn}.{s}"].detach().clone() for bn in bns for s in ("running_mean", "running_var")}


def forward_suite(arch, weights, x, dtype, **kw):
    cfg = ARCHS[arch]
    m = fresh_model(arch, weights, dtype, **kw)
    m.eval()
    with torch.no_grad():
        eval_logits = m(x)
    logits, loss = train_forward_backward(m, x)
    params = dict(m.named_parameters())
    return dict(
        eval_logits=eval_logits.detach(),
        train_logits=logits.detach(),
        loss=loss.detach().reshape(1),
        grads={n: params[n].grad.detach().clone() for n in cfg["selected"]},
        bn1=bn_stats(m, cfg["bns"]),
    )


def sgd_suite(arch, weights, x, dtype, **kw):
    cfg = ARCHS[arch]
    m = fresh_model(arch, weights, dtype, **kw)
    opt = torch.optim.SGD(param_groups(m, SGD["lr_backbone"], SGD["lr_head"]), lr=SGD["lr_backbone"],
                          momentum=SGD["momentum"], weight_decay=SGD["weight_decay"])
    params = dict(m.named_parameters())
    train_forward_backward(m, x)
    opt.step()
    sgd1 = {n: params[n].detach().clone() for n in cfg["selected"]}
    _, loss2 = train_forward_backward(m, x)
    opt.step()
    sgd2 = {n: params[n].detach().clone() for n in cfg["selected"]}
    return dict(sgd1=sgd1, sgd2=sgd2, loss2=loss2.detach().reshape(1), bn2=bn_stats(m, cfg["bns"]))


def adamw_suite(arch, weights, x, dtype):
    cfg = ARCHS[arch]
    m = fresh_model(arch, weights, dtype)
    opt = torch.optim.AdamW(param_groups(m, ADAMW["lr_backbone"], ADAMW["lr_head"]), lr=ADAMW["lr_backbone"],
                            betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
    train_forward_backward(m, x)
    opt.step()
    params = dict(m.named_parameters())
    return {n: params[n].detach().clone() for n in cfg["selected"]}


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def absdiff(a, b):
    return (a.double() - b.double()).abs().max().item()


def choose_input_stream(arch, weights):
    """The first input stream whose float32 results are robust (see the module docstring)."""
    cfg = ARCHS[arch]
    for k in range(SEARCH):
        stream = INPUT_STREAM_BASE + k
        x = torch.from_numpy(formula_input(stream, X64))
        ref = forward_suite(arch, weights, x.double(), torch.float64)
        ref_sgd = sgd_suite(arch, weights, x.double(), torch.float64)
        worst_g, worst_w = 0.0, 0.0
        variants = [dict(), dict(channels_last=True), dict(mkldnn=False)]
        for v in variants:
            kw = {k2: v2 for k2, v2 in v.items() if k2 != "mkldnn"}
            xv = x.to(memory_format=torch.channels_last) if v.get("channels_last") else x
            with torch.backends.mkldnn.flags(enabled=v.get("mkldnn", True)):
                got = forward_suite(arch, weights, xv, torch.float32, **kw)
                got_sgd = sgd_suite(arch, weights, xv, torch.float32, **kw)
            worst_g = max([worst_g] + [rel(got["grads"][n], ref["grads"][n]) for n in cfg["selected"]])
            worst_w = max([worst_w] + [absdiff(got_sgd[s][n], ref_sgd[s][n]) for s in ("sgd1", "sgd2") for n in cfg["selected"]])
            if worst_g > AGREE_GRAD or worst_w > AGREE_WEIGHTS:
                break
        ok = worst_g <= AGREE_GRAD and worst_w <= AGREE_WEIGHTS
        print(f"  {arch} input stream 2^31+{k}: float32 vs float64 grads {worst_g:.1e}, SGD weights {worst_w:.1e}"
              f" -> {'use' if ok else 'reject'}", flush=True)
        if ok:
            return stream, worst_g, worst_w
    raise SystemExit(f"{arch}: no robust input stream among {SEARCH}")


# ------------------------------------------------------------------------------------------------
# Storage


def put(out, key, t, dtype):
    t = t.detach().to(dtype).contiguous()
    if t.numel() <= CAP:
        out[key] = t.clone()
        return
    rest = t[0].numel()
    k = max(1, CAP // rest)
    out[key + ":head"] = t[:k].clone()
    out[key + ":sum0"] = t.double().sum(0).to(dtype)
    out[key + ":sum1"] = t.double().reshape(t.shape[0], -1).sum(1).to(dtype)


def store_forward(out, prefix, res, dtype, grads=None):
    for k in ("eval_logits", "train_logits", "loss"):
        put(out, f"{prefix}/{k}", res[k], dtype)
    for n, g in res["grads"].items():
        if grads is None or n in grads:
            put(out, f"{prefix}/grad/{n}", g, dtype)
    for n, s in res["bn1"].items():
        put(out, f"{prefix}/bn1/{n}", s, dtype)


def store_sgd(out, prefix, res, dtype):
    for s in ("sgd1", "sgd2"):
        for n, w in res[s].items():
            put(out, f"{prefix}/{s}/{n}", w, dtype)
    put(out, f"{prefix}/sgd2/loss", res["loss2"], dtype)
    for n, s in res["bn2"].items():
        put(out, f"{prefix}/bn2/{n}", s, dtype)


def generate(arch):
    cfg = ARCHS[arch]
    weights = formula_state(arch)
    stream, agree_g, agree_w = choose_input_stream(arch, weights)
    x = torch.from_numpy(formula_input(stream, X64))
    out = {}
    for dtype, p in ((torch.float64, "f64"), (torch.float32, "f32")):
        xd = x.to(dtype)
        store_forward(out, f"{p}/x64", forward_suite(arch, weights, xd, dtype), dtype)
        store_sgd(out, p, sgd_suite(arch, weights, xd, dtype), dtype)
        for n, w in adamw_suite(arch, weights, xd, dtype).items():
            put(out, f"{p}/adamw1/{n}", w, dtype)
    cases = {"x64": list(X64)}
    for case, shape in cfg["extra_cases"].items():
        cases[case] = list(shape)
        xc = torch.from_numpy(formula_input(stream, shape))
        store_forward(out, f"f32/{case}", forward_suite(arch, weights, xc, torch.float32), torch.float32,
                      grads=["fc.weight", "fc.bias"])

    names = sorted(weights)
    meta = {
        "arch": arch,
        "generator": "tools/parity/gen_fixtures.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "labels": json.dumps(LABELS),
        "last_bn": cfg["last_bn"],
        "last_bn_scale": repr(LAST_BN_SCALE),
        "selected": json.dumps(cfg["selected"]),
        "bns": json.dumps(cfg["bns"]),
        "cases": json.dumps(cases),
        "input_stream": str(stream),
        "input_search": f"float32 vs float64 in 3 torch executions: grads {agree_g:.2e} rel, SGD weights {agree_w:.2e} abs",
        "sgd": json.dumps(SGD),
        "adamw": json.dumps(ADAMW),
        # [name, shape] in sorted order: j in the weight formula is the index in this list.
        "tensors": json.dumps([[n, list(weights[n].shape)] for n in names]),
        "weights_bitsum": json.dumps({n: bitsum(weights[n]) for n in names}),
        "input_bitsum": json.dumps({c: bitsum(formula_input(stream, s)) for c, s in cases.items()}),
    }
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{arch}.safetensors")
    save_file({k: v.contiguous() for k, v in sorted(out.items())}, path, metadata=meta)
    os.chmod(path, 0o644)
    print(f"{path}: {len(out)} tensors, {os.path.getsize(path) / 1e6:.2f} MB")


def main():
    warnings.filterwarnings("ignore", message="TF32 acceleration")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    archs = sys.argv[1:] or list(ARCHS)
    for arch in archs:
        if arch not in ARCHS:
            raise SystemExit(f"unknown arch {arch} (known: {', '.join(ARCHS)})")
        generate(arch)


if __name__ == "__main__":
    main()
