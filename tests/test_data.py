"""Tests of the training data pipeline (core/data.py, SPEC §6)."""

import os

import cv2
import numpy as np
import pytest
import torch

from core import data
from core import trimap as trimap_rule
from core.utils import UserError
from core.composite import composite_dataset, composite_reference
from tests.reference_impl import reference_input
from tools.make_synthetic import make_background, make_dataset

SMALL_CROPS = ((32, 32), (48, 48), (64, 64))
SMALL_SIZE = (32, 32)


# ---------------------------------------------------------------- fixtures

def _comp_dirs(root):
    comp = os.path.join(root, "Training_set", "comp")
    return [os.path.join(comp, k) for k in ("image", "fg", "bg", "alpha")]


def odd_alpha_set(out, seed):
    """A tiny Adobe-layout set (5 foregrounds 41–58 px, 2 backgrounds each, one alpha whose channels
    differ) composited the reference way into ``out``; ``paths["odd_alpha"]``: that alpha's stem."""
    paths = make_dataset(out, num_fg=5, num_test_fg=1, size=48, seed=seed, train_bg_per_fg=2, test_bg_per_fg=1)
    # One alpha with three different channels: the composite blends each channel with its own alpha.
    name = next(n for n in paths["train_fg_names"] if n.endswith(".png"))
    path = next(p for p in (os.path.join(paths["root_dir"], "Training_set", s, "alpha", name)
                            for s in ("Adobe-licensed images", "Other")) if os.path.isfile(p))
    alpha = cv2.imread(path)[:, :, 0]
    cv2.imwrite(path, cv2.merge([alpha, cv2.GaussianBlur(alpha, (7, 7), 0), 255 - alpha]))
    paths["odd_alpha"] = name[:-4]
    composite_dataset(paths["root_dir"], train_bg_dir=paths["train_bg_dir"], only="train", workers=1,
                      train_bg_per_fg=2)
    return paths


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return odd_alpha_set(str(tmp_path_factory.mktemp("synthetic")), seed=3)


def _offline(paths, **kw):
    return data.CompositedDataset(*_comp_dirs(paths["root_dir"]), **kw)


def _online(paths, **kw):
    return data.OnlineCompositeDataset(paths["root_dir"], paths["train_bg_dir"], bg_per_fg=paths["train_bg_per_fg"],
                                       **kw)


def _assert_items_equal(a, b):
    assert a["name"] == b["name"] and set(a) == set(b)
    for key in set(a) - {"name"}:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (a["name"], key)


def _float(item):
    """One loader item as the training step sees it (core.data.training_batch), batch dimension dropped."""
    batch = data.training_batch(torch.utils.data.default_collate([item]), "cpu")
    return {k: v if k == "name" else v[0] for k, v in batch.items()} | {"name": item["name"]}


def _slow_morph(img, kernel, iterations, dilate):
    """Independent dilation/erosion: OpenCV's centre anchor (k // 2), pixels outside the image ignored."""
    k = kernel.shape[0]
    a = k // 2
    h, w = img.shape
    fill = -1 if dilate else 256
    out = img.astype(np.int32)
    for _ in range(iterations):
        padded = np.pad(out, ((a, k - 1 - a), (a, k - 1 - a)), constant_values=fill)
        shifted = [padded[i:i + h, j:j + w] for i in range(k) for j in range(k) if kernel[i, j]]
        out = np.max(shifted, axis=0) if dilate else np.min(shifted, axis=0)
    return out


# ---------------------------------------------------------------- step 1: crop size

def test_choose_crop_size_draws_every_pair_and_no_other():
    rng = np.random.default_rng(0)
    draws = [data.choose_crop_size(((320, 321), (480, 481), (640, 641)), rng) for _ in range(600)]
    counts = {c: draws.count(c) for c in set(draws)}
    assert set(counts) == {(320, 321), (480, 481), (640, 641)}
    assert all(150 < n < 250 for n in counts.values())  # uniform: 200 each expected


def test_parse_crop_sizes_pairs_flags_in_order():
    assert data.parse_crop_sizes("320,480,640", "320,480,640") == ((320, 320), (480, 480), (640, 640))
    assert data.parse_crop_sizes("320,480", [330, 490]) == ((320, 330), (480, 490))
    with pytest.raises(UserError, match="same number"):
        data.parse_crop_sizes("320,480,640", "320,480")
    with pytest.raises(UserError, match="--crop_w"):
        data.parse_crop_sizes("320", "abc")
    with pytest.raises(UserError, match="positive"):
        data.parse_crop_sizes("0", "320")


