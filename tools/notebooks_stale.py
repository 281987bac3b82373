"""Are the committed notebook outputs what `notebooks-render` produces now?

    python3 tools/notebooks_stale.py stamp NOTEBOOK SETTING
        after a render: record in the notebook's metadata the setting and a fingerprint of
        what produced its outputs (the crate's sources the kernel compiles, Cargo.lock, and
        the notebook's own code cells)
    python3 tools/notebooks_stale.py fresh NOTEBOOK...
        fail when a notebook's stamp is missing or not today's fingerprint (no kernel needed)
    python3 tools/notebooks_stale.py check COMMITTED EXECUTED SETTING
        after a check run: fail when COMMITTED's fingerprint is not today's (sources or cells
        changed since its render), and, when it was rendered in the same SETTING, when its
        outputs differ from EXECUTED's (the fresh run) in anything but timings

Training is bit-reproducible on the CPU, so a fresh run prints the same losses and
accuracies; what may differ is timing. Outputs are compared after masking numbers followed by
a time or speed unit ("8 s", "15.8 examples/sec", "885 ms", "43 img/s"); a cell whose outputs
are all timings (a benchmark table) carries the cell tag `timing` and is not compared.
Progress lines are left out (`head epoch 1/3: batch 2/4, ...`); streams are compared joined,
whatever chunks the kernel flushed them in.
"""
import functools
import hashlib
import json
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# What the notebooks' kernel compiles: the library without its default features (no serve,
# no CLI binary), the locked dependency versions, and the patched Candle (vendor/README.md).
SOURCES = ["src", "Cargo.toml", "Cargo.lock", os.path.join("vendor", "candle-core", "src")]
NOT_COMPILED = [os.path.join("src", "serve"), os.path.join("src", "bin")]

TIMING = re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?\s*(s|ms|min|examples/sec|img/s|images/s)\b")
DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
PROGRESS = re.compile(r"^\s*(\S+ )?epoch \d+/\d+: batch \d+/\d+.*$", re.M)


@functools.lru_cache(maxsize=None)
def sources_hash():
    """sha256 state over the compiled sources (read once per process, shared by every notebook)."""
    h = hashlib.sha256()
    files = []
    for s in SOURCES:
        p = os.path.join(ROOT, s)
        if os.path.isfile(p):
            files.append(s)
            continue
        for d, dirs, names in os.walk(p):
            dirs.sort()
            rel = os.path.relpath(d, ROOT)
            if any(rel == n or rel.startswith(n + os.sep) for n in NOT_COMPILED):
                continue
            files += [os.path.join(rel, n) for n in sorted(names) if n.endswith(".rs")]
    for f in files:
        h.update(f.replace(os.sep, "/").encode() + b"\0")
        with open(os.path.join(ROOT, f), "rb") as fh:
            h.update(fh.read() + b"\0")
    return h


def fingerprint(nb):
    h = sources_hash().copy()
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            h.update("".join(c["source"]).encode() + b"\0")
    return h.hexdigest()[:16]


def load(path):
    with open(path) as f:
        return json.load(f)


def save(path, nb):
    # The layout nbconvert writes (1-space indent, unicode kept), so a stamp is a small diff.
    with open(path, "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")


def cell_text(c):
    """A code cell's outputs as comparable text (streams joined per name, images hashed)."""
    streams, rest = {}, []
    for o in c.get("outputs", []):
        t = o.get("output_type")
        if t == "stream":
            streams[o["name"]] = streams.get(o["name"], "") + "".join(o["text"])
        elif t in ("display_data", "execute_result"):
            for mime, v in sorted(o["data"].items()):
                v = "".join(v) if isinstance(v, list) else str(v)
                if mime.startswith("image/"):
                    v = hashlib.sha256(v.encode()).hexdigest()[:16]
                rest.append(f"[{mime}] {v}")
        elif t == "error":
            rest.append(f"[error] {o.get('ename')}: {o.get('evalue')}")
    parts = [f"[{n}] {s}" for n, s in sorted(streams.items())] + rest
    text = PROGRESS.sub("", "\n".join(parts))
    text = re.sub(r"\n\s*\n+", "\n", text)
    return DATE.sub("<date>", TIMING.sub("<time>", text)).strip()


def stamp(path, setting):
    nb = load(path)
    nb["metadata"]["workbook"] = {"setting": setting, "rendered_from": fingerprint(nb)}
    save(path, nb)


def stamp_errors(name, nb):
    """Errors if the notebook's render stamp is missing or not today's sources."""
    meta = nb["metadata"].get("workbook")
    if not meta:
        return [f"{name}: no render stamp; run `just notebooks-render`"]
    now = fingerprint(nb)
    if meta.get("rendered_from") != now:
        return [f"{name}: stale: rendered from sources {meta.get('rendered_from')}, today's are {now} "
                "(src/, Cargo.lock or its cells changed since); run `just notebooks-render`"]
    return []


def fresh(committed_path):
    return stamp_errors(os.path.basename(committed_path), load(committed_path))


def check(committed_path, executed_path, setting):
    name = os.path.basename(committed_path)
    committed = load(committed_path)
    errors = stamp_errors(name, committed)
    if errors:
        return errors
    executed = load(executed_path)
    meta = committed["metadata"]["workbook"]
    if meta.get("setting") != setting:
        print(f"{name}: rendered in the {meta.get('setting')} setting, checked in {setting}: stamp only")
        return []
    code = lambda nb: [c for c in nb["cells"] if c["cell_type"] == "code"]
    errors = []
    for i, (a, b) in enumerate(zip(code(committed), code(executed))):
        if "timing" in a.get("metadata", {}).get("tags", []):
            continue
        ta, tb = cell_text(a), cell_text(b)
        if ta != tb:
            la, lb = ta.splitlines(), tb.splitlines()
            j = next((k for k in range(min(len(la), len(lb))) if la[k] != lb[k]), min(len(la), len(lb)))
            show = lambda ls: ls[j][:200] if j < len(ls) else "(nothing)"
            errors.append(f"{name}: code cell {i + 1}: the committed output differs from a fresh run\n"
                          f"    committed: {show(la)}\n    fresh run: {show(lb)}")
    return errors


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "stamp":
        stamp(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "fresh":
        errors = [e for p in sys.argv[2:] for e in fresh(p)]
        for e in errors:
            print("STALE: " + e, file=sys.stderr)
        sys.exit(1 if errors else 0)
    elif len(sys.argv) == 5 and sys.argv[1] == "check":
        errors = check(sys.argv[2], sys.argv[3], sys.argv[4])
        for e in errors:
            print("STALE: " + e, file=sys.stderr)
        sys.exit(1 if errors else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
