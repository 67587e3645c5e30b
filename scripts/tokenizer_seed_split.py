"""`wm train-tokenizer` with the parts of its seed set apart, to find which part makes a slow run
(README #16, session 27). `tokenizer.train.seed` sets three things: the weights' init, the random
stream drawn after it (the MAE masks) and the order of the training clips. Environment variables
override one part each:

    DATA_SEED=D    the training clips' order (the loader's seed; with imported videos, the draw that
                   mixes them in still follows tokenizer.train.seed)
    MASK_SEED=M    the global RNG once the model is built (masks)
    SWAP_SEED=S SWAP_PREFIXES=p1,p2,...   parameters whose names start with a prefix take
                   their init from seed S (e.g. the encoder side: patch_in,patch_pos,mask_token,
                   latent_tokens,encoder.,to_latent)

    DATA_SEED=0 python scripts/tokenizer_seed_split.py --workdir W tokenizer.out_dir=W/ckpt \
        tokenizer.train.seed=1 tokenizer.train.threads=1

Every other argument goes to `wm train-tokenizer` unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import torch

import wm.stages.train_tokenizer as stage


def _override_data_seed(seed: int) -> None:
    batches = stage.train_batches

    def seeded(shard_dir, train, info, shuffle_buffer, skip=0, **kw):
        return batches(shard_dir, dataclasses.replace(train, seed=seed), info, shuffle_buffer, skip, **kw)

    stage.train_batches = seeded


def _override_mask_seed(seed: int) -> None:
    factory = stage.tokenizer_batches

    def reseeded(cfg, info, skip=0):  # the trainer calls the data factory right after its reseed
        torch.manual_seed(seed)
        return factory(cfg, info, skip)

    stage.tokenizer_batches = reseeded


def _override_init(seed: int, prefixes: tuple[str, ...]) -> None:
    build = stage.build_tokenizer

    def mixed(cfg):
        model = build(cfg)
        torch.manual_seed(seed)
        donor = build(cfg).state_dict()
        state = model.state_dict()
        taken = [k for k in state if k.startswith(prefixes)]
        if not taken:
            raise SystemExit(f"SWAP_PREFIXES {prefixes} match no parameter of the tokenizer")
        state.update({k: donor[k] for k in taken})
        model.load_state_dict(state)
        print(f"tokenizer_seed_split: {sum(state[k].numel() for k in taken)} values ({len(taken)} tensors) "
              f"from seed {seed}", file=sys.stderr, flush=True)
        return model

    stage.build_tokenizer = mixed


def main() -> int:
    env = os.environ
    if "DATA_SEED" in env:
        _override_data_seed(int(env["DATA_SEED"]))
    if "MASK_SEED" in env:
        _override_mask_seed(int(env["MASK_SEED"]))
    if env.get("SWAP_PREFIXES"):
        if "SWAP_SEED" not in env:
            raise SystemExit("SWAP_PREFIXES needs SWAP_SEED: the seed those parameters' init comes from")
        _override_init(int(env["SWAP_SEED"]), tuple(env["SWAP_PREFIXES"].split(",")))
    from wm.cli import main as wm_main

    return wm_main(["train-tokenizer", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
