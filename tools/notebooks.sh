#!/usr/bin/env bash
# The Evcxr notebooks: set up the Rust Jupyter kernel, open the notebooks, or execute them.
#
#   bash tools/notebooks.sh setup    evcxr_jupyter (prebuilt by cargo binstall where it is installed
#                                    and online, else cargo install --locked: 5.6 min the first
#                                    time on 2 cores, measured), Jupyter in a venv, the "rust" kernel, the weights
#   bash tools/notebooks.sh open     setup, then Jupyter on notebooks/
#   bash tools/notebooks.sh check    setup, then run every notebook headless in quick mode into
#                                    runs/notebooks/executed/; fails on the first cell error, on
#                                    an absolute path in an output, and on stale committed
#                                    outputs (tools/notebooks_stale.py: sources changed since the
#                                    render, or, same setting, a fresh run prints otherwise)
#   bash tools/notebooks.sh render   the same in the full setting (the chapter's 224 px, every
#                                    photo), but writes the outputs into notebooks/*.ipynb and
#                                    stamps each with the setting and its sources' fingerprint
#
# Everything installed lives under $WORKBOOK_CACHE (default ~/.cache/transfer-workbook), so a
# second run (and a second CI run on the same machine) starts at once. EVCXR_TMPDIR keeps
# Evcxr's build of the workbook crate and its dependencies there too: the first notebook
# compiles Candle once (~8 min on 2 cores), the others reuse it.
# Pick notebooks with NOTEBOOKS="04 05"; WORKBOOK_SETTING=quick|full overrides the setting
# (check: quick by default, render: full); WORKBOOK_DEVICE=cpu|cuda|cuda:N the device.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cache=${WORKBOOK_CACHE:-$HOME/.cache/transfer-workbook}
evcxr_version=0.22.0
evcxr_bin=$cache/evcxr/bin/evcxr_jupyter
venv=$cache/jupyter

# evcxr_jupyter has no --version: the install records which version is there (our own
# VERSION file, or cargo install's record from before it).
evcxr_installed() {
    [[ -x $evcxr_bin ]] && { grep -qx "$evcxr_version" "$cache/evcxr/VERSION" 2>/dev/null ||
        grep -q "evcxr_jupyter $evcxr_version" "$cache/evcxr/.crates.toml" 2>/dev/null; }
}

setup() {
    if ! evcxr_installed; then
        # A prebuilt binary where cargo-binstall is installed and can download it (needs
        # internet); else compiling it: 5 min 37 s on the 2-core machine (2026-11-24, crates downloaded).
        if cargo binstall -V >/dev/null 2>&1 &&
            cargo binstall --no-confirm --locked --disable-strategies compile --root "$cache/evcxr" "evcxr_jupyter@$evcxr_version"; then
            echo "== evcxr_jupyter $evcxr_version: prebuilt, from cargo binstall"
        else
            echo "== building evcxr_jupyter $evcxr_version (first time only: about 6 min on 2 cores; with cargo-binstall installed and internet, a prebuilt binary is fetched instead)"
            cargo install --locked evcxr_jupyter --version "$evcxr_version" --root "$cache/evcxr"
        fi
        echo "$evcxr_version" >"$cache/evcxr/VERSION"
    fi
    if [[ ! -x $venv/bin/jupyter-nbconvert ]]; then
        echo "== installing Jupyter into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check jupyter nbconvert
    fi
    # Registers the "rust" kernel the notebooks name (in Jupyter's user data dir).
    "$evcxr_bin" --install >/dev/null
    bash tools/fetch-weights.sh
}