# ---------------------------------------------------------------- step 2: upscale

def test_upscaled_size_is_int_of_side_times_ratio_plus_one():
    # ratio = max(320/50, 320/100) = 6.4 → (int(100·6.4 + 1), int(50·6.4 + 1))
    assert data.upscaled_size(100, 50, (320, 320)) == (641, 321)
    # ratio = max(640/700, 480/300) = 1.6 → (int(300·1.6 + 1), int(700·1.6 + 1)) = (481, 1121)
    assert data.upscaled_size(300, 700, (480, 640)) == (481, 1121)
    assert data.upscaled_size(320, 320, (320, 320)) is None  # exactly the crop: no upscale
    assert data.upscaled_size(1080, 1920, (640, 640)) is None


def test_upscale_to_crop_resizes_all_four_bilinearly():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (30, 20, 3), dtype=np.uint8) for _ in range(3)]
    images.append(rng.integers(0, 256, (30, 20), dtype=np.uint8))
    out = data.upscale_to_crop(images, (48, 32))
    # ratio = max(32/20, 48/30) = 1.6 → (int(30·1.6 + 1), int(20·1.6 + 1)) = (49, 33)
    assert [o.shape[:2] for o in out] == [(49, 33)] * 4
    for src, dst in zip(images, out):
        assert np.array_equal(dst, cv2.resize(src, (33, 49), interpolation=cv2.INTER_LINEAR))
    same = data.upscale_to_crop(images, (30, 20))
    assert all(a is b for a, b in zip(same, images))


# ---------------------------------------------------------------- step 3: crop centre

def test_crop_centre_is_an_unknown_pixel_inside_the_crop():
    alpha = np.zeros((100, 120), np.uint8)
    alpha[60:, :] = 255
    unknown = [(40, 50, 1), (55, 70, 128), (50, 60, 254)]  # interior pixels: the centre is never clamped
    for y, x, v in unknown:
        alpha[y, x] = v
    rng = np.random.default_rng(2)
    centres = []
    for _ in range(900):
        y0, x0 = data.crop_origin(alpha, (32, 48), rng)
        centre = (y0 + 16, x0 + 24)
        assert 0 < alpha[centre] < 255
        centres.append(centre)
    counts = [centres.count((y, x)) for y, x, _ in unknown]
    assert all(240 < n < 360 for n in counts)  # uniform over the 3 unknown pixels


def test_crop_origin_equals_the_direct_definition():
    # Slow, literal SPEC §6 step 3: list the unknown pixels, draw one, clamp, truncate.
    rng_alpha = np.random.default_rng(9)
    for trial in range(200):
        h, w = (int(v) for v in rng_alpha.integers(41, 90, 2))
        alpha = rng_alpha.choice(np.array([0, 255, 7, 128], np.uint8), size=(h, w), p=[.47, .47, .03, .03])
        crop_h, crop_w = 32, 41
        unknown = [(y, x) for y in range(h) for x in range(w) if 0 < alpha[y, x] < 255]
        expected = (0, 0)
        if unknown:
            cy, cx = unknown[np.random.default_rng(trial).integers(len(unknown))]
            cy = min(max(cy, crop_h / 2), h - crop_h / 2)
            cx = min(max(cx, crop_w / 2), w - crop_w / 2)
            expected = (int(cy - crop_h / 2), int(cx - crop_w / 2))
        assert data.crop_origin(alpha, (crop_h, crop_w), np.random.default_rng(trial)) == expected


def test_crop_centre_is_clamped_at_the_borders():
    rng = np.random.default_rng(3)
    for (y, x), expected in [((0, 0), (0, 0)), ((2, 117), (0, 120 - 48)), ((99, 3), (100 - 32, 0)),
                             ((99, 119), (68, 72)), ((20, 30), (20 - 16, 30 - 24))]:
        alpha = np.zeros((100, 120), np.uint8)
        alpha[y, x] = 77
        origin = data.crop_origin(alpha, (32, 48), rng)
        assert origin == expected
        assert origin[0] <= y < origin[0] + 32 and origin[1] <= x < origin[1] + 48  # the crop holds it


def test_crop_origin_with_odd_crop_truncates_like_int():
    alpha = np.zeros((50, 50), np.uint8)
    alpha[20, 21] = 9
    # start = int(centre − crop/2) = int(20 − 7.5), int(21 − 4.5)
    assert data.crop_origin(alpha, (15, 9), np.random.default_rng(0)) == (12, 16)


