"""The decoded-source cache (core/cache.py), uint8 samples and training_batch (core/data.py).

Every sample the new pipeline gives, with or without a cache, cold or warm, is
compared bit for bit with the pipeline as it was (bench/data_baseline.py, main
d29ecbc), through :func:`core.data.training_batch`.
"""

import os
import warnings

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

import core.train as train
from bench import data_baseline as baseline
from core import data
from core.cache import CacheWarning, SourceCache, open_entry
from core.composite import composite_reference, fit_size
from core.utils import UserError
from tests.test_data import odd_alpha_set
from tests.test_train import LossSpy, base_args, tensors_equal, write_dataset
from tests.tiny_model import tiny_build_model
from tools import build_cache
from tools.make_synthetic import make_dataset

CROPS = ((32, 32), (48, 48), (64, 64))
REAL_STAGE_LOSS = train.stage_loss
KEYS = ("input", "image", "fg", "bg", "alpha", "trimap")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """5 foregrounds of 41–58 px (crops of 64 take the upscale path), 2 backgrounds each, one alpha
    whose channels differ, and the offline composites."""
    paths = odd_alpha_set(str(tmp_path_factory.mktemp("cache-set")), seed=4)
    comp = os.path.join(paths["root_dir"], "Training_set", "comp")
    paths["comp"] = [os.path.join(comp, k) for k in ("image", "fg", "bg", "alpha")]
    return paths


def online(paths, **kw):
    return data.OnlineCompositeDataset(paths["root_dir"], paths["train_bg_dir"], bg_per_fg=2, **kw)


def offline(paths, **kw):
    return data.CompositedDataset(*paths["comp"], **kw)


def assert_same_as_before(ds, old_item, epochs, indices=None):
    """training_batch of ds's items (one by one and as one batch) == the old float32 items, bit for bit."""
    for epoch in epochs:
        ds.set_epoch(epoch)
        indices_ = range(len(ds)) if indices is None else indices
        new = [ds[i] for i in indices_]
        old = [old_item(ds, i, epoch) for i in indices_]
        for raw, ref in zip(new, old):
            got = data.training_batch(default_collate([raw]), "cpu")
            assert got["name"] == [ref["name"]]
            for k in KEYS:
                assert got[k].dtype == torch.float32 and torch.equal(got[k][0], ref[k]), (ref["name"], epoch, k)
        batch = data.training_batch(default_collate(new), "cpu")
        for k in KEYS:
            assert torch.equal(batch[k], torch.stack([r[k] for r in old])), k


@pytest.mark.parametrize("seed,crops,size", [(0, CROPS, (32, 32)), (9, ((40, 56), (64, 48)), (32, 64))])
def test_online_samples_equal_the_old_pipeline_without_cold_and_warm_cache(synthetic, tmp_path, seed, crops, size):
    fits = [fit_size(*cv2.imread(online(synthetic).jobs[i]["fg"]).shape[:2], *cv2.imread(bg).shape[:2])
            for i, _, bg in online(synthetic).samples]
    assert any(f is not None for f in fits)  # some backgrounds are upscaled by the fit
    kw = dict(crop_sizes=crops, size=size, seed=seed)
    assert_same_as_before(online(synthetic, **kw), baseline.online_item, range(3))
    cached = online(synthetic, cache_dir=tmp_path / "c", cache_backgrounds=True, **kw)
    assert_same_as_before(cached, baseline.online_item, (0,))  # cold: filled on the way
    assert cached.sources.cache.has(cached.jobs[0]["fg"], data.BGR_ENTRY)
    assert_same_as_before(cached, baseline.online_item, (1, 2, 5))  # warm
    fg_only = online(synthetic, cache_dir=tmp_path / "c", **kw)  # backgrounds decoded each time
    assert_same_as_before(fg_only, baseline.online_item, (3,))


def test_offline_samples_equal_the_old_pipeline_with_a_cache(synthetic, tmp_path):
    assert_same_as_before(offline(synthetic, crop_sizes=CROPS, size=(32, 32), seed=3), baseline.offline_item, (0, 1))
    cached = offline(synthetic, crop_sizes=CROPS, size=(32, 32), seed=3, cache_dir=tmp_path / "c")
    assert_same_as_before(cached, baseline.offline_item, (0, 1, 2))
    assert cached.cache_report().endswith(f"{4 * len(cached)} of {4 * len(cached)} source images of this set "
                                          "decoded (100%)")


