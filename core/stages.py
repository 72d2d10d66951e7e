"""The four training stages (SPEC §7–8) in one table: what each builds, trains, scores and reports.

=====  ================  ===================  ===============================  ========
stage  refinement head   trains               loss terms                       reports
=====  ================  ===================  ===============================  ========
0      no                everything           simple alpha (unknown region)    alpha
1      no                everything           wl·alpha + (1 − wl)·composition  alpha
2      yes               the head only        alpha of the refined output      refined
3      yes               everything           stage 1's + stage 2's            refined
=====  ================  ===================  ===============================  ========

Every rule that depends on the stage reads :data:`STAGES` (network building,
checkpoint checks, the losses and the batch keys they need, which alpha
inference reports). Plain data: this module imports nothing of ``core``.
"""

from collections import namedtuple

Stage = namedtuple("Stage", "refine frozen_encoder_decoder terms")
Stage.__doc__ = """One stage's rules.

``refine``: the network has the refinement head (``refine_*`` weights), and
its refined alpha is the one reported; ``frozen_encoder_decoder``: only the
head trains; ``terms``: the loss terms, a subset of ``simple`` (the stage-0
alpha loss), ``alpha`` and ``comp`` (the stage-1 pair, weighted by wl) and
``refined`` (the alpha loss of the refined output).
"""

STAGES = {
    0: Stage(refine=False, frozen_encoder_decoder=False, terms=("simple",)),
    1: Stage(refine=False, frozen_encoder_decoder=False, terms=("alpha", "comp")),
    2: Stage(refine=True, frozen_encoder_decoder=True, terms=("refined",)),
    3: Stage(refine=True, frozen_encoder_decoder=False, terms=("alpha", "comp", "refined")),
}
# What a composition loss reads besides alpha and trimap (every stage reads those two).
COMPOSITION_KEYS = ("image", "fg", "bg")


def stage_info(stage):
    """The :class:`Stage` of ``stage`` (0–3); ValueError for anything else."""
    if stage not in STAGES or isinstance(stage, bool):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    return STAGES[stage]


def has_refine(stage):
    """Whether a ``stage`` network has the refinement head; its refined alpha is then the one reported."""
    return stage_info(stage).refine


def batch_keys(stage):
    """The batch entries ``stage``'s loss reads besides the network input."""
    return ("alpha", "trimap") + (COMPOSITION_KEYS if "comp" in stage_info(stage).terms else ())

