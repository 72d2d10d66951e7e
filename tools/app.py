"""An interactive matting page (Gradio): upload a photo, correct its trimap with a brush, get the matte.

    pip install -r requirements-optional.txt        # gradio
    python tools/app.py --resume model/stage1_skip_sad_52.9.pth    # then open http://127.0.0.1:7860

Takes the model flags of ``core/demo.py`` (``--resume``, ``--stage``, ``--cuda``,
``--max_size``, ``--tile_size``, …; ``--crop_or_resize`` here picks the page's
default mode: auto, whole or tile) and loads the model once. Listens on
127.0.0.1 only unless ``--host`` says otherwise; ``--share`` asks Gradio for a
public link.

The page: a photo; its trimap from the photo's alpha channel, an uploaded
mask or trimap, or a torchvision segmenter (``--segmenter``, ``--classes``), see
:func:`automatic_trimap`; a brush editor over the photo (white: foreground
255, black: background 0, grey: unknown 128); Predict shows image | trimap |
matte | cut-out (over a checkerboard or a colour) and offers the matte PNG,
the RGBA cut-out and the trimap as downloads. Mode ``auto`` predicts in
``whole`` mode when the photo fits ``--max_size`` and in ``tile`` mode
otherwise.

The endpoint ``predict`` (``gradio_client``: ``client.predict(handle_file(photo),
handle_file(trimap), "auto", api_name="/predict")``) returns the matte PNG,
byte for byte what ``core/test.py`` writes for the same files, model and mode.

Uploads and results live in one temporary folder, removed when the server
stops (and swept of results older than an hour while it runs); the client
sends files, never server paths. A refused upload or request is one
``refused: …`` line in the server's log, not a traceback; the first lines give
the address and name ``--share`` (Gradio's own banner is silenced).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import atexit
import shutil
import signal
import tempfile
import time

import cv2
import numpy as np

from core.cutout import (checkerboard, composite_on, estimate_foreground, make_rgba, parse_colour,
                         pymatting_available)
from core.folder import load_for_inference
from core.imageio import read_gray, read_image, read_unchanged, write_image
from core.inference import choose_mode, predict_matte, shrink_note, whole_size
from core.segment import Segmenter, add_segmenter_args
from core.options import REPO_ROOT, RELEASED_MODEL, InferenceOptions, add_inference_args
from core.utils import UserError, run_cli, setup_logging
from core.trimap import ALPHA as SUBJECT_ALPHA, MASK as SUBJECT_MASK, SEGMENTER as SUBJECT_SEGMENTER
from core.trimap import DEFAULT_WIDTH_FRAC, subject_mask, subject_source, trimap_from_mask, width_from_frac

INSTALL_HINT = "gradio is not installed: pip install -r requirements-optional.txt (or pip install gradio)"
MODES = ("auto", "whole", "tile")
AUTO, ALPHA, UPLOAD, SEGMENTER = "auto", "photo's alpha channel", "uploaded mask or trimap", "segmenter"
BRUSH = {"#ffffff": 255, "#808080": 128, "#000000": 0}  # brush colour → trimap value
RESULT_MAX_AGE = 3600  # seconds a result folder is kept for its downloads


# --------------------------------------------------------------------------- #
# Trimaps
# --------------------------------------------------------------------------- #
def trimap_sources():
    """The page's choices of where the trimap comes from."""
    return [AUTO, ALPHA, UPLOAD, SEGMENTER]


def is_trimap(img):
    """A file holding only 0/128/255 with some 128 is a trimap; anything else is a mask."""
    return bool(np.any(img == 128)) and not np.any((img != 0) & (img != 128) & (img != 255))


