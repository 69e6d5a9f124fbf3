"""BatchLoader / InfiniteLoader: batching, sharding, determinism and exact resume."""
from __future__ import annotations

import pytest
import torch

from bitnas.data import Augment, BatchLoader, ImageDataset, InfiniteLoader
from bitnas.errors import DataError


def _dataset(n: int = 23) -> ImageDataset:
    """Labels are the sample indices, so batches reveal which samples they hold."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return ImageDataset(images, torch.arange(n), n, (0.5,), (0.25,), "toy", "memory")


def _collect(it) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in it]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_batches_normalised_and_complete() -> None:
    ds = _dataset()
    loader = BatchLoader(ds, batch_size=5, shuffle=False, seed=0)
    batches = _collect(loader)
    assert len(loader) == len(batches) == 5
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (5, 1, 8, 8)
    assert torch.allclose(x, (ds.images[:5].float() / 255 - 0.5) / 0.25, atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(23))
    assert len(BatchLoader(ds, 5, False, 0, drop_last=True)) == 4


def test_shuffle_depends_on_seed_and_epoch_only() -> None:
    ds = _dataset()
    a = BatchLoader(ds, 4, shuffle=True, seed=1)
    b = BatchLoader(ds, 4, shuffle=True, seed=1)
    ya = torch.cat([y for _, y in a])
    assert torch.equal(ya, torch.cat([y for _, y in b]))
    assert not torch.equal(ya, torch.arange(23))
    assert torch.equal(torch.sort(ya).values, torch.arange(23))
    a.set_epoch(1)
    assert not torch.equal(ya, torch.cat([y for _, y in a]))
    c = BatchLoader(ds, 4, shuffle=True, seed=2)
    assert not torch.equal(ya, torch.cat([y for _, y in c]))


@pytest.mark.parametrize("n", [22, 23])
def test_two_ranks_cover_the_epoch(n: int) -> None:
    ds = _dataset(n)
    ranks = [BatchLoader(ds, 4, shuffle=True, seed=0, rank=r, world_size=2) for r in range(2)]
    for ld in ranks:
        ld.set_epoch(3)
    ys = [torch.cat([y for _, y in ld]) for ld in ranks]
    assert len(ranks[0]) == len(ranks[1]) and len(ys[0]) == len(ys[1]) == -(-n // 2)
    union = torch.cat(ys)
    assert set(union.tolist()) == set(range(n))
    if n % 2 == 0:
        assert len(set(ys[0].tolist()) & set(ys[1].tolist())) == 0
    else:
        assert len(union) == n + 1
    single = BatchLoader(ds, 4, shuffle=True, seed=0)
    single.set_epoch(3)
    order = single.indices()
    assert torch.equal(ys[0], torch.cat([order, order[:1]])[0::2][: len(ys[0])])


def test_resume_mid_epoch_gives_identical_batches() -> None:
    ds = _dataset()
    aug = Augment(crop_padding=2, hflip=True, cutout=3)
    ref = BatchLoader(ds, 4, shuffle=True, seed=7, augment=aug)
    ref.set_epoch(2)
    full = _collect(ref)

    run = BatchLoader(ds, 4, shuffle=True, seed=7, augment=aug)
    run.set_epoch(2)
    it = iter(run)
    for _ in range(3):
        next(it)
    state = run.state_dict()
    assert state["epoch"] == 2 and state["batch"] == 3

    resumed = BatchLoader(ds, 4, shuffle=True, seed=7, augment=aug)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest = _collect(resumed)
    assert _same(rest, full[3:])
    assert _same(_collect(ref.iter_from(3)), full[3:])
    resumed.set_epoch(3)
    assert resumed.position == 0 and len(_collect(resumed)) == len(ref)


def test_finished_epoch_replays_from_start() -> None:
    ld = BatchLoader(_dataset(), 5, shuffle=True, seed=0, augment=Augment(hflip=True))
    assert _same(_collect(ld), _collect(ld))


def test_infinite_loader_cycles_and_resumes_exactly() -> None:
    ds = _dataset()
    aug = Augment(crop_padding=1, hflip=True)
    inf = InfiniteLoader(BatchLoader(ds, 6, shuffle=True, seed=3, augment=aug))
    stream = [next(inf) for _ in range(14)]
    assert inf.loader.epoch == 3
    ys = torch.cat([y for _, y in stream[:4]])
    assert torch.equal(torch.sort(ys).values, torch.arange(23))

    first = InfiniteLoader(BatchLoader(ds, 6, shuffle=True, seed=3, augment=aug))
    for _ in range(4):
        next(first)
    state = first.state_dict()
    second = InfiniteLoader(BatchLoader(ds, 6, shuffle=True, seed=3, augment=aug))
    second.load_state_dict(state)
    assert _same([next(second) for _ in range(10)], stream[4:])


def test_loader_argument_errors() -> None:
    ds = _dataset()
    with pytest.raises(DataError, match=r"batch_size: must be at least 1"):
        BatchLoader(ds, 0, shuffle=False, seed=0)
    with pytest.raises(DataError, match=r"batch_size: 50 is larger than the 23 samples"):
        BatchLoader(ds, 50, shuffle=False, seed=0, drop_last=True)
    with pytest.raises(ValueError):
        BatchLoader(ds, 4, shuffle=False, seed=0, rank=2, world_size=2)
    state = BatchLoader(ds, 4, shuffle=True, seed=0).state_dict()
    with pytest.raises(DataError, match=r"loader state: saved with seed=0 but this run has seed=1"):
        BatchLoader(ds, 4, shuffle=True, seed=1).load_state_dict(state)
