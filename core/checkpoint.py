"""Reading and writing checkpoints: the one loader every entry point uses.

Reads, without unpickling arbitrary objects:

* the reference's released checkpoints (SPEC §3): ``{state_dict, epoch,
  best_sad}`` in torch's legacy format pickled by Python 2 (see
  ``core.legacy_pickle``);
* this project's checkpoints (zip format, ``torch.load(weights_only=True)``);
* bare state dicts, with or without ``module.``/``_orig_mod.`` prefixes.

This project's checkpoints keep the reference's keys (``epoch`` is the next
epoch to run, ``state_dict`` without prefixes, ``best_sad`` a plain float) and
add ``arch`` (the network's keyword arguments), ``optimizer``, ``config`` and
``format_version``. They are written atomically.
"""

import io
import os
import pickle
import struct
import warnings
import zipfile
from collections import namedtuple

import numpy as np
import torch

from core.imageio import write_bytes_atomic
from core.legacy_pickle import ForbiddenGlobal, is_legacy_file, load_legacy
from core.network import ENCODER_NAMES, DIMNet
from core.stages import has_refine
from core.utils import UserError

FORMAT_VERSION = 1

Release = namedtuple("Release", "stage skip conv6_kernel sad tag")
# The released files (SPEC §3): training stage, skip connections, conv6 kernel, Composition-1k SAD, and
# the release (git tag) of the reference repository they are attached to (core.release downloads them).
RELEASES = {
    "stage1_skip_sad_52.9.pth": Release(1, True, 3, 52.99, "V1.5"),
    "stage1_sad_54.4.pth": Release(1, False, 3, 54.42, "v1.4"),
    "stage1_sad_57.1.pth": Release(1, False, 1, 57.1, "v1.3"),
    "stage2_norm_balance_sad_57.9.pth": Release(2, False, 1, 57.7, "v1.2"),
    "stage1_norm_balance_sad_58.7.pth": Release(1, False, 1, 58.7, "v1.2"),
    "stage0_norm_balance_sad_62.0.pth": Release(0, False, 1, 62.0, "v1.2"),
}
# Older releases whose input handling differed from this code (SPEC §3).
UNSUPPORTED_RELEASES = ("stage0_norm_e12_sad_69.1.pth", "my_stage0_sad_72.9.pth")
RELEASE_URL = "https://github.com/huochaitiantang/pytorch-deep-image-matting/releases"

_PREFIXES = ("module.", "_orig_mod.")


# What torch's zip reader and the pickle machinery raise on malformed bytes: an
# unknown opcode is a KeyError, a bad memo or stack reference an IndexError or
# KeyError, a REDUCE on a non-callable a TypeError, a damaged zip directory an
# OSError (errno 22) or RuntimeError, a length beyond the file an EOFError,
# a malformed persistent id an AssertionError in torch's weights-only reader.
READER_ERRORS = (EOFError, OSError, zipfile.BadZipFile, struct.error, ValueError, RuntimeError, KeyError,
                 IndexError, TypeError, AttributeError, AssertionError, NotImplementedError, OverflowError,
                 MemoryError, RecursionError)


def _one_line(exc, kind=None):
    """A short, printable, one-line rendering of an exception (or string) for an error message."""
    lines = str(exc).splitlines()
    text = "".join(c if c.isprintable() else "?" for c in (lines[0].strip() if lines else ""))[:200]
    if kind:
        text = f"{kind}: {text}" if text else kind
    return text