def automatic_trimap(photo, upload, source=AUTO, width=0, name="photo", segmenter=None, bgr=None):
    """The trimap (uint8 H×W, 0/128/255) and a note saying where it came from.

    ``photo``: the file as stored (:func:`core.imageio.read_unchanged`); ``upload``:
    an uploaded mask or trimap (uint8 H×W) or None; ``bgr``: a callable giving
    the photo as the network reads it (default: from ``photo``). ``source``: one
    of :func:`trimap_sources`; ``auto`` takes an uploaded trimap as it is, else
    chooses the subject as ``core/demo.py`` does (:func:`core.trimap.subject_source`:
    a not fully opaque alpha channel, else the uploaded mask, else ``segmenter``,
    a :class:`core.segment.Segmenter`). The subject becomes a trimap with
    ``tools/gen_trimap.py``'s band of ``width`` px to each side of the edge
    (0: 1 % of the diagonal). Raises :class:`UserError` when the chosen source
    has nothing.
    """
    h, w = photo.shape[:2]
    trimap_upload = source in (AUTO, UPLOAD) and upload is not None and is_trimap(upload)
    if source == AUTO and not trimap_upload:
        source = {SUBJECT_ALPHA: ALPHA, SUBJECT_MASK: UPLOAD}.get(subject_source(photo, upload is not None),
                                                                  SEGMENTER)
    if source == ALPHA and not (photo.ndim == 3 and photo.shape[2] == 4):
        raise UserError(f"{name} has no alpha channel: upload a mask or trimap")
    if source == UPLOAD and upload is None:
        raise UserError("no mask or trimap uploaded")
    if (trimap_upload or source == UPLOAD) and upload.shape != (h, w):
        raise UserError(f"the mask or trimap is {upload.shape[1]}×{upload.shape[0]} but {name} is {w}×{h}")
    if trimap_upload:
        return upload, "the uploaded trimap"
    if source == SEGMENTER and segmenter is None:
        raise UserError("no segmenter on this server: upload a mask or trimap")
    if source not in (ALPHA, UPLOAD, SEGMENTER):
        raise UserError(f"unknown trimap source {source!r}")
    kind = {ALPHA: SUBJECT_ALPHA, UPLOAD: SUBJECT_MASK, SEGMENTER: SUBJECT_SEGMENTER}[source]
    mask, _ = subject_mask(photo, upload, segmenter, kind, name=name, mask_name="the uploaded mask", bgr=bgr)
    note = {ALPHA: "the photo's alpha channel", UPLOAD: "the uploaded mask",
            SEGMENTER: f"the segmenter ({getattr(segmenter, 'name', '')})"}[source]
    width = int(width) or width_from_frac((h, w), DEFAULT_WIDTH_FRAC)
    return trimap_from_mask(mask, width, name=note), f"{note}, band {width} px"


def overlay(image_bgr, trimap):
    """What the editor shows under the brush: the photo, background darkened, unknown tinted. RGB uint8."""
    out = image_bgr.astype(np.float32)
    out[trimap == 0] *= 0.35
    unknown = trimap == 128
    out[unknown] = 0.55 * out[unknown] + 0.45 * np.float32([255, 0, 255])  # magenta
    return cv2.cvtColor(np.rint(out).astype(np.uint8), cv2.COLOR_BGR2RGB)


def apply_strokes(trimap, layers):
    """``trimap`` with the editor's brush strokes painted in: a new uint8 array.

    ``layers``: RGBA uint8 images from the editor; a pixel covered by a stroke
    (alpha ≥ 128) takes the trimap value of the nearest brush colour. Layers of
    another size (a scaled canvas) are resized to the trimap's, nearest-neighbour.
    """
    trimap = trimap.copy()
    h, w = trimap.shape
    for layer in layers or []:
        if layer is None or layer.ndim != 3 or layer.shape[2] != 4:
            continue
        if layer.shape[:2] != (h, w):
            layer = cv2.resize(layer, (w, h), interpolation=cv2.INTER_NEAREST)
        painted = layer[:, :, 3] >= 128
        grey = layer[:, :, :3].astype(np.int16).mean(axis=2)
        values = np.array(sorted(BRUSH.values()), np.int16)
        nearest = values[np.abs(grey[..., None] - values).argmin(axis=2)].astype(np.uint8)
        trimap[painted] = nearest[painted]
    return trimap