def test_crop_is_top_left_without_unknown_pixels_and_draws_nothing():
    rng = np.random.default_rng(4)
    state = rng.bit_generator.state
    alpha = np.zeros((40, 40), np.uint8)
    alpha[10:30, 10:30] = 255
    assert data.crop_origin(alpha, (16, 16), rng) == (0, 0)
    assert rng.bit_generator.state == state


def test_crop_window_slices_every_image():
    image = np.arange(20 * 30 * 3, dtype=np.int32).reshape(20, 30, 3)
    alpha = np.arange(20 * 30).reshape(20, 30)
    out_image, out_alpha = data.crop_window([image, alpha], (3, 5), (10, 12))
    assert np.array_equal(out_image, image[3:13, 5:17]) and np.array_equal(out_alpha, alpha[3:13, 5:17])


# ---------------------------------------------------------------- step 4: flip

def test_flip_applies_to_all_four_together():
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (8, 11, 3), dtype=np.uint8) for _ in range(3)]
    images.append(rng.integers(0, 256, (8, 11), dtype=np.uint8))
    flips = 0
    for _ in range(400):
        out, flipped = data.random_flip(images, rng)
        flips += flipped
        for src, dst in zip(images, out):
            assert np.array_equal(dst, src[:, ::-1] if flipped else src)
    assert 160 < flips < 240  # p = 0.5


# ---------------------------------------------------------------- step 5: resize

def test_resize_to_size_only_when_the_crop_differs():
    rng = np.random.default_rng(6)
    big = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    out_big, out_small = data.resize_to([big, small], (32, 32))
    assert np.array_equal(out_big, cv2.resize(big, (32, 32), interpolation=cv2.INTER_LINEAR))
    assert out_small is small
    (tall,) = data.resize_to([big], (40, 24))
    assert tall.shape == (40, 24, 3)


# ---------------------------------------------------------------- step 6: trimap

def test_trimap_by_hand_single_pixel_and_square():
    alpha = np.zeros((9, 9), np.uint8)
    alpha[4, 4] = 255
    yy, xx = np.mgrid[0:9, 0:9]
    diamond = np.abs(yy - 4) + np.abs(xx - 4)  # the 3×3 ellipse is a cross: iterations grow a diamond
    for iterations in (1, 2, 3):
        expected = np.where(diamond <= iterations, 128, 0)
        assert np.array_equal(trimap_rule.trimap_from_alpha(alpha, 3, iterations), expected)

    alpha = np.zeros((9, 9), np.uint8)
    alpha[2:7, 2:7] = 255
    expected = np.zeros((9, 9), np.uint8)
    expected[1:8, 2:7] = 128  # dilated by the cross: the square grows by one, corners excluded
    expected[2:7, 1:8] = 128
    expected[3:6, 3:6] = 255  # eroded by the cross: the inner 3×3
    assert np.array_equal(trimap_rule.trimap_from_alpha(alpha, 3, 1), expected)


@pytest.mark.parametrize("kernel_size", trimap_rule.TRIMAP_KERNEL_SIZES)
@pytest.mark.parametrize("iterations", [5, 9, 14])
def test_trimap_equals_independent_dilation_erosion(kernel_size, iterations):
    rng = np.random.default_rng(kernel_size * 100 + iterations)
    alpha = np.zeros((130, 140), np.uint8)  # margins and body wide enough for 14 iterations of every kernel
    alpha[35:95, 35:105] = 255
    noise = rng.random((5, 140))
    alpha[35:40][noise < 0.05] = 200  # scattered soft pixels and holes along the top edge
    alpha[35:40][noise > 0.95] = 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    dilated = _slow_morph(alpha, kernel, iterations, dilate=True)
    eroded = _slow_morph(alpha, kernel, iterations, dilate=False)
    expected = np.where(dilated <= 0, 0, np.where(eroded >= 255, 255, 128))
    trimap = trimap_rule.trimap_from_alpha(alpha, kernel_size, iterations)
    assert trimap.dtype == np.uint8
    assert np.array_equal(trimap, expected)
    assert set(np.unique(trimap)) == {0, 128, 255}


def test_trimap_parameters_cover_kernels_2_to_4_and_iterations_5_to_14():
    rng = np.random.default_rng(7)
    draws = [trimap_rule.draw_trimap_params(rng) for _ in range(3000)]
    assert {k for k, _ in draws} == {2, 3, 4}
    assert {n for _, n in draws} == set(range(5, 15))


