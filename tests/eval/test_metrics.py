"""Hand-computed k-NN votes and segmentation scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mixedae.eval.common import load_eval_config
from mixedae.eval.knn import KnnConfig, block_shape, knn_evaluate, knn_scores
from mixedae.eval.metrics import confusion_matrix, segmentation_scores, topk_accuracy

# four train vectors: cosine similarities to the query (2, 0) are 1.0, 0.8, 0.6 and -1.0
TRAIN = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-3.0, 0.0]])
LABELS = torch.tensor([0, 1, 1, 2])
QUERY = torch.tensor([[2.0, 0.0]])


def test_knn_votes_by_hand():
    scores = knn_scores(TRAIN, LABELS, QUERY, num_classes=3, ks=(1, 3, 10), temperature=1.0)
    e = math.exp
    torch.testing.assert_close(scores[1], torch.tensor([[e(1.0), 0.0, 0.0]]))
    torch.testing.assert_close(scores[3], torch.tensor([[e(1.0), e(0.8) + e(0.6), 0.0]]))
    # k = 10 > 4 train vectors: all four vote
    torch.testing.assert_close(scores[10], torch.tensor([[e(1.0), e(0.8) + e(0.6), e(-1.0)]]))
    # T = 1: the two class-1 neighbours outvote the nearest one (4.05 > 2.72) ...
    assert scores[3].argmax().item() == 1
    # ... T = 0.07 makes the nearest neighbour dominate: e^(1/.07) > e^(.8/.07) + e^(.6/.07)
    sharp = knn_scores(TRAIN, LABELS, QUERY, num_classes=3, ks=(3,), temperature=0.07)[3]
    torch.testing.assert_close(sharp, torch.tensor([[e(1 / 0.07), e(0.8 / 0.07) + e(0.6 / 0.07), 0.0]]))
    assert sharp.argmax().item() == 0


def full_matrix_knn(train, labels, test, num_classes, k, temperature):
    """Reference: the whole cosine-similarity matrix in numpy float64, a full sort per row, then the votes."""
    a = train.double().numpy()
    b = test.double().numpy()
    sim = (b / np.linalg.norm(b, axis=1, keepdims=True)) @ (a / np.linalg.norm(a, axis=1, keepdims=True)).T
    out = np.zeros((len(b), num_classes))
    for row in range(len(b)):
        for j in np.argsort(-sim[row], kind="stable")[:k]:
            out[row, labels[j]] += math.exp(sim[row, j] / temperature)
    return out


@pytest.mark.parametrize("val_chunk,train_chunk", [(3, 7), (1, 1), (7, 50), (4, 13), (2, 64)])
def test_blocked_knn_equals_the_full_matrix(val_chunk, train_chunk):
    """Chunks that do not divide 7 val / 50 train rows, and k (20, 60 > 50 train) above the train chunk."""
    g = torch.Generator().manual_seed(0)
    train = torch.randn(50, 8, generator=g, dtype=torch.float64)
    test = torch.randn(7, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (50,), generator=g)
    got = knn_scores(train, labels, test, 4, (1, 5, 20, 60), 0.07, val_chunk=val_chunk, train_chunk=train_chunk)
    for k in (1, 5, 20, 60):
        want = full_matrix_knn(train, labels.numpy(), test, 4, k, 0.07)
        np.testing.assert_allclose(got[k].numpy(), want, rtol=1e-9, err_msg=f"k={k}")


def test_block_shape_respects_the_memory_bound():
    for num_val, num_train, max_bytes in [(50_000, 1_281_167, 512 * 2**20), (7, 50, 40), (7, 50, 1), (3, 10**6, 4000),
                                          (10**6, 3, 4000), (8, 40, 10**9)]:
        val, train = block_shape(num_val, num_train, max_bytes)
        assert 1 <= val <= num_val and 1 <= train <= num_train
        assert val * train * 4 <= max(max_bytes, 4), (num_val, num_train, max_bytes)
    assert block_shape(8, 40, 10**9) == (8, 40)  # everything fits: one block
    assert block_shape(3, 10**6, 4000) == (3, 333)  # a short side gives the long one the rest of the budget


class MatmulOutputs(TorchDispatchMode):
    """Records the number of elements of every matrix product computed while active."""

    def __init__(self):
        super().__init__()
        self.cells: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default):
            self.cells.append(out.numel())
        return out


def test_knn_evaluate_keeps_every_similarity_block_within_block_mib():
    g = torch.Generator().manual_seed(1)
    train = {"cls": torch.randn(300, 8, generator=g), "patch_mean": torch.randn(300, 8, generator=g),
             "targets": torch.randint(0, 5, (300,), generator=g)}
    val = {"cls": torch.randn(41, 8, generator=g), "patch_mean": torch.randn(41, 8, generator=g),
           "targets": torch.randint(0, 5, (41,), generator=g)}
    cfg = load_eval_config(KnnConfig, "synthetic", ["block_mib=0.001", "device=cpu"], {"ks": [3, 20]})  # 1048 bytes
    with MatmulOutputs() as seen:
        got = knn_evaluate(train, val, 5, cfg)
    assert seen.cells and max(seen.cells) * 4 <= 0.001 * 2**20  # float32 similarity blocks, never [41, 300]
    for name in ("cls", "patch_mean"):
        for k in (3, 20):
            want = full_matrix_knn(train[name], train["targets"].numpy(), val[name], 5, k, 0.07).argmax(1)
            assert got[name]["top1"][str(k)] == pytest.approx(100 * np.mean(want == val["targets"].numpy()))


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    targets = torch.tensor([1, 1, 0, 0])
    acc = topk_accuracy(scores, targets, ks=(1, 2, 5))
    assert acc == pytest.approx({"top1": 50.0, "top2": 75.0, "top5": 100.0})


def test_confusion_matrix_and_scores_by_hand():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 3]])
    conf = confusion_matrix(pred, target, num_classes=4, ignore_index=255)
    # rows = truth, columns = prediction; the ignored pixel (predicted 3) is not counted
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    scores = segmentation_scores(conf)
    # IoU: class 0 = 1 / (1 + 1 + 1), class 1 = 2 / (2 + 1 + 0), class 2 = 0 / 1, class 3 absent (no IoU)
    assert scores["per_class_iou"][:3] == pytest.approx([100 / 3, 200 / 3, 0.0]) and scores["per_class_iou"][3] is None
    assert scores["mIoU"] == pytest.approx(100 / 3)
    assert scores["pixel_acc"] == pytest.approx(60.0)


def test_confusion_matrix_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 5]), num_classes=3, ignore_index=255)