# --------------------------------------------------------------------------- #
# Prediction
# --------------------------------------------------------------------------- #
def check_request(image, trimap, mode, max_pixels):
    """Refuse what the model cannot take (:class:`UserError`); ``mode`` is ``whole`` or ``tile``."""
    h, w = image.shape[:2]
    if trimap.shape != (h, w):
        raise UserError(f"the trimap is {trimap.shape[1]}×{trimap.shape[0]} but the photo is {w}×{h}")
    if h * w > max_pixels:
        raise UserError(f"the photo is {w}×{h} ({h * w / 1e6:.1f} MP); this server takes at most "
                        f"{max_pixels / 1e6:.1f} MP in {mode} mode (--max_megapixels)")
    try:
        whole_size(h, w, max(h, w, 32))  # both modes need sides of at least 32
    except ValueError as exc:
        raise UserError(f"the photo is too small for {mode} mode: {exc}") from None
    if not np.any(trimap == 128):
        raise UserError("the trimap has no unknown (128) pixels: paint the edge with the grey brush")


def check_api_trimap(trimap):
    """What the API says about a trimap without unknown pixels: a 0/255 file is a mask (it has no brush)."""
    if np.any(trimap == 128):
        return
    if not np.any((trimap != 0) & (trimap != 255)):
        raise UserError("the trimap holds only 0 and 255: that is a mask, not a trimap; make a trimap of it with "
                        "`python tools/gen_trimap.py --input mask.png --output trimap.png` and pass that, or on the "
                        "page upload it as 'Mask or trimap' with 'Trimap from: uploaded mask or trimap'")
    raise UserError("the trimap has no unknown (128) pixels: mark the edge to be matted with 128")


class Matting:
    """The model, loaded once, and the page's and the API's work on it."""

    def __init__(self, args, options, logger, out_root):
        self.args = args
        self.options = options
        self.logger = logger
        self.out_root = out_root
        self.model, _ = load_for_inference(options, logger)
        # Names are checked now; its weights load (or download) on the first photo that needs them.
        self.segmenter = Segmenter(args.segmenter, args.classes, next(self.model.parameters()).device, download=not args.no_download)
        self.max_pixels = int(args.max_megapixels * 1e6)

    def matte(self, image, trimap, mode):
        """(uint8 matte, mode used) for BGR ``image`` and ``trimap``, as core/test.py computes it."""
        mode = choose_mode(mode, *trimap.shape, self.options.max_size)
        check_request(image, trimap, mode, self.max_pixels)
        note = shrink_note(*trimap.shape, self.options.max_size) if mode == "whole" else None
        if note:
            self.logger.info(note)
        start = time.perf_counter()
        matte = predict_matte(self.model, image, trimap, **self.options.predict_kwargs(mode))
        self.logger.info(f"{trimap.shape[1]}×{trimap.shape[0]} {mode}: {time.perf_counter() - start:.2f} s")
        return matte, mode

    def refused(self, exc):
        """The one log line of a rejected upload or request (no traceback: it is the user's file, not a bug)."""
        self.logger.info(f"refused: {exc}")

    def result_dir(self):
        """A fresh folder for one request's files; older ones (past RESULT_MAX_AGE) are removed."""
        now = time.time()
        for entry in os.scandir(self.out_root):
            if now - entry.stat().st_mtime > RESULT_MAX_AGE:
                shutil.rmtree(entry.path, ignore_errors=True)
        return tempfile.mkdtemp(dir=self.out_root)


def read_upload(reader, path, what):
    """Read an uploaded file; errors name the file as the user called it, never the server path."""
    try:
        return reader(path)
    except UserError as exc:
        raise UserError(str(exc).replace(path, f"{what} {os.path.basename(path)}")) from None


def stem_of(path):
    return os.path.splitext(os.path.basename(path))[0] or "photo"


