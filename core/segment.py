"""Subject masks from torchvision's semantic segmentation networks (for automatic trimaps).

Any builder of ``torchvision.models.segmentation`` with its ``DEFAULT``
weights: downloaded once by torch.hub into ``$TORCH_HOME/hub/checkpoints``
(hash-checked), read from there offline, loaded with ``weights_only=True``.
The network runs at its weights' own preprocessing size (their
``transforms()``: shorter side 520), so a 4000×3000 photo costs about what
a small one does; only the chosen classes' summed probability (one channel,
8-bit) is resized to the photo.
"""

import os
import pickle
import sys
import zipfile

import cv2
import numpy as np
import torch

from core.utils import UserError, preview

DEFAULT_SEGMENTER = "deeplabv3_resnet101"
BACKGROUND = "__background__"


class WeightsError(UserError):
    """The segmenter's weights are missing or unreadable: a problem of the run, not of one photo."""


def segmenter_names():
    """The names of torchvision's segmentation builders."""
    import torchvision  # here: importing it takes seconds, and runs with trimaps never need it

    return torchvision.models.list_models(module=torchvision.models.segmentation)


def weights_path(weights):
    """Where torch.hub caches ``weights`` (a torchvision weights enum member)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def add_segmenter_args(group):
    """``--segmenter`` and ``--classes``, as ``core/demo.py`` and ``tools/app.py`` take them."""
    group.add_argument("--segmenter", default=DEFAULT_SEGMENTER, help="a builder of torchvision.models.segmentation "
                       "(default: %(default)s, the most accurate; deeplabv3_mobilenet_v3_large is faster)")
    group.add_argument("--classes", help="subject classes of the segmenter, comma-separated, e.g. person,dog "
                                         "(default: every class but the background)")


class Segmenter:
    """``segmenter(bgr) → uint8 H×W``: 255 × the probability of the chosen classes.

    Args:
        name: a builder of ``torchvision.models.segmentation``.
        classes: comma-separated class names of its weights' categories, or
            None/"" for every class but the background.
        device: where the network runs.
        download: allow torch.hub to download missing weights.
    Names are checked here (:class:`UserError` listing the valid ones); the
    network is loaded on first use.
    """

    def __init__(self, name=DEFAULT_SEGMENTER, classes=None, device="cpu", download=True):
        import torchvision

        names = segmenter_names()
        if name not in names:
            raise UserError(f"--segmenter {name}: not a torchvision segmentation model; valid: {', '.join(names)}")
        self.name, self.device, self.download = name, torch.device(device), download
        self.weights = torchvision.models.get_model_weights(name).DEFAULT
        categories = self.weights.meta["categories"]
        valid = [c for c in categories if c != BACKGROUND]
        wanted = [c.strip() for c in (classes or "").split(",") if c.strip()] or valid
        lower = {c.lower(): i for i, c in enumerate(categories) if c != BACKGROUND}
        unknown = [c for c in wanted if c.lower() not in lower]
        if unknown:
            raise UserError(f"--classes: {', '.join(unknown)} not among {name}'s classes; valid: {', '.join(valid)}")
        self.indices = sorted({lower[c.lower()] for c in wanted})
        self.classes = [categories[i] for i in self.indices]
        self.net = None

    def describe_classes(self):
        return preview(self.classes, 6, sort=False)

    def _state_dict(self):
        path, url = weights_path(self.weights), self.weights.url
        folder = os.path.dirname(path)
        if not os.path.isfile(path) and not self.download:
            raise WeightsError(f"{os.path.basename(path)}: the {self.name} weights are not in the cache {folder} "
                               f"(--no_download); download {url} into that folder")
        try:
            return self.weights.get_state_dict(progress=sys.stderr.isatty(), check_hash=True, weights_only=True)
        except OSError as exc:  # no network, HTTP error, unwritable cache (URLError is an OSError)
            reason = str(getattr(exc, "reason", "") or exc).splitlines()[0][:200]
            raise WeightsError(f"{os.path.basename(path)}: the {self.name} weights are not in the cache {folder} and "
                               f"could not be downloaded from {url} ({reason}); download that file into that "
                               "folder") from None
        except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as exc:
            raise WeightsError(f"{path}: unreadable {self.name} weights ({str(exc).splitlines()[0][:200]}); delete "
                               f"the file to download it again from {url}") from None

    def build(self):
        """The network without its weights (random), without the auxiliary head (unused at inference)."""
        import torchvision

        kwargs = {} if self.name.startswith("lraspp") else {"aux_loss": False}
        return torchvision.models.get_model_builder(self.name)(
            weights=None, weights_backbone=None, num_classes=len(self.weights.meta["categories"]), **kwargs)

    def load(self):
        """Build the network and load its weights (once); returns it in eval mode."""
        if self.net is None:
            state = self._state_dict()
            net = self.build()
            net.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux_classifier.")})
            self.net = net.to(self.device).eval()
        return self.net

    def _input(self, image):
        """The network input of a BGR photo: its weights' transforms (shorter side 520, normalised), 1×3×h×w.

        A larger photo is first shrunk with OpenCV (area averaging) to the size
        the transforms resize to, so no full-size float copy is made.
        """
        transform = self.weights.transforms()
        size = getattr(transform, "resize_size", None)
        h, w = image.shape[:2]
        if size and min(h, w) > size[0]:
            short = size[0]
            new_w, new_h = (int(short * w / h), short) if h <= w else (short, int(short * h / w))  # as torchvision
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        rgb = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)
        return transform(rgb.to(self.device)).unsqueeze(0)

    @torch.inference_mode()
    def __call__(self, image):
        """Soft mask of the chosen classes for a BGR uint8 H×W×3 photo: uint8 H×W (255 = surely subject)."""
        net = self.load()
        prob = net(self._input(image))["out"].softmax(1)[0, self.indices].sum(0)
        small = np.clip(np.rint(prob.float().cpu().numpy() * 255), 0, 255).astype(np.uint8)
        return cv2.resize(small, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