# Evcxr links each cell against Rust's shared libstd through a relative RUNPATH that breaks when
# its build folder shares a prefix with the toolchain's (both under $HOME): dlopen fails at the
# first cell. Naming the toolchain's library folder makes it independent of where things live.
kernel_env() {
    local sysroot
    sysroot=$(rustc --print sysroot)
    export LD_LIBRARY_PATH=$sysroot/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    # One build folder for every kernel: Candle compiles once. Two kernels at the same time
    # would share it, so run one notebook's kernel at a time.
    export EVCXR_TMPDIR=$cache/evcxr-build
    mkdir -p "$EVCXR_TMPDIR" "$cache/.cargo"
    # The workbook's Cargo.toml patches Candle (vendor/README.md), but a [patch] only applies
    # to the outermost build, here Evcxr's generated crate, so the kernel gets it from a Cargo
    # config. Cargo merges the configs of the folder it runs in (Evcxr's build folder, where
    # Evcxr writes its own .cargo/config.toml) and of every folder above: this one sits above.
    printf '%s\n' "# Written by tools/notebooks.sh: the workbook's patched Candle for Evcxr's builds below." \
        "[patch.crates-io]" "candle-core = { path = \"$root/vendor/candle-core\" }" >"$cache/.cargo/config.toml"
    # Evcxr compiles the cells and the workbook with its own `[profile.dev]`: opt-level 2 with
    # debug assertions and overflow checks, which made training in the kernel 1.4-2.3x slower
    # than the CLI (09's benchmark cell against `finetune bench`). Cargo's environment settings
    # take precedence over a manifest's profile: build the kernel's code like a release build.
    # (Evcxr's profile also builds incrementally; turning that off measured no difference: 04's
    # full render 279 s against 283 s, the same epoch speeds.)
    export CARGO_PROFILE_DEV_OPT_LEVEL=3 CARGO_PROFILE_DEV_DEBUG_ASSERTIONS=false CARGO_PROFILE_DEV_OVERFLOW_CHECKS=false
}

# Execute the notebooks; $1 = "check" (copies) or "render" (in place).
execute() {
    local mode=$1 out=$root/runs/notebooks/executed
    # render defaults to the full setting, check to quick; check compares a notebook's outputs
    # where its committed render is in the setting it runs, and only its stamp otherwise
    # (tools/notebooks_stale.py).
    local default=quick
    [[ $mode == render ]] && default=full
    export PATH=$venv/bin:$PATH WORKBOOK_SETTING=${WORKBOOK_SETTING:-$default}
    kernel_env
    mkdir -p "$out"
    local timings=$out/timings.txt
    : >"$timings"
    local pick=${NOTEBOOKS:-} nbs=()
    for nb in notebooks/[0-9][0-9]-*.ipynb; do
        local name
        name=$(basename "$nb" .ipynb)
        if [[ -z $pick || " $pick " == *" ${name:0:2} "* ]]; then
            nbs+=("$nb")
        fi
    done
    # Stale outputs fail at once, before any kernel starts: each notebook records the
    # fingerprint of the sources that rendered it (tools/notebooks_stale.py).
    if [[ $mode == check ]] && ! python3 tools/notebooks_stale.py fresh "${nbs[@]}"; then
        echo "FAILED: committed notebook outputs are stale (above)" >&2
        exit 1
    fi
    for nb in "${nbs[@]}"; do
        local name
        name=$(basename "$nb" .ipynb)
        local args=(--to notebook --execute --ExecutePreprocessor.timeout=3600 --ExecutePreprocessor.kernel_name=rust)
        if [[ $mode == render ]]; then args+=(--inplace); else args+=(--output-dir "$out"); fi
        echo "== $name ($WORKBOOK_SETTING)"
        local t0=$SECONDS
        if ! (cd notebooks && jupyter nbconvert "${args[@]}" "$name.ipynb"); then
            echo "FAILED: $nb (a cell raised an error; see above)" >&2
            exit 1
        fi
        echo "$name $((SECONDS - t0)) s" | tee -a "$timings"
        # Outputs print paths relative to the project: this machine's paths mean nothing elsewhere.
        local executed=$out/$name.ipynb
        [[ $mode == render ]] && executed=$nb
        local tmp
        tmp=$(dirname "$(mktemp -u)")
        if grep -n -o -E "($root|$HOME|$tmp/)[^\"]{0,60}" "$executed" | head -5 | grep .; then
            echo "FAILED: $nb prints an absolute path of this machine (above); print it relative to the project" >&2
            exit 1
        fi
        if [[ $mode == render ]]; then
            python3 tools/notebooks_stale.py stamp "$nb" "$WORKBOOK_SETTING"
        elif ! python3 tools/notebooks_stale.py check "$nb" "$executed" "$WORKBOOK_SETTING"; then
            echo "FAILED: $nb: its committed outputs are not what it prints now (above); run \`just notebooks-render\`" >&2
            exit 1
        fi
    done
    echo "== all notebooks ran without error ($WORKBOOK_SETTING); timings in $timings"
}

case "${1:-}" in
    setup) setup ;;
    open)
        setup
        kernel_env
        exec "$venv/bin/jupyter" notebook --notebook-dir="$root/notebooks"
        ;;
    check) setup && execute check ;;
    render) setup && execute render ;;
    *)
        echo "usage: bash tools/notebooks.sh setup|open|check|render" >&2
        exit 2
        ;;
esac