def background_of(choice, colour, h, w):
    """The cut-out's backdrop: a checkerboard image or a BGR colour (``#rrggbb`` or ``rgb(a)(r, g, b…)``)."""
    if choice != "colour":
        return checkerboard(h, w)
    text = (colour or "").strip()
    if text.startswith("rgb"):
        text = ",".join(str(round(float(v))) for v in text[text.index("(") + 1:-1].split(",")[:3])
    parsed = parse_colour(text)
    if parsed is None:
        raise UserError(f"not a colour: {colour!r}")
    return parsed


def page_colour(backgrounds):
    """The page's first cut-out colour, ``#rrggbb``, from ``--background`` (a list, or one string), or None."""
    specs = [backgrounds] if isinstance(backgrounds, str) else backgrounds or []
    if len(specs) > 1:
        raise UserError("the page takes one --background colour")
    if not specs:
        return None
    bgr = parse_colour(specs[0])
    if bgr is None:
        raise UserError(f"--background {specs[0]!r}: the page takes a colour (#RRGGBB, R,G,B or a name), not an image")
    return "#{:02x}{:02x}{:02x}".format(*reversed(bgr))


# --------------------------------------------------------------------------- #
# The page
# --------------------------------------------------------------------------- #
def build_page(gr, matting):
    """The Gradio Blocks of the page and the ``predict`` endpoint."""
    args = matting.args

    def message(text):
        return f"**⚠ {text}**" if text else ""

    def refresh_trimap(photo, upload, source, width):
        """Photo, upload, source or width changed: a new trimap under the brush (strokes reset)."""
        if not photo:
            return None, None, ""
        try:
            stored = read_upload(read_unchanged, photo, "photo")
            image = read_image(photo)
        except UserError as exc:
            matting.refused(exc)
            return None, None, message(exc)
        try:
            up = read_upload(read_gray, upload, "mask or trimap") if upload else None
            trimap, note = automatic_trimap(stored, up, source, width, name=f"photo {os.path.basename(photo)}",
                                            segmenter=matting.segmenter, bgr=lambda: image)
        except UserError as exc:  # show the photo to paint on anyway
            matting.refused(exc)
            return ({"background": cv2.cvtColor(image, cv2.COLOR_BGR2RGB), "layers": [], "composite": None},
                    None, message(exc))
        return ({"background": overlay(image, trimap), "layers": [], "composite": None}, trimap,
                f"Trimap from {note}. Paint to correct it, then Predict.")

    def predict_page(photo, editor, trimap, mode, backdrop, colour, progress=gr.Progress(track_tqdm=True)):
        """Predict button: the four panels, three downloads and a message."""
        empty, start = (None,) * 7, time.perf_counter()
        try:
            if not photo:
                raise UserError("upload a photo first")
            progress(0.05, desc="reading")
            image = read_upload(read_image, photo, "photo")
            if trimap is None:  # no source gave one: what was painted over a background trimap
                trimap = np.zeros(image.shape[:2], np.uint8)
            trimap = apply_strokes(trimap, (editor or {}).get("layers"))
            progress(0.15, desc="predicting")
            matte, used = matting.matte(image, trimap, mode)
            progress(0.75, desc="cut-out")
            fg = estimate_foreground(image, matte, args.fg_backend)
            shown = composite_on(fg, matte, background_of(backdrop, colour, *trimap.shape))
        except UserError as exc:
            matting.refused(exc)
            return (*empty, message(exc))
        folder, stem = matting.result_dir(), stem_of(photo)
        files = [os.path.join(folder, f"{stem}.png"), os.path.join(folder, f"{stem}_rgba.png"),
                 os.path.join(folder, f"{stem}_trimap.png")]
        for path, img in zip(files, (matte, make_rgba(fg, matte), trimap)):
            write_image(path, img)
        rgb = [cv2.cvtColor(image, cv2.COLOR_BGR2RGB), trimap, matte, cv2.cvtColor(shown, cv2.COLOR_BGR2RGB)]
        matting.logger.info(f"page request with cut-out: {time.perf_counter() - start:.2f} s")
        note = shrink_note(*trimap.shape, matting.options.max_size) if used == "whole" else None
        return (*rgb, *files, f"Predicted in {used} mode." + (f" {note}." if note else ""))

    def predict_api(photo, trimap, mode):
        """photo, trimap (image files), mode (auto|whole|tile) → the 8-bit matte PNG core/test.py writes."""
        try:
            if not photo or not trimap:
                raise UserError("give a photo and a trimap")
            image, trimap = read_upload(read_image, photo, "photo"), read_upload(read_gray, trimap, "trimap")
            check_api_trimap(trimap)
            matte, _ = matting.matte(image, trimap, mode or AUTO)
        except UserError as exc:  # one log line; the caller gets the message, not a server traceback
            matting.refused(exc)
            raise gr.Error(str(exc), print_exception=False) from None
        path = os.path.join(matting.result_dir(), f"{stem_of(photo)}.png")
        write_image(path, matte)
        return path

    start_colour = page_colour(args.background)
    brush = gr.Brush(colors=list(BRUSH), default_color="#ffffff", color_mode="fixed")
    with gr.Blocks(title="Deep Image Matting", delete_cache=(600, RESULT_MAX_AGE)) as page:
        gr.Markdown("## Deep Image Matting\nUpload a photo and a mask or trimap (or a photo with an alpha channel), "
                    "correct the trimap with the brush — **white** foreground, **black** background, "
                    "**grey** unknown — and press **Predict**.")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                photo = gr.File(label="Photo", file_types=["image"], elem_id="photo")
                upload = gr.File(label="Mask or trimap (optional)", file_types=["image"], elem_id="upload")
                source = gr.Radio(trimap_sources(), value=AUTO, label="Trimap from", elem_id="source")
                width = gr.Slider(0, 100, value=0, step=1, label="Band width, px each side (0: 1 % of the diagonal)")
                mode = gr.Radio(list(MODES), value=args.crop_or_resize, label=f"Mode (auto: tile above "
                                f"{args.max_size} px)", elem_id="mode")
                with gr.Row():
                    backdrop = gr.Radio(["checkerboard", "colour"], value="colour" if start_colour else "checkerboard",
                                        label="Cut-out over")
                    colour = gr.ColorPicker(start_colour or "#2e8b57", label="Colour")
                run = gr.Button("Predict", variant="primary", elem_id="predict")
                note = gr.Markdown(elem_id="message")
            with gr.Column(scale=2):
                editor = gr.ImageEditor(label="Trimap brush", type="numpy", image_mode="RGBA", sources=(),
                                        transforms=(), layers=False, brush=brush, elem_id="editor",
                                        buttons=[], canvas_size=(640, 480), format="png")
        with gr.Row():
            panels = [gr.Image(label=label, type="numpy", interactive=False, format="png", elem_id=f"panel-{i}")
                      for i, label in enumerate(("image", "trimap", "matte", "cut-out"))]
        with gr.Row():
            downloads = [gr.File(label=label, interactive=False, elem_id=eid) for label, eid in
                         (("matte PNG", "matte-file"), ("RGBA cut-out", "rgba-file"), ("trimap", "trimap-file"))]
        trimap = gr.State(None)

        refresh = dict(fn=refresh_trimap, inputs=[photo, upload, source, width], outputs=[editor, trimap, note],
                       api_visibility="private", concurrency_id="trimap")  # one queue: the last change wins
        photo.change(**refresh)
        upload.change(**refresh)
        source.input(**refresh)
        width.release(**refresh)
        run.click(predict_page, inputs=[photo, editor, trimap, mode, backdrop, colour],
                  outputs=[*panels, *downloads, note], api_visibility="private", concurrency_id="model")

        # The API endpoint: hidden components, files in and out, so nothing is re-encoded.
        api_in = [gr.File(label="photo", visible=False), gr.File(label="trimap", visible=False),
                  gr.Radio(list(MODES), value=AUTO, label="mode", visible=False)]
        api_out = gr.File(label="matte", visible=False)
        gr.Button(visible=False).click(predict_api, inputs=api_in, outputs=api_out, api_name="predict",
                                       concurrency_id="model")
    return page