def test_random_trimap_is_one_of_the_allowed_trimaps():
    alpha = np.zeros((40, 40), np.uint8)
    cv2.circle(alpha, (20, 20), 10, 255, -1)
    alpha = cv2.GaussianBlur(alpha, (5, 5), 0)
    rng = np.random.default_rng(8)
    state = rng.bit_generator.state
    trimap = trimap_rule.random_trimap(alpha, rng)
    rng.bit_generator.state = state
    k, n = trimap_rule.draw_trimap_params(rng)
    assert np.array_equal(trimap, trimap_rule.trimap_from_alpha(alpha, k, n))
    with pytest.raises(ValueError, match="uint8"):
        trimap_rule.trimap_from_alpha(alpha.astype(np.float32), 3, 5)


# ---------------------------------------------------------------- seeding

def test_sample_rng_depends_on_seed_epoch_and_name_only():
    draw = lambda *key: data.sample_rng(*key).integers(0, 2**62, 4).tolist()  # noqa: E731
    assert draw(123, 0, "a_0.png") == draw(123, 0, "a_0.png")
    assert len({str(draw(*k)) for k in [(123, 0, "a_0.png"), (124, 0, "a_0.png"), (123, 1, "a_0.png"),
                                        (123, 0, "a_1.png")]}) == 4


# ---------------------------------------------------------------- datasets

def test_item_keys_dtypes_shapes_and_ranges(synthetic):
    ds = _offline(synthetic, crop_sizes=SMALL_CROPS, size=SMALL_SIZE)
    assert len(ds) == 10
    seen_unknown = False
    for index in range(len(ds)):
        raw = ds[index]
        assert set(raw) == {"image", "fg", "bg", "alpha", "trimap", "name"}
        assert all(raw[k].dtype == torch.uint8 for k in raw if k != "name")  # uint8 across the process boundary
        item = _float(raw)
        assert set(item) == {"input", "image", "fg", "bg", "alpha", "trimap", "name"}
        assert item["name"] == ds.files[index][0] and item["name"].endswith(".png")
        shapes = {"input": (4, 32, 32), "image": (3, 32, 32), "fg": (3, 32, 32), "bg": (3, 32, 32),
                  "alpha": (1, 32, 32), "trimap": (1, 32, 32)}
        for key, shape in shapes.items():
            assert item[key].dtype == torch.float32 and tuple(item[key].shape) == shape, key
        for key in ("image", "fg", "bg"):
            values = item[key]
            assert values.min() >= 0 and values.max() <= 255 and torch.equal(values, values.round())
        assert 0 <= item["alpha"].min() and item["alpha"].max() <= 1
        alpha_u8 = (item["alpha"][0] * 255).round().numpy().astype(np.uint8)
        trimap = item["trimap"][0].numpy().astype(np.uint8)
        assert set(np.unique(trimap)) <= {0, 128, 255}
        assert any(np.array_equal(trimap, trimap_rule.trimap_from_alpha(alpha_u8, k, n))
                   for k in trimap_rule.TRIMAP_KERNEL_SIZES for n in trimap_rule.TRIMAP_ITERATIONS)
        image_u8 = item["image"].numpy().transpose(1, 2, 0).astype(np.uint8)
        # the input as the reference builds it (torchvision ToTensor + Normalize, trimap / 255)
        torch.testing.assert_close(item["input"], reference_input(image_u8, trimap)[0], atol=1e-6, rtol=0)
        seen_unknown |= bool((trimap == 128).any())
    assert seen_unknown


def test_sample_without_resize_is_the_reference_composite_of_its_fg_bg_alpha(synthetic):
    # crop == size: no resize, so the image must be the reference blend of the returned fg, bg and alpha
    ds = _offline(synthetic, crop_sizes=((32, 32),), size=(32, 32))
    for index in range(len(ds)):
        item = _float(ds[index])
        if item["name"].startswith(synthetic["odd_alpha"] + "_"):
            continue  # blended with a 3-channel alpha whose channels differ
        fg, bg, image = (item[k].numpy().transpose(1, 2, 0).astype(np.uint8) for k in ("fg", "bg", "image"))
        alpha = (item["alpha"][0] * 255).round().numpy().astype(np.uint8)
        assert np.array_equal(image, composite_reference(fg, bg, alpha))


