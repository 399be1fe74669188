"""Hand-computed k-NN votes and segmentation scores."""

from __future__ import annotations

import math

import pytest
import torch

from mixedae.eval.knn import knn_scores
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


def test_knn_chunking_does_not_change_scores():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 8, generator=g), torch.randn(7, 8, generator=g)
    labels = torch.randint(0, 4, (50,), generator=g)
    whole = knn_scores(train, labels, test, 4, (5, 20), 0.07, chunk_size=1024)
    parts = knn_scores(train, labels, test, 4, (5, 20), 0.07, chunk_size=3)
    for k in (5, 20):
        torch.testing.assert_close(whole[k], parts[k])


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
