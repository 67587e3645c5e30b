"""Mean and spread over seeds of the action-free experiment's summaries.

    python scripts/action_free_seeds.py OUT/action_free_s*_f*.json --out OUT/action_free_seeds.json

Each input is one `wm action-free` summary (OUT_DIR/action_free.json of one seed and one
labelled share). Per labelled share: every arm's figures as mean, sd and per-seed values; the
paired differences labelled+video minus labelled-only (same seed); and the issue's three checks
on the means: gap/labeled_plus_video >= 0.7 x gap/full, gap/labeled_plus_video >
gap/labeled_only, psnr_h<H>/k<K>/labeled_plus_video > psnr_h<H>/k<K>/labeled_only. Where the
summaries hold them (``heldout/...``: every arm on every held-out clip), each seed's paired arm
differences with their 95 % intervals over held-out episodes, and their mean over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ARMS = ("full", "labeled_plus_video", "labeled_only")


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def _checks(m: dict[str, float], h16: str) -> dict[str, bool]:
    """The issue's three checks on mean figures ``m`` (``gap/<arm>``, ``<h16>/<arm>``)."""
    return {
        "gap_video >= 0.7 gap_full": m["gap/labeled_plus_video"] >= 0.7 * m["gap/full"],
        "gap_video > gap_only": m["gap/labeled_plus_video"] > m["gap/labeled_only"],
        f"{h16}_video > {h16}_only": m[f"{h16}/labeled_plus_video"] > m[f"{h16}/labeled_only"],
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``runs``: summaries of `wm action-free`; grouped by ``labeled_frac``."""
    shares: dict[str, Any] = {}
    for frac in sorted({r["labeled_frac"] for r in runs}):
        group = sorted((r for r in runs if r["labeled_frac"] == frac), key=lambda r: r.get("seed", 0))
        horizon = next(k.split("/")[0] for k in group[0] if k.endswith("/repeat_last") and k.startswith("psnr_h"))  # psnr_h<H>
        h16 = next(k.rsplit("/", 1)[0] for k in group[0] if k.startswith(f"{horizon}/k") and k.endswith("/full")
                   and "shuffled" not in k)
        keys = [f"gap/{a}" for a in ARMS] + [f"{h16}/{a}" for a in ARMS]
        out: dict[str, Any] = {"seeds": [r.get("seed") for r in group],
                               "steps": {a: group[0].get(f"steps/{a}", group[0]["steps"]) for a in ARMS}}
        for key in keys:
            out[key] = _stats([float(r[key]) for r in group])
        for fig in ("gap", h16):
            out[f"{fig}/video_minus_only"] = _stats(
                [float(r[f"{fig}/labeled_plus_video"]) - float(r[f"{fig}/labeled_only"]) for r in group])
        # all held-out clips (summaries since session 21): each seed's paired differences with
        # their episode-bootstrap intervals, and the mean over the seeds that have them
        held = [r for r in group if "heldout/clips" in r]
        if held:
            out["heldout"] = {"seeds": [r.get("seed") for r in held], "clips": held[0]["heldout/clips"]}
            for key in sorted(k.removeprefix("heldout/") for k in held[0]
                              if k.startswith("heldout/") and "_minus_" in k and not k.endswith("_ci95")):
                out["heldout"][key] = {**_stats([float(r[f"heldout/{key}"]) for r in held]),
                                       "ci95": [r[f"heldout/{key}_ci95"] for r in held]}
            per_arm = [f"{fig}/{a}" for fig in ("gap", horizon) for a in ARMS]
            if all(f"heldout/{key}" in held[0] for key in per_arm):
                out["heldout"].update({key: _stats([float(r[f"heldout/{key}"]) for r in held]) for key in per_arm})
                out["heldout"]["checks"] = _checks({key: out["heldout"][key]["mean"] for key in per_arm}, horizon)
        out["checks"] = _checks({k: out[k]["mean"] for k in keys}, h16)
        shares[str(frac)] = out
    return {"runs": len(runs), "labeled_frac": shares}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = []
    for path in args.summaries:
        if not path.exists():
            print(f"skipped {path}: missing (that seed's summary failed; see its log)", file=sys.stderr)
            continue
        runs.append(json.loads(path.read_text()))
    if not runs:
        print("no summary to aggregate", file=sys.stderr)
        return 1
    result = summarise(runs)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for frac, share in result["labeled_frac"].items():
        print(f"labeled_frac {frac}, seeds {share['seeds']}: " + ", ".join(
            f"{k} {v['mean']:.2f}" + (f" +- {v['sd']:.2f}" if v["sd"] is not None else "")
            for k, v in share.items() if isinstance(v, dict) and "mean" in v))
        print(f"  checks: {share['checks']}")
        if "checks" in share.get("heldout", {}):
            print(f"  checks on all held-out clips: {share['heldout']['checks']}")
        for key, v in share.get("heldout", {}).items():
            if isinstance(v, dict) and "ci95" in v:
                print(f"  all {share['heldout']['clips']} held-out clips, {key}: mean {v['mean']:+.2f}, per seed "
                      + ", ".join(f"{x:+.2f} {ci}" for x, ci in zip(v["values"], v["ci95"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
