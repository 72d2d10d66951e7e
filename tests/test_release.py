"""core/release.py: released checkpoints fetched from a loopback HTTP server started here.

Served under ``/<behaviour>/<tag>/<file>``: ``good`` (a full-size legacy checkpoint
with the architecture the name implies), ``short`` (the same, cut off half-way
with the full Content-Length announced), ``garbage`` (bytes that are no
checkpoint), ``foreign`` (a small checkpoint of another network); anything
else is a 404.
"""

import http.server
import io
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from py2_legacy import save_py2_legacy  # noqa: E402

from core.checkpoint import RELEASES  # noqa: E402
from core.network import DIMNet  # noqa: E402
from core.release import TRAIN_HINT, fetch_release, is_release, release_url, verify_release  # noqa: E402
from core import test as test_mod  # noqa: E402
from core.utils import UserError, run_cli  # noqa: E402
from tools import export  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAME = "stage1_skip_sad_52.9.pth"


def zero_checkpoint(path, **arch):
    """A legacy (Python 2) checkpoint of DIMNet(**arch) with zero weights: real shapes, built without init."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in DIMNet(**arch).state_dict().items()}
    save_py2_legacy({"state_dict": {k: torch.zeros(s) for k, s in shapes.items()}, "epoch": 20, "best_sad": 52.9},
                    path)
    return path.read_bytes()


def torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    bodies = {"good": zero_checkpoint(root / "good.pth", refine=False, skip=True, conv6_kernel=3),
              "foreign": torch_bytes({"state_dict": {"conv1_1.weight": torch.zeros(64, 4, 3, 3),
                                                     "deconv1.weight": torch.zeros(1, 64, 5, 5)}}),
              "garbage": b"<html>not a checkpoint</html>" * 100}
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            kind, tag, name = (self.path.strip("/").split("/") + ["", "", ""])[:3]
            body = bodies.get("good" if kind == "short" else kind)
            if body is None or name not in RELEASES or RELEASES[name].tag != tag:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if kind == "short" else body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", bodies, requests
    httpd.shutdown()
    httpd.server_close()


def fetch(base, kind, folder, monkeypatch):
    monkeypatch.setenv("DIM_RELEASES_URL", f"{base}/{kind}")
    return fetch_release(folder / NAME, log=lambda msg: None, progress=False)


def test_release_table_and_url(monkeypatch):
    monkeypatch.delenv("DIM_RELEASES_URL", raising=False)
    assert release_url(NAME) == ("https://github.com/huochaitiantang/pytorch-deep-image-matting/releases/download/"
                                 "V1.5/stage1_skip_sad_52.9.pth")
    assert release_url("stage0_norm_balance_sad_62.0.pth").endswith("/v1.2/stage0_norm_balance_sad_62.0.pth")
    monkeypatch.setenv("DIM_RELEASES_URL", "http://host/x/")
    assert release_url("stage1_sad_54.4.pth") == "http://host/x/v1.4/stage1_sad_54.4.pth"
    assert is_release("model/stage1_sad_57.1.pth") and not is_release("model/my_stage0_sad_72.9.pth")


def test_each_release_row_is_verified_by_its_own_columns(tmp_path):
    """A file verifies as a release only with its row's stage (head), skip and conv6 kernel (SPEC §3)."""
    for name, row in RELEASES.items():
        assert name.startswith(f"stage{row.stage}_"), name  # the reference names files by their stage
        path = tmp_path / name
        zero_checkpoint(path, refine=row.stage >= 2, skip=row.skip, conv6_kernel=row.conv6_kernel)
        verify_release(path, name)
        zero_checkpoint(path, refine=row.stage >= 2, skip=row.skip, conv6_kernel=4 - row.conv6_kernel)
        with pytest.raises(UserError, match=f"conv6 kernel {4 - row.conv6_kernel}, but the release"):
            verify_release(path, name)
        zero_checkpoint(path, refine=row.stage < 2, skip=row.skip, conv6_kernel=row.conv6_kernel)
        with pytest.raises(UserError, match="refinement head"):
            verify_release(path, name)


def test_good_download_is_written_byte_for_byte(server, tmp_path, monkeypatch):
    base, bodies, _ = server
    path = fetch(base, "good", tmp_path / "model", monkeypatch)  # the folder is created
    assert Path(path).read_bytes() == bodies["good"]
    assert os.listdir(tmp_path / "model") == [NAME]
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