def test_the_default_crops_on_foregrounds_around_their_size(tmp_path):
    """320/480/640 crops of 340–460 px foregrounds: the window path and the upscale path."""
    paths = make_dataset(str(tmp_path / "d"), num_fg=3, num_test_fg=1, size=400, seed=1, train_bg_per_fg=2,
                         test_bg_per_fg=1)
    ds = data.OnlineCompositeDataset(paths["root_dir"], paths["train_bg_dir"], bg_per_fg=2, seed=2,
                                     cache_dir=tmp_path / "c")
    assert_same_as_before(ds, baseline.online_item, range(3))


def test_composite_uint8_equals_the_reference_blend_for_every_input():
    v = np.arange(256, dtype=np.uint8)
    fg, bg = (x.reshape(256, 256, 1).repeat(3, axis=2) for x in np.meshgrid(v, v, indexing="ij"))
    for a in range(256):
        alpha = np.full((256, 256), a, np.uint8)
        assert np.array_equal(data.composite_uint8(fg, bg, alpha), composite_reference(fg, bg, alpha)), a
    rng = np.random.default_rng(0)
    fg, bg, a3 = (rng.integers(0, 256, (9, 7, 3), dtype=np.uint8) for _ in range(3))
    assert np.array_equal(data.composite_uint8(fg, bg, a3), composite_reference(fg, bg, a3))  # per-channel alpha


def test_training_batch_tables_equal_make_input_for_every_value():
    from core.preprocess import make_input

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image[0, :, :] = np.arange(16)[:, None] * 17  # includes 0 and 255
    image[1, :, 0], image[2, :, 1], image[3, :, 2] = (np.arange(240, 256, dtype=np.uint8),) * 3
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), (16, 16))
    alpha = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    item = data.make_item(image, image, image, alpha, trimap, "x")
    got = data.training_batch(default_collate([item]), "cpu")
    assert torch.equal(got["input"][0], torch.from_numpy(make_input(image, trimap)))
    assert torch.equal(got["alpha"][0], torch.from_numpy(alpha.astype(np.float32)[None] / np.float32(255)))
    assert torch.equal(got["trimap"][0], torch.from_numpy(trimap.astype(np.float32)[None]))
    assert got["image"].dtype == torch.float32 and got["name"] == ["x"]


