import dataclasses

import pytest

from e2e.config import CellConfig, ConfigError, LossConfig, OptimConfig
from e2e.typed import with_overrides


def test_json_round_trip_is_exact():
    cfg = CellConfig(layer=2, loss=LossConfig(setting="e2e_ds", sparsity_coeff=35.0))
    assert CellConfig.from_json(cfg.to_json()) == cfg
    assert CellConfig.from_json(cfg.to_json()).to_json() == cfg.to_json()


def test_unknown_keys_are_rejected_with_the_valid_ones():
    d = CellConfig().to_dict()
    d["optim"]["learning_rate"] = 1e-3
    with pytest.raises(ConfigError, match=r"unknown key.*learning_rate.*in optim.*'lr'"):
        CellConfig.from_dict(d)


@pytest.mark.parametrize("path,value,match", [
    (("loss", "setting"), "e2e+ds", r"loss.setting.*one of"),
    (("optim", "lr"), 5.0, r"optim.lr=5.0 is invalid: must be in \(0, 1\)"),
    (("optim", "batch_size"), 1.5, r"optim.batch_size=1.5 is invalid: must be an integer"),
    (("sae", "dict_size_to_input_ratio"), -1, r"sae.dict_size_to_input_ratio"),
    (("layer",), -1, r"layer=-1 is invalid: must be >= 0"),
    (("data", "context_length"), "1024", r"data.context_length='1024'.*integer"),
    (("wandb", "mode"), "on", r"wandb.mode"),
])
def test_bad_values_name_field_and_range(path, value, match):
    d = CellConfig().to_dict()
    node = d
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=match):
        CellConfig.from_dict(d)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CellConfig().layer = 3


def test_overrides_by_dotted_name():
    cfg = with_overrides(CellConfig(), {"optim.lr": 1e-3, "layer": 2})
    assert cfg.optim.lr == 1e-3 and cfg.layer == 2
    with pytest.raises(ConfigError, match="unknown config field 'optim.lrr'"):
        with_overrides(CellConfig(), {"optim.lrr": 1e-3})


def test_paper_defaults():
    o = OptimConfig()
    assert (o.lr, o.batch_size * o.grad_accum_steps, o.n_steps) == (5e-4, 16, 25_000)
    assert CellConfig().hook_name == "blocks.6.hook_resid_pre"