def test_online_samples_equal_offline_samples(synthetic):
    offline = _offline(synthetic, crop_sizes=SMALL_CROPS, size=SMALL_SIZE, seed=5)
    online = _online(synthetic, crop_sizes=SMALL_CROPS, size=SMALL_SIZE, seed=5)
    assert len(online) == len(offline)
    assert sorted(online.samples[i][1] for i in range(len(online))) == [name for name, _ in offline.files]
    by_name = {name: i for i, (name, _) in enumerate(offline.files)}
    branches = set()
    for epoch in range(3):
        offline.set_epoch(epoch)
        online.set_epoch(epoch)
        for index in range(len(online)):
            a = online[index]
            _assert_items_equal(a, offline[by_name[a["name"]]])
            fg_shape = cv2.imread(online.jobs[online.samples[index][0]]["fg"]).shape[:2]
            crop = data.choose_crop_size(SMALL_CROPS, online.rng(a["name"]))
            branches.add(data.upscaled_size(*fg_shape, crop) is None)
    assert branches == {True, False}  # both the window path and the whole-composite path ran


def test_online_name_order_follows_the_lists(synthetic):
    online = _online(synthetic)
    names = synthetic["train_fg_names"]
    assert [online.samples[i][1] for i in range(len(online))] == [
        f"{n[:-4]}_{k}.png" for n in names for k in range(2)]
    with open(os.path.join(synthetic["root_dir"], "Training_set", "training_bg_names.txt")) as f:
        bg_lines = f.read().split()
    assert [os.path.basename(online.samples[i][2]) for i in range(len(online))] == [
        line[len("COCO_train2014_"):] for line in bg_lines]


def test_same_seed_and_epoch_give_the_same_samples_with_any_worker_count(synthetic):
    ds = _offline(synthetic, crop_sizes=SMALL_CROPS, size=SMALL_SIZE, seed=11)

    def run(workers, epoch):
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, num_workers=workers,
                                             worker_init_fn=data.worker_init_fn)
        return [b for b in loader]

    serial, parallel, other_epoch = run(0, 1), run(2, 1), run(0, 2)
    for a, b in zip(serial, parallel):
        assert a["name"] == b["name"]
        for key in ("image", "fg", "bg", "alpha", "trimap"):
            assert torch.equal(a[key], b[key])
    assert any(not torch.equal(a["image"], c["image"]) for a, c in zip(serial, other_epoch))
    reseeded = _offline(synthetic, crop_sizes=SMALL_CROPS, size=SMALL_SIZE, seed=12)
    reseeded.set_epoch(1)
    assert any(not torch.equal(reseeded[i]["image"], ds[i]["image"]) for i in range(len(ds)))


def test_online_equals_offline_on_a_real_full_size_alpha(tmp_path, dim_examples):
    # A real 1920-px image and matte stand in for an Adobe foreground; COCO-sized backgrounds.
    name = sorted(os.listdir(os.path.join(dim_examples, "image")))[0]
    train = tmp_path / "Combined_Dataset" / "Training_set"
    for kind in ("fg", "alpha"):
        (train / "Adobe-licensed images" / kind).mkdir(parents=True)
        (train / "Other" / kind).mkdir(parents=True)
        src = cv2.imread(os.path.join(dim_examples, "image" if kind == "fg" else "alpha", name))
        cv2.imwrite(str(train / "Adobe-licensed images" / kind / name), src)
    (tmp_path / "train2017").mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "train2017" / "000000000009.jpg"), make_background(rng, 480, 640))
    (train / "training_fg_names.txt").write_text(name + "\n")
    (train / "training_bg_names.txt").write_text("COCO_train2014_000000000009.jpg\n")
    root = str(tmp_path / "Combined_Dataset")
    composite_dataset(root, train_bg_dir=str(tmp_path / "train2017"), only="train", workers=1, train_bg_per_fg=1)
    offline = data.CompositedDataset(*_comp_dirs(root))
    online = data.OnlineCompositeDataset(root, str(tmp_path / "train2017"), bg_per_fg=1)
    for epoch in range(4):
        offline.set_epoch(epoch)
        online.set_epoch(epoch)
        _assert_items_equal(online[0], offline[0])


# ---------------------------------------------------------------- errors

def _write(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), img)


def _flat_set(tmp_path, names, kinds=("image", "fg", "bg", "alpha"), shape=(40, 40, 3)):
    for kind in kinds:
        for n in names:
            _write(tmp_path / kind / n, np.full(shape, 100, np.uint8))
    return [str(tmp_path / k) for k in ("image", "fg", "bg", "alpha")]


