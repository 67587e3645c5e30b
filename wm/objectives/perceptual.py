"""Perceptual distance for the tokenizer loss and its evaluation, offline-safe.

Two families, chosen by ``tokenizer.lpips_net``:

- ``stlpips_alex`` (default) / ``stlpips_vgg``: shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022,
  arXiv 2207.13686; PyPI ``stlpips-pytorch`` 0.0.2). Its wheel ships the whole network -- trunk
  and linear layers, trained from scratch on BAPPS at 64x64 -- so it works on any offline machine
  that ran the README's setup. Loaded here with ``weights_only=True`` and a check that every
  parameter came from the file (the package itself loads with ``strict=False``, which would
  hide a missing trunk).
- ``lpips_alex``: the original LPIPS (Zhang et al. 2018). The ``lpips`` package ships only its
  linear layers and takes the AlexNet trunk from torchvision's ImageNet download, which never
  happens at run time: it is used when ``alexnet-owt-7be5be79.pth`` already sits in the torch
  cache; otherwise it warns once and the term is dropped (``lpips_pretrained: false``).
- ``none``: MSE only.

``load_perceptual`` returns a frozen module mapping two (N, 3, H, W) images in [-1, 1] to
(N, 1, 1, 1) distances, or ``None``.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import warnings
from pathlib import Path

import torch

from wm.errors import ConfigValueError, CorruptInputError

_WARNED = False


def alexnet_weights_path() -> Path:
    from torchvision.models import AlexNet_Weights

    name = os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def pretrained_available() -> bool:
    return alexnet_weights_path().exists()


def load_lpips(allow_random: bool = False) -> tuple[torch.nn.Module | None, bool]:
    """(module or None, pretrained?). The module maps two (N, 3, H, W) images in [-1, 1] to (N,)."""
    global _WARNED
    import lpips

    if pretrained_available():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated"
            net = lpips.LPIPS(net="alex", verbose=False)
        return _frozen(net), True
    if not _WARNED:
        warnings.warn(
            f"LPIPS: pretrained AlexNet weights not found at {alexnet_weights_path()} (no download "
            "happens at run time). The LPIPS loss term is disabled and val/lpips is not reported "
            "(lpips_pretrained: false). To enable it, place alexnet-owt-7be5be79.pth there.",
            stacklevel=2,
        )
        _WARNED = True
    if not allow_random:
        return None, False
    net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    return _frozen(net), False


def _frozen(net: torch.nn.Module) -> torch.nn.Module:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


PERCEPTUAL_NETS = ("stlpips_alex", "stlpips_vgg", "lpips_alex", "none")


def stlpips_weights_path(trunk: str) -> Path:
    from stlpips_pytorch import stlpips

    return Path(inspect.getfile(stlpips)).parent / "weights" / "vST0.0" / f"{trunk}_shift_tolerant.pth"


def _import_stlpips():
    # stlpips-pytorch imports IPython (for a debugging `embed` it never calls on this path) and
    # torchsummary without declaring them; torchsummary is a declared dependency of wm, IPython
    # (large) gets an inert stand-in when it is not installed.
    if "IPython" not in sys.modules:
        try:
            import IPython  # noqa: F401
        except ImportError:
            stand_in = types.ModuleType("IPython")
            stand_in.embed = lambda *a, **k: None  # type: ignore[attr-defined]
            sys.modules["IPython"] = stand_in
    from stlpips_pytorch import stlpips

    return stlpips


def load_stlpips(trunk: str = "alex") -> torch.nn.Module:
    """Shift-tolerant LPIPS with every parameter read from the wheel's file (raises otherwise)."""
    stlpips = _import_stlpips()
    net = stlpips.LPIPS(net=trunk, variant="shift_tolerant", pretrained=False, verbose=False)
    path = stlpips_weights_path(trunk)
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = net.load_state_dict(state, strict=False)
    # `lins.i` are the same modules as `lin{i}` (a ModuleList over them), so the file's `lin{i}.*`
    # fill them; anything else missing means an untrained part.
    aliases = {f"lins.{k[3]}{k[4:]}" for k in state if k.startswith("lin") and k[3].isdigit()}
    missing = [k for k in result.missing_keys if k not in aliases]
    if missing or result.unexpected_keys:
        raise CorruptInputError(f"{path}: missing {missing}, unexpected {result.unexpected_keys}")
    return _frozen(net)


def load_perceptual(name: str) -> tuple[torch.nn.Module | None, bool]:
    """(module or None, pretrained?) for ``tokenizer.lpips_net``."""
    if name not in PERCEPTUAL_NETS:
        raise ConfigValueError(f"tokenizer.lpips_net must be one of {', '.join(PERCEPTUAL_NETS)}, got '{name}'")
    if name == "none":
        return None, False
    if name == "lpips_alex":
        return load_lpips()
    return load_stlpips(name.removeprefix("stlpips_")), True