def _torch_load_safe(path):
    """``torch.load(weights_only=True)`` allowing only numeric numpy scalars."""
    safe = [np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType]
    try:
        from numpy._core.multiarray import scalar
        safe.append(scalar)
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
        safe.append(scalar)
    with torch.serialization.safe_globals(safe):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path):
    """Load ``path`` safely into ``{'state_dict': …, **metadata}``.

    The state dict's keys lose any ``module.``/``_orig_mod.`` prefix and
    ``best_sad`` becomes a Python float. Raises :class:`UserError` for a
    missing, truncated or corrupt file, or one whose unpickling would run code.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(16)
    if is_legacy_file(head):
        reader = load_legacy
    elif head.startswith(b"PK\x03\x04"):
        reader = _torch_load_safe
    else:
        raise UserError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy torch file)")
    # The one place where what the readers raise on bad bytes becomes a user error.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on an unusual pickle protocol: the error says enough
            obj = reader(path)
    except ForbiddenGlobal as exc:
        raise UserError(f"{path}: refusing to load: unpickling it would call {_one_line(exc)} "
                        "(only tensors and plain values are allowed)") from None
    except pickle.UnpicklingError as exc:
        msg = str(exc).splitlines()
        detail = next((line.strip() for line in msg if "GLOBAL" in line or "Unsupported" in line), msg[0] if msg else "")
        if "weights_only" in str(exc) or "GLOBAL" in str(exc):
            raise UserError(f"{path}: refusing to load: the file holds objects other than tensors and plain values "
                            f"({_one_line(detail)})") from None
        raise UserError(f"{path}: truncated or corrupt checkpoint ({_one_line(detail)})") from None
    except READER_ERRORS as exc:
        raise UserError(f"{path}: truncated or corrupt checkpoint ({_one_line(exc, type(exc).__name__)})") from None
    return _normalize(obj, path)


def _normalize(obj, path):
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        ckpt = dict(obj)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        ckpt = {"state_dict": obj}
    else:
        kind = type(obj).__name__
        keys = _one_line(", ".join(map(str, list(obj)[:5]))) if isinstance(obj, dict) else ""
        raise UserError(f"{path}: not a checkpoint: expected a state dict or a dict with 'state_dict', "
                        f"found a {kind}" + (f" with keys {keys}" if keys else ""))
    state = {}
    for key, value in ckpt["state_dict"].items():
        key = str(key)
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: state_dict entry {_one_line(repr(key))} is a {type(value).__name__}, "
                            "not a tensor")
        state[key] = value
    ckpt["state_dict"] = state
    for key, kind in (("best_sad", float), ("epoch", int)):
        value = ckpt.get(key)
        if value is None:
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
            raise UserError(f"{path}: {key} is a {type(value).__name__}, not a number")
        if kind is int and (not np.isfinite(value) or value != int(value)):
            raise UserError(f"{path}: epoch {_one_line(value)} is not a whole number")
        ckpt[key] = kind(value)
    return ckpt


def describe_foreign(state, path):
    """A one-line explanation when ``state`` is not a DIM network's state dict, else None."""
    keys = set(state)
    if any(k.startswith("features.") for k in keys) and any(k.startswith("classifier.") for k in keys):
        return (f"{path}: this looks like torchvision's ImageNet VGG-16 (features.*/classifier.* keys), "
                "not a Deep Image Matting checkpoint; convert it with `python tools/chg_model.py --vgg "
                f"{path}` and use the result as --pretrain")
    if "conv1_1.weight" in keys and "deconv1.weight" not in keys:
        if set(ENCODER_NAMES) >= {k.rsplit(".", 1)[0] for k in keys}:
            return (f"{path}: this holds only VGG-16 encoder weights (as written by tools/chg_model.py), "
                    "not a trained matting model; use it for training with --pretrain")
    if "conv1_1.weight" not in keys or "deconv1.weight" not in keys:
        sample = ", ".join(sorted(keys)[:4])
        return f"{path}: not a Deep Image Matting checkpoint (no conv1_1/deconv1 weights; keys like {sample})"
    return None


def trained_skip(ckpt, path):
    """``(skip, source)`` when the file says whether it was trained with skip connections, else None.

    The weights cannot tell (skip sums have no parameters): this project's
    metadata can, and so can the name of a released file (SPEC §3).
    """
    if isinstance(ckpt.get("arch"), dict) and "skip" in ckpt["arch"]:
        return bool(ckpt["arch"]["skip"]), "checkpoint metadata"
    name = os.path.basename(path)
    if name in RELEASES:
        return RELEASES[name].skip, "release file name"
    return None


def is_reference_format(ckpt):
    """True for a file the reference wrote (no ``format_version``): its ``best_sad`` is on another scale."""
    return "format_version" not in ckpt


def arch_from_checkpoint(ckpt, path, skip=None):
    """The network's keyword arguments for ``ckpt`` and where ``skip`` came from.

    conv6 kernel and refinement head are read off the weights; skip comes from
    ``skip`` (a flag) if given, else this project's metadata, else the release
    file name, else on (the current reference).
    """
    state = ckpt["state_dict"]
    problem = describe_foreign(state, path)
    if problem:
        raise UserError(problem)
    conv6 = state.get("conv6_1.weight")
    if conv6 is None or conv6.dim() != 4 or conv6.shape[-1] not in (1, 3):
        raise UserError(f"{path}: conv6_1.weight missing or of unexpected shape "
                        f"{None if conv6 is None else tuple(conv6.shape)} (expected 512×512×1×1 or 512×512×3×3)")
    arch = {"conv6_kernel": int(conv6.shape[-1]), "refine": "refine_pred.weight" in state}
    said = trained_skip(ckpt, path)
    if skip is not None:
        arch["skip"], source = bool(skip), "command line"
    elif said is not None:
        arch["skip"], source = said
    else:
        arch["skip"], source = True, "default (current reference); pass --no_skip for models trained without skip"
    return arch, source