def test_a_truncated_or_garbled_entry_is_rebuilt_with_one_warning_and_never_served(synthetic, tmp_path):
    ds = online(synthetic, crop_sizes=CROPS, size=(32, 32), cache_dir=tmp_path / "c")
    data.build_cache(ds)
    fg_path = ds.jobs[0]["fg"]
    entry = ds.sources.cache.entry_path(fg_path, "bgr")
    whole = open(entry, "rb").read()
    for broken in (whole[:len(whole) // 2], whole[:40], whole + b"\0", b"not an npy file at all"):
        with open(entry, "wb") as f:
            f.write(broken)
        with pytest.raises((ValueError, OSError)):
            open_entry(entry, np.uint8, (3,))
        fresh = data.Sources(tmp_path / "c")  # each a new process's view: one warning each
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = fresh.bgr(fg_path)
            fresh.bgr(fg_path)
        assert [w.category for w in caught] == [CacheWarning] and entry in str(caught[0].message)
        assert np.array_equal(got, cv2.imread(fg_path)) and open(entry, "rb").read() == whole
    with open(entry, "wb") as f:
        f.write(whole[:-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        assert_same_as_before(ds, baseline.online_item, (0,), indices=[0, 1])


def test_a_changed_source_is_decoded_again(synthetic, tmp_path):
    ds = online(synthetic, crop_sizes=CROPS, size=(32, 32), cache_dir=tmp_path / "c")
    data.build_cache(ds)
    fg_path = ds.jobs[1]["fg"]
    before = ds.sources.cache.entry_path(fg_path, "bgr")
    original = open(fg_path, "rb").read()
    try:
        img = cv2.imread(fg_path)
        cv2.imwrite(fg_path, 255 - img)
        st = os.stat(fg_path)
        os.utime(fg_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
        assert ds.sources.cache.entry_path(fg_path, "bgr") != before
        assert np.array_equal(ds.sources.bgr(fg_path), cv2.imread(fg_path))
        assert_same_as_before(ds, baseline.online_item, (0,), indices=[2, 3])  # samples of foreground 1
    finally:
        with open(fg_path, "wb") as f:
            f.write(original)


def test_an_unwritable_cache_folder_is_one_line(synthetic, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"^--cache_dir .*file/cache: cannot write there"):
        online(synthetic, cache_dir=blocker / "cache")
    root = synthetic["root_dir"]
    with pytest.raises(SystemExit) as exc:
        build_cache.run_cli(build_cache.main, ["--online", "--adobeDir", root, "--cocoDir", synthetic["train_bg_dir"],
                                               "--bgPerFg", "2", "--cache_dir", str(blocker / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "cannot write there" in err[0]


def test_build_cache_command_fills_the_cache_and_reports_it(synthetic, tmp_path, capsys):
    args = ["--online", "--adobeDir", synthetic["root_dir"], "--cocoDir", synthetic["train_bg_dir"],
            "--bgPerFg", "2", "--cache_dir", str(tmp_path / "c"), "--workers", "2"]
    assert build_cache.main(args) == 0
    out = capsys.readouterr().out
    assert "0 of 10 source images" in out and "decoded 10, 0 already there" in out and "10 of 10" in out
    assert build_cache.main(args + ["--cache_backgrounds"]) == 0
    assert "decoded 10, 10 already there" in capsys.readouterr().out
    size, files = SourceCache(tmp_path / "c").disk_bytes()
    assert files == 5 + 5 * 2 + 10 and size > 0  # fg, alpha + rows per foreground, and the backgrounds


def test_persistent_workers_see_each_epoch(synthetic, tmp_path):
    ds = online(synthetic, crop_sizes=CROPS, size=(32, 32), seed=1, cache_dir=tmp_path / "c")
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False, **data.loader_options(1, "cpu"))
    assert loader.persistent_workers
    for epoch in (4, 2):
        ds.set_epoch(epoch)
        got = [b for b in loader]
        expected = [default_collate([baseline.online_item(ds, i, epoch) for i in range(j, min(j + 3, len(ds)))])
                    for j in range(0, len(ds), 3)]
        for b, e in zip(got, expected):
            b = data.training_batch(b, "cpu")
            assert all(torch.equal(b[k], e[k]) for k in KEYS)


def test_worker_count_and_loader_options(monkeypatch):
    assert data.resolve_workers(3) == 3 and data.resolve_workers(0) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert data.resolve_workers("auto") == 3  # 16 CPUs shared by 4 processes, one for each process itself
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert data.resolve_workers("auto") == 15
    assert data.worker_count("auto") == "auto" and data.worker_count("2") == 2
    with pytest.raises(ValueError):
        data.worker_count("-1")
    assert data.loader_options(0, "cpu") == {"num_workers": 0, "pin_memory": False}
    assert data.loader_options(2, "cuda") == {"num_workers": 2, "pin_memory": True, "persistent_workers": True,
                                              "prefetch_factor": 4}


# ---------------------------------------------------------------- training with a cache

@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("four"), n_train=4)


class Recorder(LossSpy):
    """LossSpy that also keeps every loss (wrapping the real stage_loss, not an earlier spy)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.real, self.losses = REAL_STAGE_LOSS, []

    def __call__(self, *a, **kw):
        out = super().__call__(*a, **kw)
        self.losses.append(out["loss"].item())
        return out


def test_training_from_the_cache_gives_the_same_losses_and_weights(four, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_model", tiny_build_model)
    runs = {}
    for name, extra in (("plain", ["--threads", "0"]),
                        ("cached", ["--threads", "1", "--cache_dir", str(tmp_path / "c")]),
                        ("warm", ["--threads", "1", "--cache_dir", str(tmp_path / "c")])):
        spy = Recorder()
        monkeypatch.setattr(train, "stage_loss", spy)
        save = tmp_path / name
        assert train.main(base_args(four, save, "--nEpochs", "2", "--batchSize", "2", *extra)) == 0
        runs[name] = (spy.losses, torch.load(save / "ckpt_last.pth", weights_only=True)["state_dict"])
    assert len(runs["plain"][0]) == 4
    for name in ("cached", "warm"):
        assert runs[name][0] == runs["plain"][0] and tensors_equal(runs[name][1], runs["plain"][1])
    log = (tmp_path / "warm" / "train.log").read_text()
    assert "16 of 16 source images of this set decoded (100%)" in log and "1 loader worker(s) each" in log


def test_the_old_float_batch_and_training_batch_give_the_same_loss(four):
    from core.losses import stage_loss

    ds = data.CompositedDataset(four["image"], four["fg"], four["bg"], four["alpha"], ((32, 32),), (32, 32), seed=5)
    torch.manual_seed(0)
    model = tiny_build_model(1)
    new = data.training_batch(default_collate([ds[i] for i in range(4)]), "cpu")
    old = default_collate([baseline.offline_item(ds, i, 0) for i in range(4)])
    losses = [stage_loss(1, *model(b["input"]), b, 0.5)["loss"] for b in (new, old)]
    assert torch.equal(losses[0], losses[1])


def test_stop_and_resume_with_a_cache_match_the_straight_run(four, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_model", tiny_build_model)
    cache = ["--threads", "1", "--cache_dir", str(tmp_path / "c")]
    monkeypatch.setattr(train, "stage_loss", LossSpy())
    assert train.main(base_args(four, tmp_path / "straight", "--nEpochs", "2", *cache)) == 0
    monkeypatch.setattr(train, "stage_loss", LossSpy(at=6, action="sigterm"))  # epoch 2, iteration 2 of 4
    save = tmp_path / "stopped"
    assert train.main(base_args(four, save, "--nEpochs", "2", *cache)) == 143
    monkeypatch.setattr(train, "stage_loss", LossSpy())
    assert train.main(base_args(four, save, "--nEpochs", "2", "--resume", str(save / "ckpt_last.pth"), *cache)) == 0
    a, b = (torch.load(p / "ckpt_last.pth", weights_only=True)["state_dict"] for p in (tmp_path / "straight", save))
    assert tensors_equal(a, b)


DDP_PROBE = """
import sys
sys.path.insert(0, {root!r})
import core.train as T
from core.utils import run_cli
from tests.tiny_model import tiny_build_model

T.build_model = tiny_build_model
run_cli(T.main)
"""


def test_two_process_run_with_a_cache_trains_the_same_weights(tmp_path):
    import subprocess
    import sys

    from tests.test_train import ROOT

    six = write_dataset(tmp_path / "data", n_train=6)
    probe = tmp_path / "probe.py"
    probe.write_text(DDP_PROBE.format(root=str(ROOT)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = {}
    for name, extra in (("plain", ["--threads", "0"]), ("cached", ["--threads", "1", "--cache_dir", str(tmp_path / "c")])):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(probe),
               *base_args(six, tmp_path / name, "--nEpochs", "2", "--dist_timeout", "1", *extra)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = torch.load(tmp_path / name / "ckpt_last.pth", weights_only=True)
    assert out["cached"]["train_state"]["world_size"] == 2
    assert tensors_equal(out["plain"]["state_dict"], out["cached"]["state_dict"])


def test_a_full_disk_serves_the_decoded_image_uncached_with_one_warning(synthetic, tmp_path, monkeypatch):
    from core import cache as cache_module

    sources = data.Sources(tmp_path / "c")
    path = online(synthetic).jobs[0]["fg"]
    monkeypatch.setattr(cache_module, "write_entry", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = sources.bgr(path), sources.bgr(path)
    assert np.array_equal(first, cv2.imread(path)) and np.array_equal(second, first)
    assert len(caught) == 1 and "No space left" in str(caught[0].message)
    assert SourceCache(tmp_path / "c").disk_bytes() == (0, 0)
