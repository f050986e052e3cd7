"""Any config transformers can build has a layer count, whatever its key (MPT n_layers, GPT-2 n_layer),
and plans; one that has none is one line saying so."""

from __future__ import annotations

import json

import pytest

from memprof.cli import main
from memprof.errors import ConfigError
from memprof.simulate import layer_count, max_positions, with_layers

TINY_MPT = {"model_type": "mpt", "d_model": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 256, "max_seq_len": 128,
            "expansion_ratio": 2}  # fmt: skip


def test_mpt_layer_count_is_its_n_layers_and_with_layers_sets_it():
    assert layer_count(TINY_MPT) == 2
    deeper = with_layers(TINY_MPT, 5)
    assert deeper["n_layers"] == 5 and "num_hidden_layers" not in deeper


def test_a_config_without_the_key_takes_transformers_default():
    from transformers import MptConfig

    config = {k: v for k, v in TINY_MPT.items() if k != "n_layers"}
    assert layer_count(config) == MptConfig().num_hidden_layers
    assert with_layers(config, 3)["n_layers"] == 3


def test_mpt_positions_are_its_max_seq_len():
    assert max_positions(TINY_MPT) == 128


def test_a_config_with_no_layer_count_is_a_config_error_in_one_line():
    with pytest.raises(ConfigError, match="cannot tell the layer count of this no-such-arch config") as info:
        layer_count({"model_type": "no-such-arch", "hidden_size": 8})
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_memprof_plan_plans_a_tiny_mpt(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(TINY_MPT))
    assert main(["plan", str(tmp_path), "--device", "cpu", "--seq", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layers"] == 2 and report["architecture"]
    assert report["gpus"][0]["fits"] and report["breakdown"]["weights_bytes"] > 0


def test_a_config_without_a_position_limit_takes_its_config_classs_default():
    """What transformers builds the model with: GPT-2 1,024 positions, BERT 512; BLOOM (ALiBi) none,
    answered without asking transformers (UNBOUNDED_TYPES, checked against it here)."""
    from transformers import CONFIG_MAPPING

    from memprof.simulate.config import UNBOUNDED_TYPES, _class_default_positions, max_positions

    assert max_positions({"model_type": "gpt2", "n_layer": 2}) == 1024
    assert max_positions({"model_type": "bert"}) == 512
    assert max_positions({"model_type": "gpt2", "n_positions": 64}) == 64  # the file's own first
    assert max_positions({"model_type": "no-such-type"}) is None
    for model_type in UNBOUNDED_TYPES:
        assert max_positions({"model_type": model_type}) is None
        assert _class_default_positions(model_type) is None
        assert CONFIG_MAPPING[model_type]  # a type transformers knows
