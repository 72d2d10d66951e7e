"""Which model made the files in an output folder, so that one model's results never replace another's.

``core/demo.py``, ``core/test.py`` and ``tools/cutout.py`` write mattes, side-by-side
pictures, cut-outs and scores into a folder. ``made_by.json`` there records, for every
file they wrote, its *maker*: the checkpoint (path and SHA-256 of the file), the stage
and skip setting, the inference mode with its sizes, and the precision. The rule is
``tools/export.py``'s:

* a re-run with the same maker replaces its own files;
* a folder that holds files of another maker is refused (one line naming ``--force``),
  before anything is written, so results are never overwritten or mixed in silently;
* a file to be written that exists but is not in the record (another tool's, or written
  before records were kept) is refused the same way.

With ``--force`` the files are written and the record says which maker made which,
so a mixed folder stays readable.
"""

import hashlib
import json
import os

from core.imageio import write_bytes_atomic
from core.utils import UserError

RECORD = "made_by.json"
FORMAT = 1
_hashes = {}  # (path, size, mtime) → SHA-256: one read of a big checkpoint per process


def add_force_arg(parser):
    """``--force``: write into a folder that holds another model's results."""
    parser.add_argument("--force", action="store_true",
                        help=f"write into a folder whose {RECORD} says another model (or mode, or precision) made "
                             "its files; without it such a run is refused before anything is written")


def file_sha256(path):
    """SHA-256 hex digest of the file at ``path`` (cached per path, size and mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def model_maker(options, info):
    """The maker of a prediction run: checkpoint, its weights' file hash, stage, skip, mode and sizes, precision.

    ``options``: :class:`core.options.InferenceOptions`; ``info``: what
    :func:`core.checkpoint.load_model` returned with the model.
    """
    mode = options.mode
    sizes = {"whole": ("max_size",), "crop": ("size",), "resize": ("size",), "tile": ("tile_size", "tile_overlap"),
             "auto": ("max_size", "tile_size", "tile_overlap")}[mode]
    maker = {"checkpoint": os.path.abspath(options.resume), "sha256": file_sha256(options.resume),
             "stage": options.stage, "skip": bool(info["arch"]["skip"]), "mode": mode}
    maker.update({k: list(getattr(options, k)) if k == "size" else getattr(options, k) for k in sizes})
    maker.update(precision=options.precision, amp=bool(options.amp))
    return maker


def maker_key(maker):
    """A short name of ``maker`` for the record: 12 hex digits of its canonical JSON."""
    return hashlib.sha256(json.dumps(maker, sort_keys=True).encode()).hexdigest()[:12]


def describe(maker):
    """One line for a message: ``model /x/ckpt.pth (sha256 1a2b3c4d…), whole max_size 1600, fp32``."""
    if "checkpoint" not in maker:  # tools/cutout.py on a matte of unknown origin
        return f"the matte {maker.get('matte')} (sha256 {str(maker.get('sha256'))[:8]}…)"
    sizes = " ".join(f"{k} {maker[k]}" for k in ("max_size", "size", "tile_size", "tile_overlap") if k in maker)
    stage = f", stage {maker['stage']}" if maker.get("stage") is not None else ""
    return (f"model {maker['checkpoint']} (sha256 {maker['sha256'][:8]}…{stage}), {maker['mode']}"
            + (f" {sizes}" if sizes else "") + f", {maker['precision']}" + (" with --amp" if maker.get("amp") else ""))


def read_record(folder):
    """``{"makers": {key: maker}, "files": {relative path: key}}`` of ``folder`` (empty when there is none)."""
    try:
        with open(os.path.join(folder, RECORD), encoding="utf-8") as f:
            record = json.load(f)
        makers, files = dict(record["makers"]), dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return {"makers": {}, "files": {}}
    return {"makers": makers, "files": {f: k for f, k in files.items() if k in makers}}


def maker_of(folder, name):
    """The maker recorded for the file ``name`` of ``folder``, or None."""
    record = read_record(folder)
    key = record["files"].get(name)
    return record["makers"].get(key) if key else None


def check_outputs_maker(folder, targets, maker, force=False, flag="--saveDir"):
    """Refuse (:class:`UserError`, one line) to write ``targets`` into ``folder`` for ``maker``, unless ``force``:

    when the folder holds files another maker wrote (mixing results), or a target
    exists that no record claims. ``targets``: paths relative to ``folder`` ('/' separated).
    """
    if force:
        return
    record = read_record(folder)
    key = maker_key(maker)
    others = [(f, k) for f, k in sorted(record["files"].items())
              if k != key and os.path.exists(os.path.join(folder, *f.split("/")))]
    if others:
        name, other = others[0]
        mine = " (same checkpoint, other settings)" if record["makers"][other].get("sha256") == maker.get("sha256") \
            else ""
        raise UserError(f"{folder} holds results of another run{mine}: {name} and {len(others) - 1} more file(s) "
                        f"by {describe(record['makers'][other])} (see {RECORD}); this run is {describe(maker)}: "
                        f"choose another {flag}, or pass --force to write beside them")
    for target in targets:
        path = os.path.join(folder, *target.split("/"))
        if os.path.exists(path) and target not in record["files"]:
            raise UserError(f"{path} exists and {RECORD} does not say this project's commands wrote it: choose "
                            f"another {flag}, or pass --force to replace it")


def record_outputs(folder, targets, maker):
    """Record ``maker`` for ``targets`` in ``folder/made_by.json`` (atomically), just before they are written.

    Entries of files that no longer exist and makers left without files are dropped.
    """
    record = read_record(folder)
    key = maker_key(maker)
    files = {f: k for f, k in record["files"].items() if os.path.exists(os.path.join(folder, *f.split("/")))}
    files.update(dict.fromkeys(targets, key))
    makers = {**record["makers"], key: maker}
    used = set(files.values())
    out = {"format": FORMAT, "note": "which model made each file here (core/demo.py, core/test.py, tools/cutout.py)",
           "makers": {k: v for k, v in sorted(makers.items()) if k in used}, "files": dict(sorted(files.items()))}
    os.makedirs(folder, exist_ok=True)
    write_bytes_atomic(os.path.join(folder, RECORD), (json.dumps(out, indent=1) + "\n").encode("utf-8"))
