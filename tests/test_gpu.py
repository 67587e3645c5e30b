"""On a CUDA device: the world model samples with bf16-capable models placed on the GPU, and
cached and uncached sampling agree there too. Skipped without a GPU (conftest)."""

import pytest
import torch

from wm.models.agent import Agent
from wm.models.dynamics import Dynamics
from wm.world_model import WorldModel


@pytest.mark.gpu
def test_world_model_rollout_on_cuda(debug_cfg):
    dev = torch.device("cuda")
    n_actions = len(debug_cfg.env.action_map)
    dyn = Dynamics(debug_cfg.dynamics, n_actions, debug_cfg.tokenizer.n_latents, debug_cfg.tokenizer.latent_dim)
    world = WorldModel(Agent(dyn, n_tasks=1, mtp=2, bins=41).to(dev).eval(), ctx_noise=0.1, steps=2)
    ctx = torch.tanh(torch.randn(2, 3, debug_cfg.tokenizer.n_latents, debug_cfg.tokenizer.latent_dim, device=dev))
    prev = torch.randint(0, n_actions, (2, 6), device=dev)
    runs = [world.rollout(ctx, prev[:, :3], prev[:, 3:], use_cache=c,
                          generator=torch.Generator(device=dev).manual_seed(0)) for c in (True, False)]
    assert runs[0].device.type == "cuda"
    torch.testing.assert_close(runs[0], runs[1], atol=1e-3, rtol=1e-3)
