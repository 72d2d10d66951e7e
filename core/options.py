"""The inference flags, defined once, and :class:`InferenceOptions`, the validated form every command uses.

``core/test.py``, ``core/demo.py`` and ``tools/app.py`` add the flags with
:func:`add_inference_args` and turn them into options with
:meth:`InferenceOptions.from_args`; ``core/train.py`` builds the same object
from its testing flags. A flag value the network cannot use is refused here, in
one line, before any file is read or any model is loaded.
"""

import argparse
import os
from dataclasses import dataclass, field
from typing import Optional

from core.cutout import add_cutout_args
from core.inference import MODES
from core.ops.capabilities import PRECISIONS, check_precision
from core.tiling import check_tile_args
from core.utils import UserError

RELEASED_MODEL = "stage1_skip_sad_52.9.pth"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODE_HELP = ("whole: one pass at the size rounded down to /32 and capped at --max_size; "
             "crop: --size_h×--size_w tiles; resize: one pass at --size_h×--size_w; "
             "tile: full resolution in overlapping --tile_size windows, bounded memory (default: whole)")


def add_inference_args(parser, resume_default=None, modes=MODES, mode_default="whole", mode_help=MODE_HELP,
                       crop_sizes=True, rgba=True, background_help=None):
    """The reference's model and sizing flags, plus --skip/--no_skip, --amp, --precision, tiles and cut-outs.

    The defaults are the folder commands'. The page (``tools/app.py``) predicts
    one photo in whole or tile mode, so it passes its own ``modes``,
    ``mode_default`` and ``mode_help``, and ``crop_sizes=False``/``rgba=False``:
    --size_h/--size_w and --rgba are still accepted (one set of flags for every
    command) but not shown. ``background_help`` replaces --background's help.
    """
    parser.add_argument("--resume", default=resume_default, required=resume_default is None,
                        help="checkpoint to test" + (" (default: %(default)s)" if resume_default else "")
                        + "; a missing released model (SPEC §3) is downloaded to that path")
    parser.add_argument("--no_download", action="store_true", help="never download a missing released model")
    parser.add_argument("--stage", type=int, choices=(0, 1, 2, 3), default=None,
                        help="0/1: encoder-decoder alpha, 2/3: refined alpha (default: from the checkpoint)")
    parser.add_argument("--skip", dest="skip", action="store_true", default=None,
                        help="the model has skip connections (default: from the checkpoint or its file name)")
    parser.add_argument("--no_skip", dest="skip", action="store_false", help="the model has no skip connections")
    parser.add_argument("--crop_or_resize", choices=modes, default=mode_default, help=mode_help)
    parser.add_argument("--max_size", type=int, default=1600, help="cap on each side in whole mode (default: 1600)")
    hidden = argparse.SUPPRESS  # accepted, not shown
    parser.add_argument("--size_h", type=int, default=320,
                        help="tile/resize height for crop/resize (default: 320)" if crop_sizes else hidden)
    parser.add_argument("--size_w", type=int, default=320,
                        help="tile/resize width for crop/resize (default: 320)" if crop_sizes else hidden)
    parser.add_argument("--cuda", action="store_true", help="run on the GPU (default: CPU)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (autocast) on the GPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default): the exact path; bf16 (CPU with AVX-512 BF16/AMX, or CUDA) and fp16 "
                             "(CUDA): encoder in float32, the rest in the reduced type; somewhat faster, less "
                             "memory, mattes about 0.2 grey levels from fp32 (see README, Performance)")
    parser.add_argument("--tile_size", type=int, default=512,
                        help="window side for --crop_or_resize tile, a multiple of 32 (default: 512)")
    parser.add_argument("--tile_overlap", type=int, default=64,
                        help="minimum overlap of neighbouring windows in tile mode (default: 64)")
    add_cutout_args(parser, rgba=rgba, background_help=background_help)


@dataclass(frozen=True)
class InferenceOptions:
    """How to load the model and predict, checked when made (:class:`UserError`, one line, naming the flag).

    ``mode``, ``max_size``, ``size`` (h, w), ``tile_size``, ``tile_overlap``,
    ``stage``, ``amp``, ``precision``: as :func:`core.inference.predict`;
    ``cuda``: run on the GPU; ``resume``, ``download``, ``skip``: the checkpoint
    to load (:func:`core.folder.load_for_inference`); ``stage_flag``: how
    messages name the stage setting. ``modes``: the modes the run may use, each
    checked (default ``(mode,)``; the page's ``auto`` picks whole or tile per photo).
    """

    mode: str = "whole"
    max_size: int = 1600
    size: tuple = (320, 320)
    tile_size: int = 512
    tile_overlap: int = 64
    stage: Optional[int] = None
    amp: bool = False
    precision: str = "fp32"
    cuda: bool = False
    resume: Optional[str] = None
    download: bool = True
    skip: Optional[bool] = None
    stage_flag: str = "--stage {}"
    modes: tuple = field(default=())

    def __post_init__(self):
        for mode in self.modes or (self.mode,):
            self._check_mode(mode)
        try:  # the device type is the flags' choice: select_device gives CUDA for --cuda or fails
            check_precision(self.precision, "cuda" if self.cuda else "cpu")
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def _check_mode(self, mode):
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "whole":
            if self.max_size < 32 or self.max_size % 32:
                raise UserError(f"--max_size must be a positive multiple of 32 (the network's input sides are), "
                                f"got {self.max_size}")
        elif mode == "tile":
            try:
                check_tile_args(self.tile_size, self.tile_overlap)
            except ValueError as exc:
                raise UserError(str(exc)) from None
        else:  # crop, resize
            for flag, value in (("--size_h", self.size[0]), ("--size_w", self.size[1])):
                if value < 32 or value % 32:
                    raise UserError(f"{flag} must be a positive multiple of 32, got {value}")

    @classmethod
    def from_args(cls, args, modes=()):
        """From :func:`add_inference_args`' flags (and core/test.py's hidden ``--stage_setting``)."""
        setting = getattr(args, "stage_setting", None)  # deploy.sh: messages name STAGE=…
        return cls(mode=args.crop_or_resize, max_size=args.max_size, size=(args.size_h, args.size_w),
                   tile_size=args.tile_size, tile_overlap=args.tile_overlap, stage=args.stage, amp=args.amp,
                   precision=args.precision, cuda=args.cuda, resume=args.resume, download=not args.no_download,
                   skip=args.skip, stage_flag=f"{setting}={{}}" if setting else "--stage {}", modes=tuple(modes))

    def predict_kwargs(self, mode=None):
        """Keyword arguments of :func:`core.folder.predict_folder` and :func:`core.inference.predict_matte`;
        ``mode`` overrides :attr:`mode` (the page's choice for one photo)."""
        return dict(mode=mode or self.mode, max_size=self.max_size, size=tuple(self.size), stage=self.stage,
                    amp=self.amp, tile_size=self.tile_size, tile_overlap=self.tile_overlap, precision=self.precision)