def test_pair_files_pairs_by_stem(tmp_path):
    dirs = _flat_set(tmp_path, ["b_1.png", "a_0.png"])
    os.rename(tmp_path / "alpha" / "a_0.png", tmp_path / "alpha" / "a_0.jpg")
    (tmp_path / "fg" / "notes.txt").write_text("not an image")
    (tmp_path / "bg" / ".hidden.png").write_bytes(b"")
    pairs = data.pair_files(dict(zip(("image", "fg", "bg", "alpha"), dirs)))
    assert [n for n, _ in pairs] == ["a_0.png", "b_1.png"]
    assert pairs[0][1]["alpha"] == os.path.join(dirs[3], "a_0.jpg")
    assert pairs[1][1]["bg"] == os.path.join(dirs[2], "b_1.png")


def test_unpaired_files_are_listed_by_folder(tmp_path):
    dirs = _flat_set(tmp_path, [f"x_{i}.png" for i in range(8)])
    for i in range(7):
        os.remove(tmp_path / "bg" / f"x_{i}.png")
    os.remove(tmp_path / "fg" / "x_7.png")
    with pytest.raises(UserError) as err:
        data.CompositedDataset(*dirs)
    msg = str(err.value)
    assert "7 missing from bg folder" in msg and "x_0, x_1, x_2, x_3, x_4 and 2 more" in msg
    assert "1 missing from fg folder" in msg and "x_7" in msg and "\n" not in msg


def test_missing_or_empty_folders_are_user_errors(tmp_path):
    dirs = _flat_set(tmp_path, ["a.png"], kinds=("image", "fg", "bg"))
    with pytest.raises(UserError, match="alpha folder does not exist"):
        data.CompositedDataset(*dirs)
    os.makedirs(dirs[3])
    with pytest.raises(UserError, match="alpha folder holds no image"):
        data.CompositedDataset(*dirs)
    _write(tmp_path / "alpha" / "a.png", np.zeros((40, 40), np.uint8))
    _write(tmp_path / "alpha" / "a.jpg", np.zeros((40, 40), np.uint8))
    with pytest.raises(UserError, match="share a name"):
        data.CompositedDataset(*dirs)


def test_bad_files_fail_with_the_file_named(tmp_path):
    dirs = _flat_set(tmp_path, ["a.png"])
    _write(tmp_path / "bg" / "a.png", np.zeros((40, 41, 3), np.uint8))
    with pytest.raises(UserError, match=r"differ in size: .*bg.a\.png 40×41"):
        data.CompositedDataset(*dirs)[0]
    (tmp_path / "fg" / "a.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"fg.a\.png: not a readable image"):
        data.CompositedDataset(*dirs)[0]


def test_bad_settings_are_user_errors(tmp_path):
    dirs = _flat_set(tmp_path, ["a.png"])
    with pytest.raises(UserError, match="crop sizes"):
        data.CompositedDataset(*dirs, crop_sizes=((0, 320),))
    with pytest.raises(UserError, match="--seed"):
        data.CompositedDataset(*dirs, seed=-1)


def test_online_layout_errors(tmp_path):
    paths = make_dataset(str(tmp_path), num_fg=2, num_test_fg=1, size=24, seed=1, train_bg_per_fg=2,
                         test_bg_per_fg=1)
    root, bg_dir = paths["root_dir"], paths["train_bg_dir"]
    with pytest.raises(UserError, match="Combined_Dataset folder does not exist"):
        data.OnlineCompositeDataset(str(tmp_path / "nowhere"), bg_dir, bg_per_fg=2)
    with pytest.raises(UserError, match=r"has 4 lines but .* 2 foregrounds x 3 backgrounds each = 6"):
        data.OnlineCompositeDataset(root, bg_dir, bg_per_fg=3)
    bg_file = sorted(os.listdir(bg_dir))[0]
    os.remove(os.path.join(bg_dir, bg_file))
    with pytest.raises(UserError, match=f"missing: .*{bg_file}"):
        data.OnlineCompositeDataset(root, bg_dir, bg_per_fg=2)
    names = os.path.join(root, "Training_set", "training_fg_names.txt")
    os.remove(names)
    with pytest.raises(UserError, match="name list not found"):
        data.OnlineCompositeDataset(root, bg_dir, bg_per_fg=2)