def quiet_refusals(logger):
    """One log line instead of the traceback Gradio prints when it refuses a request itself.

    Gradio's queue prints every exception but a quiet ``gr.Error``; a file
    path the client did not upload (``InvalidPathError``) is a refused
    request, not a crash of this server. Other exceptions keep their traceback.
    """
    try:
        import gradio.exceptions as gr_exceptions
        import gradio.queueing as queueing
    except ImportError:
        return
    real = getattr(queueing, "traceback", None)
    refused = getattr(gr_exceptions, "InvalidPathError", None)
    if real is None or refused is None:  # another Gradio: leave it as it is
        return

    class Traceback:
        def __getattr__(self, name):
            return getattr(real, name)

        def print_exc(self, *a, **kw):
            exc = sys.exc_info()[1]
            if isinstance(exc, refused):
                logger.info(f"refused: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            else:
                real.print_exc(*a, **kw)

    queueing.traceback = Traceback()


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="An interactive matting page (Gradio) on 127.0.0.1:7860.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                                                            "machine only; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also ask Gradio for a public share link")
    parser.add_argument("--max_megapixels", type=float, default=40.0,
                        help="largest photo the page takes, in megapixels (default: 40)")
    add_segmenter_args(parser.add_argument_group("automatic trimaps (a photo without alpha channel or upload)"))
    # the page's modes: whole, tile, or auto (whole when the photo fits); no crop/resize sizes, no --rgba files
    add_inference_args(parser, resume_default=os.path.join(REPO_ROOT, "model", RELEASED_MODEL), modes=MODES,
                       mode_default=AUTO, mode_help="the page's default mode: whole, tile, or auto (default): whole "
                                                    "when both sides fit --max_size, else tile",
                       crop_sizes=False, rgba=False,
                       background_help="the page's cut-out colour (#RRGGBB, R,G,B, white, green, …; default: a "
                                       "checkerboard)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logger = setup_logging()
    options = InferenceOptions.from_args(args, modes=("whole", "tile"))  # auto may use either
    if args.fg_backend == "pymatting" and not pymatting_available():
        raise UserError("--fg_backend pymatting: pymatting is not installed (pip install pymatting)")
    page_colour(args.background)  # a bad --background fails before the model loads
    if args.max_megapixels <= 0:
        raise UserError(f"--max_megapixels must be positive, got {args.max_megapixels}")
    temp_root = tempfile.mkdtemp(prefix="dim-app-")
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(temp_root, "uploads")  # gradio reads it at import
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio as gr
    except ImportError:
        shutil.rmtree(temp_root)
        raise UserError(INSTALL_HINT) from None
    atexit.register(shutil.rmtree, temp_root, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that atexit cleans up on `kill`
    out_root = os.path.join(temp_root, "results")
    os.makedirs(out_root)
    matting = Matting(args, options, logger, out_root)
    page = build_page(gr, matting)
    quiet_refusals(logger)
    logger.info(f"temporary files in {temp_root} (removed on exit)")
    # Gradio's own banner would say "set `share=True` in `launch()`": this page's lines name its flags
    _, local_url, share_url = page.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, show_error=True, quiet=True,
        prevent_thread_lock=True)
    logger.info(f"the page is on {local_url} (Ctrl-C stops it)")
    if share_url:
        logger.info(f"public link: {share_url} (anyone with it can use this server; it ends with the server)")
    else:
        logger.info("for a public link, start it with --share" if args.host in ("127.0.0.1", "localhost") else
                    f"listening on {args.host}; --share also gives a public link")
    page.block_thread()
    return 0


if __name__ == "__main__":
    run_cli(main)
