"""core.options (the inference flags and their one validation) and core.folder's loop split for sharding;
the dependency rule that no core module imports an entry point."""

import argparse
import ast
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_impl import init_unsaturated  # noqa: E402

from core import folder  # noqa: E402
from core.network import DIMNet  # noqa: E402
from core.options import InferenceOptions, add_inference_args  # noqa: E402
from core.utils import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"core.train", "core.test", "core.demo"}


# --------------------------------------------------------------------------- #
# Dependencies point down
# --------------------------------------------------------------------------- #
def imported_modules(source, package="core"):
    """Every module a source text imports, as dotted names (``from core import test`` gives ``core.test``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import test, from .test import x
                base = ".".join([package] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_import_scan_sees_every_spelling():
    spellings = ["import core.test", "from core.test import find_pairs", "from core import demo",
                 "from . import train", "from .test import main", "import core.train as t"]
    for line in spellings:
        assert imported_modules(line) & ENTRY_POINTS, line
    assert not imported_modules("from core import testing, folder\nimport core.options") & ENTRY_POINTS


def test_no_core_module_imports_an_entry_point_or_tools():
    core_files = sorted((REPO / "core").rglob("*.py"))
    assert len(core_files) > 15 and REPO / "core" / "folder.py" in core_files
    bad = []
    for path in core_files:
        package = ".".join(path.relative_to(REPO).parent.parts)
        names = imported_modules(path.read_text(encoding="utf-8"), package)
        bad += [f"{path.relative_to(REPO)} imports {n}" for n in sorted(names)
                if n in ENTRY_POINTS or n == "tools" or n.startswith("tools.")]
    assert not bad


def test_the_test_command_is_a_thin_cli():
    source = (REPO / "core" / "test.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    functions = sorted(node.name for node in tree.body if isinstance(node, ast.FunctionDef))
    assert functions == ["main", "parse_args"] and len(source.splitlines()) <= 120


# --------------------------------------------------------------------------- #
# The flags and their validation
# --------------------------------------------------------------------------- #
def parse(argv, **kw):
    parser = argparse.ArgumentParser()
    add_inference_args(parser, **kw)
    return parser, parser.parse_args(argv)


def test_defaults_are_the_reference_flags():
    _, args = parse(["--resume", "m.pth"])
    options = InferenceOptions.from_args(args)
    assert options.predict_kwargs() == dict(mode="whole", max_size=1600, size=(320, 320), stage=None, amp=False,
                                            tile_size=512, tile_overlap=64, precision="fp32")
    assert (options.resume, options.download, options.skip, options.cuda, options.stage_flag) == \
        ("m.pth", True, None, False, "--stage {}")
    _, args = parse(["--resume", "m.pth", "--crop_or_resize", "resize", "--size_h", "64", "--size_w", "96",
                     "--stage", "2", "--no_skip", "--amp", "--no_download", "--tile_size", "256"])
    options = InferenceOptions.from_args(args)
    assert options.predict_kwargs("tile") == dict(mode="tile", max_size=1600, size=(64, 96), stage=2, amp=True,
                                                  tile_size=256, tile_overlap=64, precision="fp32")
    assert options.predict_kwargs()["mode"] == "resize" and options.skip is False and not options.download
    args.stage_setting = "STAGE"  # deploy.sh names its setting in messages
    assert InferenceOptions.from_args(args).stage_flag == "STAGE={}"
    with pytest.raises(Exception):  # frozen: one validated value for the whole run
        options.max_size = 31


@pytest.mark.parametrize("flags, message", [
    (["--max_size", "1000"], "--max_size must be a positive multiple of 32 (the network's input sides are), got 1000"),
    (["--max_size", "0"], "--max_size must be a positive multiple of 32 (the network's input sides are), got 0"),
    (["--crop_or_resize", "crop", "--size_h", "100"], "--size_h must be a positive multiple of 32, got 100"),
    (["--crop_or_resize", "resize", "--size_w", "0"], "--size_w must be a positive multiple of 32, got 0"),
    (["--crop_or_resize", "tile", "--tile_size", "100"], "tile size must be a positive multiple of 32, got 100"),
    (["--crop_or_resize", "tile", "--tile_overlap", "512"],
     "tile overlap must be at least 0 and less than the tile size 512, got 512"),
    (["--precision", "fp16"], "--precision fp16 needs a CUDA GPU (CPUs compute float16 slowly): "
                              "use --precision bf16 on the CPU"),
])
def test_bad_values_are_refused_with_one_line(flags, message):
    _, args = parse(["--resume", "m.pth", *flags])
    with pytest.raises(UserError) as err:
        InferenceOptions.from_args(args)
    assert str(err.value) == message


def test_only_the_mode_in_use_is_checked():
    # crop/resize sizes mean nothing in whole mode, --max_size nothing in crop mode
    InferenceOptions(mode="whole", size=(100, 7))
    InferenceOptions(mode="crop", max_size=1000)
    InferenceOptions(mode="tile", max_size=1000, size=(1, 1))
    InferenceOptions(precision="fp16", cuda=True)  # the device type is the flags' choice
    # the page may use whole and tile: both are checked, whatever its own mode is called
    with pytest.raises(UserError, match="^--max_size must"):
        InferenceOptions(mode="auto", modes=("whole", "tile"), max_size=1000)
    with pytest.raises(UserError, match="^tile size must"):
        InferenceOptions(mode="auto", modes=("whole", "tile"), tile_size=48)
    with pytest.raises(UserError, match="^unknown mode 'auto'"):
        InferenceOptions(mode="auto")


def test_the_page_flags_without_editing_the_parser():
    parser, args = parse(["--resume", "m.pth", "--size_h", "64", "--rgba"], modes=("auto", "whole", "tile"),
                         mode_default="auto", mode_help="the page's mode", crop_sizes=False, rgba=False,
                         background_help="one colour")
    assert args.crop_or_resize == "auto" and args.size_h == 64 and args.rgba  # accepted, not shown
    shown = parser.format_help()
    assert "the page's mode" in shown and "one colour" in shown and "{auto,whole,tile}" in shown
    assert "--size_h" not in shown and "--size_w" not in shown and "--rgba" not in shown
    with pytest.raises(SystemExit):
        parser.parse_args(["--crop_or_resize", "crop"])
    full = parse(["--resume", "m.pth"])[0].format_help()
    assert all(flag in full for flag in ("--size_h", "--size_w", "--rgba", "{whole,crop,resize,tile}"))


def test_app_and_demo_share_the_flags():
    from core import demo
    from tools import app

    page = app.parse_args([])
    assert page.crop_or_resize == "auto" and page.resume.endswith(os.path.join("model", "stage1_skip_sad_52.9.pth"))
    options = InferenceOptions.from_args(page, modes=("whole", "tile"))
    assert options.predict_kwargs("whole")["mode"] == "whole" and options.max_size == 1600
    with pytest.raises(SystemExit):
        app.parse_args(["--crop_or_resize", "resize"])
    assert vars(demo.parse_args([]))["crop_or_resize"] == "whole"


# --------------------------------------------------------------------------- #
# The loop, split for sharding
# --------------------------------------------------------------------------- #
def make_pairs(root, n=4):
    rng = np.random.default_rng(1)
    for i in range(n):
        h, w = 40 + 8 * i, 48
        alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
        trimap = np.full((h, w), 128, np.uint8)
        trimap[:8], trimap[-8:] = 0, 255
        for kind, arr in (("image", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), ("trimap", trimap),
                          ("alpha", alpha)):
            (root / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / kind / f"p{i}.png"), arr)
    return folder.find_pairs(str(root / "image"), str(root / "trimap"), str(root / "alpha"))


def test_shards_gathered_and_summarized_equal_one_run(tmp_path, one_thread):
    model = init_unsaturated(DIMNet(refine=False, skip=True, conv6_kernel=3), seed=3)
    pairs = make_pairs(tmp_path / "data")
    kw = InferenceOptions(mode="resize", size=(32, 32)).predict_kwargs()
    whole = folder.predict_folder(model, pairs, str(tmp_path / "one"), score=True, progress=False, **kw)
    shards = [folder.predict_pairs(model, pairs[rank::2], str(tmp_path / "two"), score=True, progress=False, **kw)
              for rank in range(2)]
    assert [stopped for _, stopped in shards] == [False, False]
    assert [r.name for r in shards[0][0]] == ["p0.png", "p2.png"]
    gathered = sorted(shards[0][0] + shards[1][0], key=lambda r: r.name)
    result = folder.summarize(gathered)
    assert result.rows == whole.rows and result.means == whole.means and result.means["n"] == 4
    for pair in pairs:  # the same files
        assert (tmp_path / "one" / pair.name).read_bytes() == (tmp_path / "two" / pair.name).read_bytes()
    # a stopped run has no means; an unscored one has no rows
    assert folder.summarize(gathered[:1], stopped=True).means is None
    unscored = folder.predict_pairs(model, pairs[:1], None, progress=False, **kw)[0]
    assert unscored[0].metrics is None and folder.summarize(unscored).rows == {}


def test_training_time_testing_uses_the_same_options():
    from core import train

    argv = ["--crop_or_resize", "resize", "--size_h", "64", "--size_w", "96", "--stage", "2", "--amp"]
    on_gpu = train.test_options(train.build_parser().parse_args(argv + ["--cuda", "--test_precision", "fp16"]))
    assert on_gpu.predict_kwargs() == dict(mode="resize", max_size=1600, size=(64, 96), stage=2, amp=True,
                                           tile_size=512, tile_overlap=64, precision="fp16")
    assert train.test_options(train.build_parser().parse_args(argv)).amp is False  # --amp tests on the GPU only
    with pytest.raises(UserError, match="^--precision fp16 needs a CUDA GPU"):
        train.test_options(train.build_parser().parse_args(argv + ["--test_precision", "fp16"]))
