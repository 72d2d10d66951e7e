"""The reference's released checkpoints (SPEC §3), fetched on demand.

A file named like a release that is not on disk is downloaded from
``{base}/{tag}/{file}`` to exactly that path (``base`` is
:data:`DEFAULT_BASE`, or the environment variable ``DIM_RELEASES_URL``).
The download goes to a temporary name in the same folder (torch.hub's
downloader, with its progress bar), is verified (it loads with the project's
safe loader and builds the network its name implies) and only then takes its
final name. Any failure is one :class:`UserError` naming the URL; no file is
left behind. The released weights are licensed for non-commercial use only.
"""

import http.client
import os
import sys
import urllib.error

import torch

from core.checkpoint import RELEASES, load_model
from core.imageio import atomic_path
from core.utils import UserError

DEFAULT_BASE = "https://github.com/huochaitiantang/pytorch-deep-image-matting/releases/download"
LICENSE_NOTE = "the released weights are licensed for non-commercial use only"
# The way forward without the release, in every message about a missing or undownloadable model.
TRAIN_HINT = ("or train one here and pass it with --resume: the CPU smoke run of docs/training.md (section 6, "
              "no dataset needed) writes model/smoke/ckpt_best.pth, `bash train.sh` trains a real one")


def is_release(path):
    """Whether the file name of ``path`` is one of the supported releases."""
    return os.path.basename(os.fspath(path)) in RELEASES


def release_url(name):
    """Where the release ``name`` (a file name of :data:`core.checkpoint.RELEASES`) is downloaded from."""
    base = os.environ.get("DIM_RELEASES_URL") or DEFAULT_BASE
    return f"{base.rstrip('/')}/{RELEASES[name].tag}/{name}"


def _first_line(exc):
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason  # "[Errno -2] Name or service not known" rather than "<urlopen error …>"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def verify_release(path, name):
    """Load ``path`` as the release ``name``: safe loader, the stage, skip and conv6 kernel of its row.

    Raises :class:`UserError` (naming ``path``) when it does not load or fit.
    """
    row = RELEASES[name]
    _, info = load_model(path, stage=row.stage, skip=row.skip)
    if info["arch"]["conv6_kernel"] != row.conv6_kernel:
        raise UserError(f"{path}: conv6 kernel {info['arch']['conv6_kernel']}, but the release {name} has "
                        f"{row.conv6_kernel}")


def fetch_release(path, log=print, progress=None):
    """Download the release named by ``path``'s file name to ``path``, verified, atomically.

    ``progress``: torch.hub's progress bar (default: when stderr is a
    terminal). Raises :class:`UserError` naming the URL when the download
    fails, is cut short or is not the release; then neither ``path`` nor a
    partial file exists.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    url = release_url(name)
    progress = sys.stderr.isatty() if progress is None else progress
    log(f"{path} is missing: downloading {url} ({LICENSE_NOTE})")
    try:
        with atomic_path(path, ".download") as tmp:
            try:
                torch.hub.download_url_to_file(url, tmp, progress=progress)
            except (OSError, http.client.HTTPException) as exc:  # URLError/HTTPError are OSErrors
                raise UserError(f"{url}: download failed ({_first_line(exc)}); nothing was written to {path}. "
                                f"Offline? Put the file there by hand, {TRAIN_HINT}") from None
            try:
                verify_release(tmp, name)
            except UserError as exc:
                detail = str(exc).replace(f"{tmp}: ", "")
                raise UserError(f"{url}: the download is cut short or not the released model ({detail}); "
                                f"nothing was written to {path}") from None
    except OSError as exc:  # the folder cannot be created or written
        raise UserError(f"{path}: cannot write the download of {url} there ({_first_line(exc)})") from None
    log(f"downloaded and verified {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    return path


def download_if_missing(path, log=print, progress=None):
    """Fetch ``path`` when it is missing and named like a release; True when it exists afterwards."""
    if os.path.isfile(path):
        return True
    if not is_release(path):
        return False
    fetch_release(path, log, progress)
    return True
