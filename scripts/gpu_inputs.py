"""Build the small inputs the GPU scripts carry (`run` carries at most 64 MiB of ignored paths).

    python scripts/gpu_inputs.py            # -> .gpu/shards, .gpu/tokenizer

- .gpu/shards: the held-out shards and the first TRAIN_SHARDS training shards of data/shards,
  with a manifest whose train list names only those (evaluation reads frames from the held-out
  clips and a mean training frame; the dynamics trains on data/latents, carried beside it);
- .gpu/tokenizer: the committed tokenizer's weights, config and step (no optimizer or loss state).

Carry ["data/latents", ".gpu/shards", ".gpu/tokenizer", ".whl"] with scripts/gpu_action_free.sh.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

TRAIN_SHARDS = 2


def build(shards: Path, tokenizer: Path, out: Path, train_shards: int = TRAIN_SHARDS) -> int:
    manifest = json.loads((shards / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    train["shards"] = train["shards"][:train_shards]
    dest = out / "shards"
    if dest.exists():
        shutil.rmtree(dest)
    for split, entries in (("train", train["shards"]), ("val", manifest["splits"]["val"]["shards"])):
        for entry in entries:
            target = dest / entry["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(shards / entry["file"], target)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tok = out / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    ckpt = torch.load(tokenizer / "checkpoint.pt", map_location="cpu", weights_only=False)
    # weights, config and step: what decoding needs (the optimizer and the loss's running state,
    # two thirds of the file, only resume training); the weights' fingerprint stays the same
    torch.save({k: ckpt[k] for k in ("model", "config", "step") if k in ckpt}, tok / "checkpoint.pt")
    for extra in tokenizer.glob("*.yaml"):
        shutil.copy2(extra, tok / extra.name)
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--tokenizer", type=Path, default=Path("data/checkpoints/tokenizer"))
    parser.add_argument("--out", type=Path, default=Path(".gpu"))
    parser.add_argument("--train-shards", type=int, default=TRAIN_SHARDS)
    args = parser.parse_args(argv)
    for path in (args.shards / "manifest.json", args.tokenizer / "checkpoint.pt"):
        if not path.exists():
            print(f"{path} is missing: run `dvc repro` first", file=sys.stderr)
            return 1
    size = build(args.shards, args.tokenizer, args.out, args.train_shards)
    print(f"{args.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
