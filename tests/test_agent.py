import torch

from wm.models.agent import Agent
from wm.models.dynamics import Dynamics
from wm.objectives.mtp import mtp_targets


def test_mtp_targets_shift_and_mask():
    x = torch.tensor([[1, 2, 3, 4]])
    tgt, valid = mtp_targets(x, 3, fill=-1)
    assert tgt[0].tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, -1], [4, -1, -1]]
    assert valid[0].tolist() == [[True] * 3, [True] * 3, [True, True, False], [True, False, False]]


def test_agent_tokens_do_not_change_dynamics_predictions(debug_cfg):
    torch.manual_seed(0)
    dyn = Dynamics(debug_cfg.dynamics, n_actions=10, n_latents=4, latent_dim=3).eval()
    agent = Agent(dyn, n_tasks=2, mtp=8, bins=41).eval()
    z = torch.randn(2, 5, 4, 3)
    tau = torch.rand(2, 5)
    d = torch.full((2,), 0.25)
    a = torch.randint(-1, 10, (2, 5))
    alone = dyn(z, tau, d, a)
    with_agent, feat = agent(z, tau, d, a, torch.tensor([0, 1]))
    torch.testing.assert_close(with_agent, alone, atol=1e-5, rtol=1e-5)  # float reorder only
    assert feat.shape == (2, 5, debug_cfg.dynamics.model.dim)
    assert agent.policy_logits(feat).shape == (2, 5, 8, 10)
    assert agent.reward_logits(feat).shape == (2, 5, 8, 41)
    # the agent token reads the frame: different latents, different features
    _, feat2 = agent(z + 1, tau, d, a, torch.tensor([0, 1]))
    assert not torch.allclose(feat, feat2)
    # and the task embedding conditions it
    _, feat3 = agent(z, tau, d, a, torch.tensor([1, 0]))
    assert not torch.allclose(feat, feat3)
