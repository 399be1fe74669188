"""Data order, augmentation seeding and step noise: the same samples whatever the process split."""

import torch

from mixedae.data.transforms import random_crop_flip
from mixedae.engine.sampling import GlobalBatchSampler, SeededAugmentation, mix_seed, seeded_crops, step_noise


class Range(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(float(i)), -1


def batches(sampler, batch):
    keys = list(sampler)
    return [keys[i : i + batch] for i in range(0, len(keys), batch)]


def test_two_ranks_together_see_the_single_process_batches():
    ds = Range(50)
    one = GlobalBatchSampler(ds, 1, 0, batch_size=8, num_micro_steps=6, seed=3)
    ranks = [GlobalBatchSampler(ds, 2, r, batch_size=4, num_micro_steps=6, seed=3) for r in (0, 1)]
    for s in [one, *ranks]:
        s.set_epoch(2)
    single = batches(one, 8)
    split = [batches(s, 4) for s in ranks]
    for k in range(6):
        assert single[k] == split[0][k] + split[1][k]
    flat = [i for b in single for _, i in b]
    assert len(set(flat)) == len(flat) == 48  # a permutation: no repeats within the epoch


def test_epochs_differ_and_resume_skips_exactly():
    ds = Range(40)
    s = GlobalBatchSampler(ds, 1, 0, batch_size=4, num_micro_steps=10, seed=0)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert [i for _, i in e0] != [i for _, i in e1]
    s.set_start(3)
    assert list(s) == e1[12:] and len(s) == 28


def test_augmentation_depends_on_seed_epoch_index_only():
    ds = Range(10)
    aug = SeededAugmentation(ds, lambda x, g: x + torch.rand((), generator=g), seed=7)
    a = aug[(1, 4)]
    torch.rand(5)  # disturbing the global stream changes nothing
    assert aug[(1, 4)] == a
    assert aug[(2, 4)] != a and aug[(1, 5)] - 5 != a - 4
    assert SeededAugmentation(ds, aug.transform, seed=8)[(1, 4)] != a
    state = torch.get_rng_state()
    aug[(0, 0)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched


def test_seeded_crops_are_the_per_image_draws():
    keys, sizes = [(0, 3), (2, 3), (0, 9)], [(32, 32), (32, 32), (40, 60)]
    boxes, flips = seeded_crops(keys, sizes, seed=5)
    for (epoch, index), (h, w), box, flip in zip(keys, sizes, boxes.tolist(), flips.tolist()):
        expected = random_crop_flip(h, w, torch.Generator().manual_seed(mix_seed(5, epoch, index)))
        assert (*box, flip) == tuple(expected)
    assert boxes[0].tolist() != boxes[1].tolist()  # another epoch, another crop


def test_step_noise_is_split_not_redrawn():
    full = step_noise(5, 11, rows_per_micro=4, length=16, accum=1, world=1)
    split = step_noise(5, 11, rows_per_micro=2, length=16, accum=1, world=2)
    accum = step_noise(5, 11, rows_per_micro=2, length=16, accum=2, world=1)
    assert torch.equal(full[0, 0], torch.cat([split[0, 0], split[0, 1]]))
    assert torch.equal(full[0, 0], torch.cat([accum[0, 0], accum[1, 0]]))
    assert not torch.equal(full, step_noise(5, 12, 4, 16, 1, 1))
