"""Weights on disk at real size: a random-weight checkpoint of the given shapes written as a Hub repository
publishes it (``--repo``: its files, key names and storage dtype), then, each in a fresh process, what a
start costs: the first load of a ``.bin`` checkpoint (converted once to safetensors in the conversion cache,
here ``cache/`` beside DIR, then mapped), a later load (mapped), transformers' ``from_pretrained`` on the same
files for reference, the cheap check every start runs (manifest, sizes) and the full hash check (download and
``--verify``).

    .venv/bin/python bench/weights.py [--preset small] [--repo facebook/musicgen-medium] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from musicgen_dev import bench  # noqa: E402


def child(what: str, directory: Path) -> None:
    """In a fresh process: one measurement, printed as one JSON line (seconds, peak RSS in GB)."""
    import logging

    import torch
    import transformers  # noqa: F401  imports are timed apart (bench/coldstart.py): 3-4 s here
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration  # noqa: F401

    logging.basicConfig(level=logging.INFO, format="  %(name)s: %(message)s", stream=sys.stderr)
    from musicgen import hub
    from musicgen.engine import loading
    from musicgen.manifest import Manifest, sha256

    started = time.perf_counter()
    if what == "load":
        loading.load(directory, torch.device("cpu"), cache=directory.parent / "cache")
    elif what == "from_pretrained":
        from transformers import MusicgenForConditionalGeneration

        MusicgenForConditionalGeneration.from_pretrained(str(directory), dtype=torch.float32)
    elif what == "cheap_check":
        assert not hub.problems(directory, hub.checkpoint(Manifest.read(directory).repo))
    elif what == "hash":
        for name in Manifest.read(directory).files:
            sha256(directory / name)
    seconds = time.perf_counter() - started
    # VmHWM (peak resident memory) starts afresh with the process image; ru_maxrss would carry the parent's
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"what": what, "seconds": round(seconds, 3), "peak_rss_gb": round(peak / 2**20, 2)}))


def run(what: str, directory: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", what, "--dir", str(directory)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    sys.stderr.write(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="small", help="shapes (musicgen_dev.checkpoints presets)")
    parser.add_argument("--repo", default="facebook/musicgen-medium", help="the Hub layout to write")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.dir)
    from musicgen.manifest import VERIFIED, FileRecord, Manifest, sha256
    from musicgen_dev.checkpoints import HUB_REPOS, build_random_model, write_hub_layout

    directory = args.dir or bench.work_dir("weights-bench-") / args.repo.split("/")[1]
    started = time.perf_counter()
    is_bin = HUB_REPOS[args.repo]["files"].startswith("bin")
    if (directory / "config.json").is_file():  # reuse a layout written before, as published
        shutil.rmtree(directory.parent / "cache", ignore_errors=True)  # its conversion too: converted anew
        for name in ("model.safetensors", "musicgen-manifest.json"):
            if is_bin or name != "model.safetensors":
                (directory / name).unlink(missing_ok=True)
    else:
        model, tokenizer = build_random_model(preset=args.preset)
        write_hub_layout(model, tokenizer, directory, args.repo)
        del model
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".json", ".bin", ".safetensors"))
    size = sum(p.stat().st_size for p in files)
    print(f"{args.repo} layout, {args.preset} shapes: {len(files)} files, {size / 1e9:.2f} GB in {directory} "
          f"(built in {time.perf_counter() - started:.0f} s)")
    first = "first load (.bin: convert, then map)" if is_bin else "first load"
    rows = [(first, run("load", directory)),
            ("later load (mapped safetensors)", run("load", directory)),
            ("transformers from_pretrained (reference)", run("from_pretrained", directory))]
    manifest = Manifest(args.repo, "main", "0" * 40, VERIFIED,
                        {p.name: FileRecord(p.stat().st_size, sha256(p)) for p in sorted(directory.iterdir())
                         if p.is_file() and p.name not in ("README.md", ".gitattributes")})
    manifest.save(directory)
    total = sum(r.size for r in manifest.files.values())
    rows += [("cheap check at start (manifest, sizes)", run("cheap_check", directory)),
             (f"full hash check ({total / 1e9:.2f} GB, sha256)", run("hash", directory))]
    for label, row in rows:
        print(f"{label:48} {row['seconds']:8.2f} s   peak RSS {row['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
