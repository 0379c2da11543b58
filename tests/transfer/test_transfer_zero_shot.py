"""transfer/zero_shot.py: hashtag logits mapped to wnid classes through vocab.json synsets."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from data.errors import UserError
from data.vocab.vocabulary import Label, Vocabulary
from pretrain.model import create_model
from tests.transfer_factory import image_folder
from transfer.__main__ import main
from transfer.zero_shot import SynsetHead, class_mapping

REPO = Path(__file__).resolve().parents[2]

# A hand-made aligned vocabulary: two hashtags carry the dog synset, one the cat, one is no class,
# and one has no synset at all.
VOCAB = Vocabulary([Label(0, "dog", 90, ["doggy"], "n02084071"), Label(1, "cat", 80, [], "n02121808"),
                    Label(2, "puppy", 70, [], "n02084071"), Label(3, "sunset", 60, [], None),
                    Label(4, "car", 50, [], "n02958343")])
CLASSES = ["n02084071", "n02121808", "n01503061"]  # dog, cat, bird (no hashtag)


def test_class_mapping_and_unmapped_classes():
    mapping = class_mapping(VOCAB, CLASSES)
    assert mapping.labels == [[0, 2], [1], []]
    assert mapping.unmapped == ["n01503061"]
    assert mapping.to_dict() == {"classes": 3, "mapped": 2, "unmapped": ["n01503061"], "labels_used": 3}


def test_max_and_logsumexp_reductions_and_minus_inf_for_unmapped():
    logits = torch.tensor([[1.0, 2.0, 3.0, 9.0, 7.0],
                           [0.5, -1.0, -2.0, 0.0, 0.0]])
    mapping = class_mapping(VOCAB, CLASSES)
    top = SynsetHead(mapping, 5, "max")(logits)
    assert top[:, :2].tolist() == [[3.0, 2.0], [0.5, -1.0]]
    assert torch.isneginf(top[:, 2]).all()
    pooled = SynsetHead(mapping, 5, "logsumexp")(logits)
    assert pooled[0, 0].item() == pytest.approx(math.log(math.exp(1.0) + math.exp(3.0)))
    assert pooled[1, 1].item() == pytest.approx(-1.0) and torch.isneginf(pooled[:, 2]).all()
    # The non-class hashtags (sunset: 9.0, car: 7.0) never win a class.
    assert top.argmax(dim=1).tolist() == [0, 0]


def test_vocabulary_without_synsets_or_matching_classes_is_an_error():
    plain = Vocabulary([Label(0, "dog", 5), Label(1, "cat", 4)])
    with pytest.raises(UserError, match="no label carries a WordNet synset"):
        class_mapping(plain, CLASSES)
    with pytest.raises(UserError, match="none of the 2 classes"):
        class_mapping(VOCAB, ["ants", "bees"])


def test_zero_shot_evaluate_end_to_end_with_a_known_winner(tmp_path):
    # A hashtag model whose logits are its bias: 'puppy' (a dog hashtag) always wins among the class
    # hashtags, so every image is predicted 'dog' whatever its pixels: top-1 = dog's share.
    torch.manual_seed(0)
    model = create_model("resnext_micro", len(VOCAB))
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 5.0, 4.0]))
    torch.save(model.state_dict(), tmp_path / "hashtags.pth")
    VOCAB.save(tmp_path / "vocab.json")
    val = image_folder(tmp_path / "val", {"n02084071": 3, "n02121808": 2, "n01503061": 2})
    main(["evaluate", "--config", str(REPO / "configs/transfer/cpu_demo_eval.yaml"), f"init={tmp_path / 'hashtags.pth'}",
          f"data.val={val}", f"eval.zero_shot_vocab={tmp_path / 'vocab.json'}", f"run.dir={tmp_path}", "run.name=zs",
          "data.image_size=32", "data.resize_size=36", "data.workers=0"])
    result = json.loads((tmp_path / "zs" / "eval.json").read_text())
    assert result["top1"] == pytest.approx(100 * 3 / 7)
    # top-5 of 3 classes covers all of them, but the unmapped bird class (-inf) is never a hit
    assert result["top5"] == pytest.approx(100 * 5 / 7)
    assert result["settings"]["zero_shot"]["unmapped"] == ["n01503061"]
    assert [c["top1"] for c in result["per_class"]] == [0.0, 100.0, 0.0]  # sorted wnids: bird, dog, cat