def load_model(path, stage=None, skip=None, device="cpu", stage_flag="--stage {}"):
    """Build the network a checkpoint holds and load its weights strictly.

    Args:
        path: checkpoint file.
        stage: 0–3 or None. Stages 2/3 need a refinement head in the file;
            stages 0/1 refuse one (its refined alpha would be ignored).
        skip: True/False to override the skip setting (``--skip``/``--no_skip``).
        stage_flag: how the user set the stage, for messages (deploy.sh: ``STAGE={}``).
    Returns:
        ``(model, info)``: the model in eval mode on ``device``; ``info`` has
        ``arch``, ``skip_source``, ``epoch``, ``best_sad``, ``stage`` (the training
        stage from this project's config, None for other files).
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if name in UNSUPPORTED_RELEASES:
        raise UserError(f"{path}: this early release came from code whose input handling differed; "
                        "it is not supported (use stage1_skip_sad_52.9.pth or another model of SPEC §3)")
    ckpt = read_checkpoint(path)
    arch, source = arch_from_checkpoint(ckpt, path, skip)
    if stage is not None:
        check_stage(path, arch["refine"], stage, stage_flag)
    model = DIMNet(**arch)
    check_state_dict(model, ckpt["state_dict"], path)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.to(device).eval()
    info = {"arch": arch, "skip_source": source, "epoch": ckpt.get("epoch"), "best_sad": ckpt.get("best_sad"),
            "stage": (ckpt.get("config") or {}).get("stage")}
    return model, info


def check_stage(path, has_head, stage, stage_flag="--stage {}"):
    """Refuse (:class:`UserError`) a file with(out) a refinement head for a ``stage`` without (with) one.

    ``has_head``: the file holds ``refine_*`` weights; ``stage_flag``: how the
    user set the stage, for the message. Loading and resuming both ask here.
    """
    want = has_refine(stage)
    if want and not has_head:
        raise UserError(f"{path}: {stage_flag.format(stage)} needs a refinement head, but the file has no "
                        f"refine_* weights (a stage 0/1 model): use {stage_flag.format(1)}, or train stage 2 "
                        "from it with --pretrain")
    if has_head and not want:
        raise UserError(f"{path}: the file holds a refinement head (refine_* weights, a stage 2/3 model) "
                        f"that {stage_flag.format(stage)} would ignore: use {stage_flag.format(2)} or 3")


def check_resume(model, ckpt, path, stage, skip):
    """Refuse (:class:`UserError`) to resume ``model`` (built for ``stage``, ``skip``) from ``ckpt``.

    The file must have a refinement head exactly when the stage does, the
    skip setting it says it was trained with (:func:`trained_skip`), every
    weight of ``model`` in the right shape, and a stored epoch.
    """
    state = ckpt["state_dict"]
    check_stage(path, any(k.startswith("refine_") for k in state), stage)
    said = trained_skip(ckpt, path)
    if said is not None and said[0] != skip:
        raise UserError(f"{path} was trained {'with' if said[0] else 'without'} skip connections ({said[1]}): "
                        f"resume with {'--skip' if said[0] else '--no_skip'}")
    check_state_dict(model, state, path)
    if ckpt.get("epoch") is None:
        raise UserError(f"{path}: no epoch stored (a bare state dict?): start from it with --pretrain instead")


def _list(keys, limit=6):
    keys = sorted(keys)
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(model, state, path):
    """Raise a readable :class:`UserError` unless ``state`` fits ``model`` exactly."""
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected {_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_list(shapes, 3)}")
    if problems:
        raise UserError(f"{path}: weights do not fit the network: " + "; ".join(problems))


def unwrap(model):
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def atomic_torch_save(obj, path):
    """``torch.save`` through a temporary file in the same folder and a rename.

    A crash mid-write leaves the previous file intact.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getbuffer())


def save_checkpoint(path, model, epoch, best_sad, optimizer=None, config=None, train_state=None):
    """Write a checkpoint in the reference's format plus this project's metadata.

    ``epoch`` is stored as given: the reference stores the *next* epoch to run.
    ``config`` (the resolved run configuration) and ``train_state`` (where a
    run stopped inside an epoch, AMP scaler state) must hold plain values
    (str, int, float, bool, None, lists, dicts, tensors).
    """
    net = unwrap(model)
    obj = {
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "epoch": int(epoch),
        "best_sad": None if best_sad is None else float(best_sad),
        "arch": dict(net.arch),
        "format_version": FORMAT_VERSION,
    }
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    if config is not None:
        obj["config"] = config
    if train_state is not None:
        obj["train_state"] = train_state
    atomic_torch_save(obj, path)


