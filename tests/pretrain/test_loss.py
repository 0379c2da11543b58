"""The pretraining losses against hand-computed values, autograd, PyTorch's own soft-target
cross-entropy, the loader's label packing, and bf16 autocast on CPU."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from data.loader.labels import multi_hot_targets, pack_labels
from pretrain.loss import MultiLabelSigmoidLoss, MultiLabelSoftmaxLoss, create_loss

LN2, LN3 = math.log(2.0), math.log(3.0)


def _random_batch(rows: int, classes: int, seed: int, dtype=torch.float32):
    """Logits and 0/1 multi-hot rows with 1..4 labels each."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=gen, dtype=dtype) * 3
    targets = torch.zeros(rows, classes, dtype=dtype)
    for row in range(rows):
        k = int(torch.randint(1, 5, (1,), generator=gen))
        targets[row, torch.randperm(classes, generator=gen)[:k]] = 1
    return logits, targets


def test_softmax_loss_matches_hand_computed_value():
    # Row 0: logits ln(1, 2, 3) -> softmax (1/6, 2/6, 3/6); labels {1, 2} (k=2):
    #        -(1/2) * (ln(2/6) + ln(3/6)) = (1/2) * (ln 3 + ln 2)
    # Row 1: logits (0, 0, 0) -> softmax 1/3 each; label {0} (k=1): -ln(1/3) = ln 3
    # Row 2: no labels -> left out of the mean
    # Mean over the 2 labelled rows: ((ln 2 + ln 3) / 2 + ln 3) / 2
    logits = torch.tensor([[0.0, LN2, LN3], [0.0, 0.0, 0.0], [5.0, -1.0, 2.0]])
    targets = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    expected = ((LN2 + LN3) / 2 + LN3) / 2
    assert MultiLabelSoftmaxLoss()(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_softmax_gradient_is_softmax_minus_target_over_labelled_rows():
    # d/dz of -(1/k) sum_h log softmax(z)_h is softmax(z) - t (t = 1/k on the labels), and the
    # mean over the 2 labelled rows divides it by 2; the unlabelled row gets no gradient.
    logits = torch.tensor([[0.0, LN2, LN3], [0.0, 0.0, 0.0], [5.0, -1.0, 2.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    MultiLabelSoftmaxLoss()(logits, targets).backward()
    expected = torch.tensor([[1 / 6 - 0, 2 / 6 - 1 / 2, 3 / 6 - 1 / 2],
                             [1 / 3 - 1, 1 / 3 - 0, 1 / 3 - 0],
                             [0.0, 0.0, 0.0]]) / 2
    torch.testing.assert_close(logits.grad, expected, rtol=0, atol=1e-6)


def test_softmax_loss_equals_cross_entropy_with_soft_targets():
    logits, targets = _random_batch(rows=16, classes=50, seed=0)
    ours = MultiLabelSoftmaxLoss()(logits, targets)
    reference = F.cross_entropy(logits, targets / targets.sum(dim=1, keepdim=True))
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_unlabelled_rows_do_not_change_the_loss():
    logits, targets = _random_batch(rows=8, classes=20, seed=1)
    loss = MultiLabelSoftmaxLoss()
    padded_logits = torch.cat([logits, torch.randn(5, 20) * 10])
    padded_targets = torch.cat([targets, torch.zeros(5, 20)])
    torch.testing.assert_close(loss(padded_logits, padded_targets), loss(logits, targets))


def test_all_unlabelled_batch_gives_zero_with_a_connected_graph():
    logits = torch.randn(4, 6, requires_grad=True)
    value = MultiLabelSoftmaxLoss()(logits, torch.zeros(4, 6))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(logits.grad, torch.zeros(4, 6))


def test_softmax_loss_is_stable_on_huge_logits():
    # log-sum-exp of (1000, 0) is 1000 + ln(1 + e^-1000) = 1000 in float32, so the loss of
    # label 1 is 1000 - 0 = 1000 and of label 0 is 0; mean over the 2 rows = 500.
    logits = torch.tensor([[1000.0, 0.0], [1000.0, 0.0]])
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert MultiLabelSoftmaxLoss()(logits, targets).item() == pytest.approx(500.0, rel=1e-6)


def test_loader_multi_hot_and_soft_targets_give_the_same_loss():
    labels = pack_labels([[3], [0, 7, 2], [], [5, 5, 1]])
    logits = torch.randn(4, 9, generator=torch.Generator().manual_seed(2))
    loss = MultiLabelSoftmaxLoss()
    multi_hot = multi_hot_targets(labels, 9)
    from_multi_hot = loss(logits, multi_hot)
    soft = multi_hot / multi_hot.sum(dim=1, keepdim=True).clamp(min=1.0)  # 1/k on each of k labels
    torch.testing.assert_close(from_multi_hot, loss(logits, soft))
    log_probs = F.log_softmax(logits, dim=1)
    by_hand = -(log_probs[0, 3] + log_probs[1, [0, 7, 2]].mean() + log_probs[3, [1, 5]].mean()) / 3
    torch.testing.assert_close(from_multi_hot, by_hand)


@pytest.mark.parametrize("loss", [MultiLabelSoftmaxLoss(), MultiLabelSigmoidLoss()],
                         ids=["softmax", "sigmoid"])
def test_gradcheck_in_double(loss):
    logits, targets = _random_batch(rows=5, classes=7, seed=3, dtype=torch.float64)
    targets[2] = 0  # an unlabelled row inside the checked function
    logits.requires_grad_(True)
    assert loss(logits, targets).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits,))


def test_sigmoid_loss_matches_hand_computed_value():
    # Entries: sigmoid(0) = 1/2 with target 1: -ln(1/2) = ln 2;
    #          sigmoid(ln 3) = 3/4 with target 0: -ln(1/4) = 2 ln 2;
    # row 1 has no labels and counts as two negatives at sigmoid(0): ln 2 each.
    # Summed over each row's labels, averaged over the 2 rows: (3 ln 2 + 2 ln 2) / 2 = 5/2 ln 2.
    logits = torch.tensor([[0.0, LN3], [0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert MultiLabelSigmoidLoss()(logits, targets).item() == pytest.approx(2.5 * LN2, rel=1e-6)


def test_sigmoid_loss_equals_binary_cross_entropy_on_probabilities():
    logits, targets = _random_batch(rows=6, classes=11, seed=4)
    # A mean over the N x K entries, times K: the sum over labels, averaged over rows.
    reference = F.binary_cross_entropy(torch.sigmoid(logits.double()), targets.double()) * logits.shape[1]
    torch.testing.assert_close(MultiLabelSigmoidLoss()(logits, targets).double(), reference,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_bf16_autocast_on_cpu_computes_in_float32(name):
    torch.manual_seed(5)
    features = torch.randn(8, 32)
    layer = torch.nn.Linear(32, 40)
    _, targets = _random_batch(rows=8, classes=40, seed=5)
    loss = create_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(features)
        value = loss(logits, targets)
    assert logits.dtype == torch.bfloat16 and value.dtype == torch.float32
    # Same bf16 logits, upcast by hand outside autocast: bit-identical.
    assert torch.equal(value, loss(logits.float(), targets))
    # Against the fp32 model: bf16 has an 8-bit mantissa, so logits of size ~1 carry ~0.4%
    # error; 2% on the loss is a generous bound.
    fp32_value = loss(layer(features), targets)
    assert value.item() == pytest.approx(fp32_value.item(), rel=2e-2)
    value.backward()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


def test_create_loss_names():
    assert isinstance(create_loss("softmax"), MultiLabelSoftmaxLoss)
    assert isinstance(create_loss("sigmoid"), MultiLabelSigmoidLoss)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\(4, 5\) and \(4, 6\)"):
        MultiLabelSoftmaxLoss()(torch.zeros(4, 5), torch.zeros(4, 6))
