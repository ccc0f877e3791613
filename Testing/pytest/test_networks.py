"""Tests of DeepLungRegLib/networks shared by the networks (batch norm at inference, old weights)."""

from __future__ import annotations

import pytest
import torch

from DeepLungRegLib.device import precision_scope


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mlvirnet", "labeldriven"])
def test_batch_norm_uses_each_inputs_own_statistics_at_inference_and_old_weights_still_load(method, device):
    from DeepLungRegLib.training import NetworkConfig, build_network, load_network_state

    torch.manual_seed(0)
    cfg = NetworkConfig(method=method, spacing_mm=8.0, shape=(32, 32, 32), width=0.25)
    net = build_network(cfg)
    for p in net.parameters():  # away from the zero-initialised heads, so that outputs differ
        p.data.add_(0.05 * torch.randn_like(p))
    f, m = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    net, f, m = net.to(device), f.to(device), m.to(device)
    with torch.no_grad(), precision_scope("float32", torch.device(device)):  # no TF32 convolutions on CUDA
        trained_like = net.train()(f, m)
        infer = net.eval()(f, m)
    first = (lambda out: out[0]) if method == "mlvirnet" else (lambda out: out[-1])
    assert float(first(trained_like).abs().max()) > 0 and torch.allclose(first(trained_like), first(infer), atol=1e-5)
    # weights saved when batch norm kept running statistics: those are dropped, nothing else
    state = {k: v.cpu() for k, v in net.state_dict().items()}
    bn = [k.rsplit(".", 1)[0] for k, v in state.items() if k.endswith(".bias") and k.rsplit(".", 1)[0] + ".weight" in state
          and state[k.rsplit(".", 1)[0] + ".weight"].ndim == 1]
    assert bn
    old = dict(state, **{f"{b}.running_mean": torch.zeros(1) for b in bn}, **{f"{b}.num_batches_tracked": torch.tensor(3) for b in bn})
    fresh = build_network(cfg)
    load_network_state(fresh, old)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), state.values()))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_network_state(fresh, dict(state, **{"extra.weight": torch.zeros(1)}))


def test_the_reverse_registration_of_a_chosen_direction_runs_the_turned_way():
    """The inverse-consistency uncertainty registers the pair the other way round: a network run ``forward`` on the pair
    runs ``reverse`` on the turned pair (and the other way), ``auto`` stays ``auto``; the uncertainty is off there."""
    from DeepLungRegLib.methods import get_method

    cls = get_method("lindef").config_cls
    for given, turned in (("forward", "reverse"), ("reverse", "forward"), ("auto", "auto")):
        back = cls.from_dict({"direction": given, "uncertainty": True, "refine_iterations": [5]}).reverse_config()
        assert back.direction == turned and back.uncertainty is False and back.refine_iterations == (5,)
