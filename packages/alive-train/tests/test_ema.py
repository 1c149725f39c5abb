"""The sharded EMA: exact update rule, warm-up, trainable parameters only."""

from __future__ import annotations

import torch
from torch import nn

from alive_train.ema import ShardedEMA


def test_ema_follows_the_update_rule_with_warmup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[1].bias.requires_grad_(False)
    ema = ShardedEMA(model, decay=0.9, warmup=True)
    assert ema.names == ["0.weight", "0.bias", "1.weight"]
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    decays = []
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        decays.append(ema.update())
        d = min(0.9, (1 + step) / (10 + step))
        for n, p in model.named_parameters():
            if p.requires_grad:
                expected[n] = d * expected[n] + (1 - d) * p.detach()
    assert decays == [min(0.9, (1 + s) / (10 + s)) for s in range(5)] and ema.updates == 5
    for name, shadow in ema.state_dict().items():
        torch.testing.assert_close(shadow, expected[name], rtol=0, atol=1e-6)
    target = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    ema.copy_to(target)
    assert torch.equal(target[0].weight, ema.state_dict()["0.weight"])


def test_without_warmup_the_decay_is_constant():
    model = nn.Linear(2, 2)
    ema = ShardedEMA(model, decay=0.5, warmup=False)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    assert ema.update() == 0.5
    torch.testing.assert_close(ema.state_dict()["weight"], start + 1.0)
