"""The stage table (core.stages) against SPEC §7–8 and against what its readers actually do."""

import pytest
import torch

from core.checkpoint import check_stage
from core.inference import use_refined
from core.losses import stage_loss
from core.stages import STAGES, batch_keys, has_refine, stage_info
from core.utils import UserError

# SPEC §7/§8, written out: stage → (refinement head, logged loss terms, head-only training)
SPEC = {0: (False, ["loss"], False), 1: (False, ["loss", "alpha", "comp"], False),
        2: (True, ["loss"], True), 3: (True, ["loss", "stage1", "stage2", "alpha", "comp"], False)}


class Recording(dict):
    """A batch that remembers which entries the loss read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def test_table_is_the_spec():
    assert sorted(STAGES) == [0, 1, 2, 3]
    for stage, (refine, _, frozen) in SPEC.items():
        assert has_refine(stage) is refine and use_refined(None, stage) is refine
        assert stage_info(stage).frozen_encoder_decoder is frozen
    for bad in (4, -1, True, "1"):
        with pytest.raises(ValueError, match="stage must be 0, 1, 2 or 3"):
            stage_info(bad)


def test_batch_keys_are_what_the_loss_reads():
    torch.manual_seed(0)
    n, h, w = 2, 8, 8
    full = {"alpha": torch.rand(n, 1, h, w), "trimap": torch.full((n, 1, h, w), 128.0),
            "image": torch.rand(n, 3, h, w) * 255, "fg": torch.rand(n, 3, h, w) * 255, "bg": torch.rand(n, 3, h, w) * 255}
    pred, refined = torch.rand(n, 1, h, w), torch.rand(n, 1, h, w)
    for stage, (_, terms, _) in SPEC.items():
        batch = Recording({k: full[k] for k in batch_keys(stage)})
        out = stage_loss(stage, pred, refined if has_refine(stage) else None, batch)
        assert list(out) == terms and batch.read == set(batch_keys(stage)), stage


def test_checkpoint_stage_check_reads_the_table():
    for stage in STAGES:
        check_stage("f.pth", has_refine(stage), stage)
        with pytest.raises(UserError, match="refinement head"):
            check_stage("f.pth", not has_refine(stage), stage)
