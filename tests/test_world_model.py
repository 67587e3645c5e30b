"""One owner of the world model: the imagined env, the neural policy and ``rollout`` see the
world the same way (same context level, same sampler, same noise order)."""

import numpy as np
import torch

from wm.envs.imagined import ImaginedEnv
from wm.envs.neural_policy import NeuralPolicy
from wm.models.agent import Agent
from wm.models.dynamics import Dynamics
from wm.models.tokenizer import Tokenizer
from wm.world_model import WorldModel, rollout


def _world(cfg, with_tokenizer=False):
    torch.manual_seed(0)
    n_actions = len(cfg.env.action_map)
    tok = Tokenizer(cfg.tokenizer, cfg.env.height, cfg.env.width).eval()
    dyn = Dynamics(cfg.dynamics, n_actions, tok.cfg.n_latents, tok.cfg.latent_dim)
    agent = Agent(dyn, n_tasks=1, mtp=2, bins=41).eval()
    torch.nn.init.normal_(agent.frame_reward_head[-1].weight)
    return WorldModel(agent, ctx_noise=0.1, steps=2, tokenizer=tok if with_tokenizer else None), tok, n_actions


def test_imagined_env_generates_what_rollout_generates(debug_cfg):
    world, tok, n_actions = _world(debug_cfg)
    g = torch.Generator().manual_seed(3)
    ctx = torch.tanh(torch.randn(2, 3, tok.cfg.n_latents, tok.cfg.latent_dim, generator=g))
    actions = torch.randint(0, n_actions, (2, 3 + 4), generator=g)  # 3 context actions, then 4 to imagine
    prev_ctx = torch.cat([torch.full((2, 1), -1), actions[:, :2]], 1)
    env = ImaginedEnv(world, lambda seed: {"latents": ctx, "actions": actions[:, :3]}, 2, max_steps=4)
    env.reset(seed=11)
    imagined = [env.step(actions[:, 3 + i - 1] if i else actions[:, 2])[4]["latents"] for i in range(4)]
    future_prev = torch.cat([actions[:, 2:3], actions[:, 3:6]], 1)  # the action leading to each new frame
    gen = torch.Generator().manual_seed(11)
    ref = world.rollout(ctx, prev_ctx, future_prev, generator=gen)
    torch.testing.assert_close(torch.stack(imagined, 1), ref)
    # the agent tokens are hidden: the bare dynamics generates the same frames
    bare = rollout(world.dynamics, ctx, prev_ctx, future_prev, 2, 0.1, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(bare, ref, atol=1e-5, rtol=1e-5)
    uncached = world.rollout(ctx, prev_ctx, future_prev, use_cache=False, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(uncached, ref, atol=1e-4, rtol=1e-4)


def test_neural_policy_sees_frames_as_the_world_model_observes_them(debug_cfg):
    world, tok, n_actions = _world(debug_cfg, with_tokenizer=True)
    policy = NeuralPolicy(world)
    policy.reset(np.random.default_rng(5))
    seed = int(np.random.default_rng(5).integers(2**31))
    frames = np.random.default_rng(0).integers(0, 256, (4, debug_cfg.env.height, debug_cfg.env.width, 3), np.uint8)
    acts = [policy.act(f) for f in frames]
    # the same frames, encoded as one clip and observed in one uncached pass, with the same noise draws
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float() / 255.0
    z = world.encode(x)
    prev = torch.tensor([[-1, *acts[:-1]]])
    ref = []
    cache = world.new_caches().dynamics
    for t in range(4):  # one frame at a time draws noise in the policy's order (noise, then the action)
        feat = world.observe(z[:, t : t + 1], prev[:, t : t + 1], cache, gen)
        logits = world.agent.policy_logits(feat)[0, -1, 0]
        ref.append(int(torch.multinomial(logits.softmax(-1), 1, generator=gen)))
    assert acts == ref
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    whole = world.observe(z, prev, None, noise=noise)  # uncached, whole clip
    stepwise_cache = world.new_caches().dynamics
    stepwise = torch.cat([world.observe(z[:, t : t + 1], prev[:, t : t + 1], stepwise_cache, noise=noise[:, t : t + 1])
                          for t in range(4)], 1)
    torch.testing.assert_close(stepwise, whole, atol=1e-4, rtol=1e-4)