@pytest.mark.parametrize("kind,words", [
    ("short", "cut short or not the released model (truncated or corrupt checkpoint (the storages claim"),
    ("missing", "HTTP Error 404"),
    ("garbage", "cut short or not the released model (not a PyTorch checkpoint"),
    ("foreign", "cut short or not the released model (conv6_1.weight missing"),
])
def test_failed_download_leaves_nothing(server, tmp_path, monkeypatch, kind, words):
    base, _, _ = server
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "other.txt").write_text("kept")
    with pytest.raises(UserError) as exc:
        fetch(base, kind, folder, monkeypatch)
    msg = str(exc.value)
    assert msg.startswith(f"{base}/{kind}/V1.5/{NAME}: ") and words in msg, msg
    assert f"nothing was written to {folder / NAME}" in msg and "\n" not in msg
    assert os.listdir(folder) == ["other.txt"]  # neither the final name nor a partial file


def test_no_network_names_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("DIM_RELEASES_URL", "http://127.0.0.1:1")  # nothing listens on port 1
    with pytest.raises(UserError, match=r"^http://127\.0\.0\.1:1/V1\.5/stage1_skip_sad_52\.9\.pth: download "
                                        r"failed \(.*refused"):
        fetch_release(tmp_path / NAME, log=lambda msg: None, progress=False)
    assert os.listdir(tmp_path) == []


def test_entry_points_download_on_demand(server, tmp_path, monkeypatch, capsys):
    """core/test.py fetches a missing release and predicts with it; a 404 and --no_download each end in one line.

    In-process (the real command runs in test_one_command.py and test_entrypoints.py)."""
    base, bodies, requests = server
    model = tmp_path / "model" / NAME
    data, out = tmp_path / "data", tmp_path / "out"
    for kind in ("image", "trimap"):
        (data / kind).mkdir(parents=True)
        shutil.copy(REPO / "result/example" / kind / "synthetic_01.png", data / kind)
    argv = ["--imgDir", str(data / "image"), "--trimapDir", str(data / "trimap"), "--saveDir", str(out),
            "--resume", str(model)]
    before = len(requests)
    monkeypatch.setenv("DIM_RELEASES_URL", f"{base}/good")
    with pytest.raises(SystemExit) as exc:
        run_cli(test_mod.main, argv + ["--no_download"])
    assert exc.value.code == 2 and len(requests) == before  # no request made
    assert capsys.readouterr().err.splitlines() == [
        f"error: {model}: no such checkpoint. Download the released model {NAME} from https://github.com/"
        f"huochaitiantang/pytorch-deep-image-matting/releases into model/, {TRAIN_HINT}"]
    monkeypatch.setenv("DIM_RELEASES_URL", f"{base}/missing")
    with pytest.raises(SystemExit) as exc:
        run_cli(test_mod.main, argv)
    assert exc.value.code == 2 and os.listdir(model.parent) == []
    assert capsys.readouterr().err.splitlines() == [f"error: {base}/missing/V1.5/{NAME}: download failed (HTTP "
                                                    f"Error 404: Not Found); nothing was written to {model}. "
                                                    f"Offline? Put the file there by hand, {TRAIN_HINT}"]
    assert not out.exists()
    monkeypatch.setenv("DIM_RELEASES_URL", f"{base}/good")
    with pytest.raises(SystemExit) as exc:
        run_cli(test_mod.main, argv)
    out_text, err = capsys.readouterr()
    assert exc.value.code == 0, err
    assert f"downloading {base}/good/V1.5/{NAME} (the released weights are licensed for non-commercial use only)" \
        in out_text
    assert model.read_bytes() == bodies["good"]
    assert sorted(os.listdir(out)) == ["made_by.json", "synthetic_01.png"]


def test_export_downloads_only_a_missing_release(server, tmp_path, monkeypatch, capsys):
    base, _, requests = server
    model = tmp_path / NAME
    argv = ["--resume", str(model), "--out_dir", str(tmp_path / "export"), "--format", "torchscript"]
    monkeypatch.setenv("DIM_RELEASES_URL", f"{base}/missing")
    before = len(requests)
    with pytest.raises(SystemExit) as exc:
        run_cli(export.main, argv + ["--no_download"])
    assert exc.value.code == 2 and len(requests) == before and capsys.readouterr().err == f"error: {model}: no such checkpoint file\n"
    with pytest.raises(SystemExit) as exc:
        run_cli(export.main, argv)
    assert exc.value.code == 2 and len(requests) == before + 1
    assert capsys.readouterr().err == (f"error: {base}/missing/V1.5/{NAME}: download failed (HTTP Error 404: Not "
                                       f"Found); nothing was written to {model}. Offline? Put the file there by "
                                       f"hand, {TRAIN_HINT}\n")
    assert os.listdir(tmp_path) == []
