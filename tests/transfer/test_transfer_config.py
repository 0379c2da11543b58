"""transfer/config.py: the docs carry the generated key reference, and mistakes are one line naming
the key. (The recipes in configs/transfer/ are tested in tests/test_recipes.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from data.errors import UserError
from pretrain.config import all_keys, config_reference, load_config
from transfer.config import TransferConfig

REPO = Path(__file__).resolve().parents[2]


def test_docs_carry_the_generated_key_reference():
    docs = (REPO / "docs" / "transfer.md").read_text()
    assert config_reference(TransferConfig) in docs, (
        "docs/transfer.md is out of date: paste the output of `python -m transfer.config` into it")
    assert all(f"`{key}`" in docs for key in all_keys(TransferConfig))


@pytest.mark.parametrize("override,message", [
    ("data.resize_size=100", "data.resize_size must be >= data.image_size (224), got 100"),
    ("finetune.warmup_epochs=40", "finetune.warmup_epochs must be smaller than finetune.epochs (30)"),
    ("linear.weight_decays=[]", "linear.weight_decays must list at least one value"),
    ("data.kind=folder", "data.kind must be one of auto, imagefolder, imagenet_val, wds"),
    ("modle.name=x", "unknown key modle"),
    # Sizes that allocate memory or processes have upper bounds, and the error says why.
    ("data.batch_size=1e20", "data.batch_size must be in [1, 4096], got 100000000000000000000: a per-rank batch"),
    ("finetune.batch_size=10000", "finetune.batch_size must be in [1, 4096], got 10000: a per-rank batch"),
    ("data.workers=1000", "data.workers must be in [0, 64], got 1000: DataLoader processes per rank"),
    ("data.image_size=100000", "data.image_size must be in [8, 1024], got 100000: classification crops"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(UserError) as err:
        load_config(None, ["data.val=/x", override], schema=TransferConfig)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="data.val is required"):
        load_config(None, [], schema=TransferConfig)