def pretrain_misfits(net, ckpt, path):
    """One-line problems that make ``ckpt`` a wrong start for ``net`` (empty when it fits).

    Names the tensors whose shapes differ and the likely cause, a skip
    setting that differs from what the file says it was trained with, and
    encoder tensors (``conv1_1`` … ``conv5_3``) the file lacks (STYLE §8: the
    encoder is what a start must provide). Other missing tensors are not a
    problem (the decoder of the converted VGG-16 is meant to stay random).
    """
    state, own = ckpt["state_dict"], net.state_dict()
    problems = []
    misfits = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if misfits:
        shapes = _list([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in misfits], 3)
        conv6 = state.get("conv6_1.weight")
        if "conv6_1.weight" in misfits and conv6.dim() == 4 and conv6.shape[-1] in (1, 3):
            cause = f"the file was trained with --conv6_kernel {conv6.shape[-1]}: pass --conv6_kernel {conv6.shape[-1]}"
        elif "conv1_1.weight" in misfits and tuple(state["conv1_1.weight"].shape[1:2]) == (3,):
            cause = "an RGB (3-channel) VGG-16: convert it with tools/chg_model.py"
        else:
            cause = "the file holds another network"
        problems.append(f"{len(misfits)} tensor(s) of the file do not fit the network being built: {shapes} "
                        f"(likely cause: {cause})")
    said = trained_skip(ckpt, path)
    if said is not None and said[0] != net.skip:
        problems.append(f"it was trained {'with' if said[0] else 'without'} skip connections ({said[1]}) but the "
                        f"network being built has {'them' if net.skip else 'none'}: pass "
                        f"{'--skip' if said[0] else '--no_skip'}")
    missing = [k for k in own if k.rsplit(".", 1)[0] in ENCODER_NAMES and k not in state]
    if missing:
        problems.append(f"{len(missing)} encoder tensor(s) of the network are not in the file: {_list(missing, 3)} "
                        "(they would keep their random initialisation)")
    return problems


def check_pretrain(net, path, partial=False):
    """Read ``path`` and check it as a starting point for ``net``; returns ``(ckpt, problems)``.

    ``net`` may live on the meta device (only names and shapes are used).
    Raises :class:`UserError` when nothing of the file fits, and, unless
    ``partial``, when :func:`pretrain_misfits` finds problems.
    """
    ckpt = read_checkpoint(path)
    state, own = ckpt["state_dict"], net.state_dict()
    if not any(k in own and own[k].shape == v.shape for k, v in state.items()):
        problem = describe_foreign(state, path)
        if problem and "torchvision" in problem:
            raise UserError(problem)
        raise UserError(f"{path}: no weight of this file fits the network (keys like {_list(state, 3)})")
    problems = pretrain_misfits(net, ckpt, path)
    if problems and not partial:
        raise UserError(f"{path}: " + "; ".join(problems) + " (or --pretrain_partial to load only what fits)")
    return ckpt, problems


def load_partial(model, path, partial=False, warn=None):
    """Load ``path`` into ``model`` as a starting point (``--pretrain``), by name and shape.

    Tensors of the model absent from the file keep their values. Tensors of
    the wrong shape, or a skip setting other than the one the file was trained
    with (:func:`pretrain_misfits`), are a :class:`UserError`, unless
    ``partial`` (``--pretrain_partial``): then each problem goes to ``warn``
    and only what fits is loaded.

    Returns ``(loaded, random, skipped)``: names loaded, parameters of the model
    left as they were, and file entries not used (absent from the model or of
    another shape, with the reason). A file of which nothing fits is an error.
    """
    net = unwrap(model)
    ckpt, problems = check_pretrain(net, path, partial)
    for problem in problems:
        if warn is not None:
            warn(f"{path}: {problem}; --pretrain_partial: loading only what fits")
    state, own = ckpt["state_dict"], net.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = {k: ("shape " + str(tuple(v.shape)) + " vs " + str(tuple(own[k].shape))) if k in own else "not in the network"
               for k, v in state.items() if k not in fits}
    net.load_state_dict(fits, strict=False)
    random = sorted(set(own) - set(fits))
    return sorted(fits), random, skipped
