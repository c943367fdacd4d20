"""DeviceLoader: order, batching, subsets, sharding and the transform hook."""

import warnings

import numpy as np
import pytest
import torch

from fitvision.data.augment import train_pipeline
from fitvision.data.loader import DeviceLoader
from fitvision.errors import FitVisionError


def _data(n=50, h=4, w=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), np.arange(n, dtype=np.int64)


def _seen(loader):
    """Labels (here: image indices) in the order the loader yields them."""
    return torch.cat([y for _, y in loader]).tolist()


def test_unshuffled_batches_are_the_images_in_order():
    x, y = _data()
    dl = DeviceLoader(x, y, batch_size=16)
    batches = list(dl)
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2] and len(dl) == 4
    xb, yb = batches[1]
    assert xb.dtype == torch.float32 and xb.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal((xb * 255).round().to(torch.uint8).permute(0, 2, 3, 1), torch.from_numpy(x[16:32]))
    assert yb.tolist() == list(range(16, 32))


def test_images_are_kept_as_uint8_channels_last():
    x, y = _data()
    dl = DeviceLoader(x, y, batch_size=8)
    assert dl.images.dtype == torch.uint8 and dl.images.shape == (50, 3, 4, 5)
    assert dl.images.is_contiguous(memory_format=torch.channels_last)
    nchw = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    assert torch.equal(DeviceLoader(nchw, y, 8).images, dl.images)  # torch NCHW input


def test_drop_last_and_len():
    x, y = _data()
    assert len(DeviceLoader(x, y, 16, drop_last=True)) == 3
    assert len(DeviceLoader(x, y, 16, drop_last=False)) == 4
    assert len(DeviceLoader(x, y, 10, drop_last=True)) == 5
    assert len(_seen(DeviceLoader(x, y, 16, shuffle=True, drop_last=True))) == 48
    empty = DeviceLoader(x[:0], y[:0], 16, shuffle=True)  # no images: no batches, no error
    assert len(empty) == 0 and list(empty) == []


def test_permutation_is_deterministic_per_seed_and_epoch_and_resumable():
    x, y = _data()
    a = DeviceLoader(x, y, 16, shuffle=True, seed=3)
    first, second = _seen(a), _seen(a)  # iterating to the end advances the epoch
    assert sorted(first) == list(range(50)) and first != second and a.epoch == 2
    b = DeviceLoader(x, y, 16, shuffle=True, seed=3)
    b.set_epoch(1)  # resume straight into epoch 1
    assert _seen(b) == second
    assert _seen(DeviceLoader(x, y, 16, shuffle=True, seed=4)) != first


def test_transform_gets_uint8_batch_device_generator_and_epoch():
    x, y = _data()
    calls = []

    def record(xb, gen, epoch):
        calls.append((xb.dtype, xb.shape, gen.device.type, epoch))
        return xb

    dl = DeviceLoader(x, y, 25, transform=record)
    dl.set_epoch(7)
    list(dl)
    assert calls == [(torch.uint8, (25, 3, 4, 5), "cpu", 7)] * 2


def test_same_seed_same_augmented_batches():
    x, y = _data(n=64, h=32, w=32)
    pipe = train_pipeline("crop_flip", 32, (0.5,) * 3, (0.25,) * 3)

    def run(seed):
        return [b for b, _ in DeviceLoader(x, y, 32, shuffle=True, seed=seed, transform=pipe)]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_subset_selects_images_and_labels():
    x, y = _data()
    sub = DeviceLoader(x, y, 4).subset([7, 3, 40])
    xb, yb = next(iter(sub))
    assert len(sub) == 1 and yb.tolist() == [7, 3, 40]
    assert torch.equal(sub.images.permute(0, 2, 3, 1), torch.from_numpy(x[[7, 3, 40]]))


def test_subset_rejects_out_of_range():
    x, y = _data()
    with pytest.raises(FitVisionError, match=r"subset indices must lie in \[0, 50\), got 2..50"):
        DeviceLoader(x, y, 4).subset([2, 50])


@pytest.mark.parametrize("n,drop_last", [(48, True), (50, False)])
def test_shards_are_disjoint_and_complete(n, drop_last):
    x, y = _data(n=n)
    shards = [_seen(DeviceLoader(x, y, 4, shuffle=True, drop_last=drop_last, seed=9, rank=r, world_size=3))
              for r in range(3)]
    if drop_last:
        assert [len(s) for s in shards] == [16, 16, 16]  # equal lengths keep DDP ranks in step
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == n and sorted(flat) == list(range(n))


def test_shards_slice_one_shared_permutation():
    x, y = _data(n=30)
    whole = DeviceLoader(x, y, 4, shuffle=True, seed=2).order()
    for r in range(3):
        assert torch.equal(DeviceLoader(x, y, 4, shuffle=True, seed=2, rank=r, world_size=3).order(), whole[r::3])


def test_memmap_input_and_host_staging_give_the_same_batches(tmp_path):
    x, y = _data(n=40)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    a = [b for b, _ in DeviceLoader(x, y, 16, shuffle=True, seed=5)]
    b = [b for b, _ in DeviceLoader(mapped, y, 16, shuffle=True, seed=5, host_staging=True)]
    assert len(a) == 3 and all(torch.equal(p, q) for p, q in zip(a, b))


def test_read_only_memmaps_load_without_warning_and_are_copied(tmp_path):
    x, y = _data(n=40)
    for name, arr in (("x", x), ("y", y)):
        out = np.lib.format.open_memmap(tmp_path / f"{name}.npy", mode="w+", dtype=arr.dtype, shape=arr.shape)
        out[:] = arr
        out.flush()
        del out
    mx = np.lib.format.open_memmap(tmp_path / "x.npy", mode="r")
    my = np.lib.format.open_memmap(tmp_path / "y.npy", mode="r")
    assert not mx.flags.writeable and not my.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning becomes an error
        dl = DeviceLoader(mx, my, 16)
        sub = dl.subset(my[:10])
        batches = list(dl)
    ref = DeviceLoader(x, y, 16)
    assert torch.equal(dl.images, ref.images) and torch.equal(dl.labels, ref.labels)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(batches, ref))
    assert torch.equal(sub.labels, torch.arange(10))
    # torch warns only once per process, so also check the cause: the labels are a copy, not
    # a view of the file.
    assert dl.labels.data_ptr() != my.ctypes.data


def test_bad_inputs_have_clear_messages():
    x, y = _data()
    with pytest.raises(FitVisionError, match=r"images must be uint8 \(N, H, W, C\), got float32"):
        DeviceLoader(x.astype(np.float32), y, 4)
    with pytest.raises(FitVisionError, match=r"expected 50 labels to match the images, got shape \(49,\)"):
        DeviceLoader(x, y[:49], 4)
    with pytest.raises(FitVisionError, match="rank 3 is outside world size 2"):
        DeviceLoader(x, y, 4, rank=3, world_size=2)
