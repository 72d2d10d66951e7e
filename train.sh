#!/usr/bin/env bash
# Train Deep Image Matting with the reference's settings (SPEC §8): a thin wrapper over core/train.py.
#
#   DATA_ROOT=/data/Combined_Dataset bash train.sh                      # stage 1 on one GPU
#   DATA_ROOT=... STAGE=2 bash train.sh                                  # refinement head, from model/stage1/ckpt_best.pth
#   DATA_ROOT=... NPROC=4 bash train.sh                                  # 4 GPUs through torchrun
#   DATA_ROOT=... CUDA=0 bash train.sh --nEpochs 1                       # CPU; extra flags go to core/train.py
#   DATA_ROOT=... bash train.sh --resume model/stage1/ckpt_last.pth      # continue an interrupted run
#   DATA_ROOT=... COCO_DIR=/data/train2017 bash train.sh --online        # compose on the fly: no Training_set/comp
#
# Environment (defaults in brackets):
#   DATA_ROOT     the Combined_Dataset folder holding Training_set/comp and Test_set/comp (tools/composite.py);
#                 with --online its Training_set name lists and Adobe foregrounds/alphas (--adobeDir) [required]
#   COCO_DIR      with --online: the COCO train2017 backgrounds (--cocoDir; or pass --cocoDir yourself)
#   STAGE         0, 1, 2 or 3 [1]
#   SAVE_DIR      checkpoint folder [model/stage$STAGE in this repository]; one run per folder: a new run into a
#                 folder holding another run's checkpoints is refused (--resume continues it, --overwrite replaces it)
#   PRETRAIN      initial weights; "" for none [stage 0/1: model/vgg_state_dict.pth,
#                 stage 2: model/stage1/ckpt_best.pth, stage 3: model/stage2/ckpt_best.pth, in this repository]
#   NPROC         processes (GPUs) on this machine; > 1 launches torchrun --standalone [1]
#   CUDA          1: the GPU (an error without one), 0: the CPU [unset: the GPU when torch sees one, else the CPU]
#   LOG_FILE      log file [$SAVE_DIR/train.log] (passed as --logFile: torchrun takes --log… for itself)
#   TEST_RES_DIR  also write the test predictions there [not written]
#   CACHE_DIR     decode the training images once into this folder and read them back memory-mapped
#                 (--cache_dir; fill it ahead with tools/build_cache.py, docs/training.md) [no cache]
#   THREADS       data-loader workers per process (--threads); auto: this process's share of the CPUs, less one [4]
#   PYTHON        Python interpreter [python]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ -z "${DATA_ROOT:-}" ]; then
    echo "train.sh: set DATA_ROOT to the Combined_Dataset folder that tools/composite.py filled (see README, Training)" >&2
    exit 2
fi
TRAIN_DIR="$DATA_ROOT/Training_set/comp"
TEST_DIR="$DATA_ROOT/Test_set/comp"
ONLINE=0
GIVEN_COCO=0
for arg in "$@"; do
    case "$arg" in
        --online) ONLINE=1 ;;
        --cocoDir|--cocoDir=*) GIVEN_COCO=1 ;;
    esac
done
if [ "$ONLINE" = 1 ]; then
    # online compositing reads the Adobe foregrounds, the name lists and COCO directly (core/data.py)
    if [ ! -d "$DATA_ROOT/Training_set" ]; then
        echo "train.sh: --online reads the Adobe foregrounds, alphas and name lists from $DATA_ROOT/Training_set, which is missing (DATA_ROOT=$DATA_ROOT)" >&2
        exit 2
    fi
    if [ "$GIVEN_COCO" = 0 ] && [ -z "${COCO_DIR:-}" ]; then
        echo "train.sh: --online also needs the COCO train2017 backgrounds: set COCO_DIR=DIR or pass --cocoDir DIR" >&2
        exit 2
    fi
else
    for d in image fg bg alpha; do
        if [ ! -d "$TRAIN_DIR/$d" ]; then
            echo "train.sh: $TRAIN_DIR/$d is missing: run tools/composite.py on DATA_ROOT=$DATA_ROOT first, or train with --online (COCO_DIR=DIR)" >&2
            exit 2
        fi
    done
fi

STAGE="${STAGE:-1}"
SAVE_DIR="${SAVE_DIR:-$REPO/model/stage$STAGE}"
NPROC="${NPROC:-1}"
CUDA="${CUDA:-}"
LOG_FILE="${LOG_FILE:-$SAVE_DIR/train.log}"
PYTHON="${PYTHON:-python}"
case "$STAGE" in
    0|1) DEFAULT_PRETRAIN="$REPO/model/vgg_state_dict.pth" ;;
    2) DEFAULT_PRETRAIN="$REPO/model/stage1/ckpt_best.pth" ;;
    3) DEFAULT_PRETRAIN="$REPO/model/stage2/ckpt_best.pth" ;;
    *) echo "train.sh: STAGE must be 0, 1, 2 or 3, not '$STAGE'" >&2; exit 2 ;;
esac
PRETRAIN="${PRETRAIN-$DEFAULT_PRETRAIN}"
case "$NPROC" in
    ''|*[!0-9]*) echo "train.sh: NPROC must be a positive integer, not '$NPROC'" >&2; exit 2 ;;
esac
for arg in "$@"; do
    case "$arg" in
        --resume|--resume=*) PRETRAIN="" ;;  # the checkpoint holds the weights
    esac
done

args=(
    --crop_h=320,480,640 --crop_w=320,480,640 --size_h=320 --size_w=320
    --saveDir="$SAVE_DIR" --batchSize=1 --nEpochs=12 --step=-1 --lr=0.00001 --wl_weight=0.5
    --threads="${THREADS:-4}" --printFreq=10 --ckptSaveFreq=1 --seed=123 --stage="$STAGE"
    --logFile="$LOG_FILE"
)
if [ "$ONLINE" = 1 ]; then
    args+=(--adobeDir="$DATA_ROOT")
    if [ -n "${COCO_DIR:-}" ]; then args+=(--cocoDir="$COCO_DIR"); fi
else
    args+=(--imgDir="$TRAIN_DIR/image" --fgDir="$TRAIN_DIR/fg" --bgDir="$TRAIN_DIR/bg" --alphaDir="$TRAIN_DIR/alpha")
fi
if [ -n "${CACHE_DIR:-}" ]; then args+=(--cache_dir="$CACHE_DIR"); fi
if [ -n "$PRETRAIN" ]; then
    if [ ! -f "$PRETRAIN" ]; then
        hint="run python tools/chg_model.py first (it writes model/vgg_state_dict.pth)"
        [ "$STAGE" -ge 2 ] && hint="train stage $((STAGE - 1)) first, or set PRETRAIN to its checkpoint"
        echo "train.sh: PRETRAIN=$PRETRAIN not found: $hint (PRETRAIN= trains from scratch)" >&2
        exit 2
    fi
    args+=(--pretrain="$PRETRAIN")
fi
# The device rule (CUDA unset/1/0) is core.utils.script_device's: it says its choice on stderr, prints --cuda for the GPU.
device_flag="$(PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m core.utils device train.sh training "$CUDA")" || exit 2
if [ -n "$device_flag" ]; then args+=("$device_flag"); fi
if [ -d "$TEST_DIR/image" ]; then
    args+=(--testFreq=1 --testImgDir="$TEST_DIR/image" --testTrimapDir="$TEST_DIR/trimap"
           --testAlphaDir="$TEST_DIR/alpha" --crop_or_resize=whole --max_size=1600)
    if [ -n "${TEST_RES_DIR:-}" ]; then
        args+=(--testResDir="$TEST_RES_DIR")
    fi
else
    echo "train.sh: $TEST_DIR/image not found: training without testing (no ckpt_best.pth)" >&2
fi

if [ "$NPROC" -gt 1 ]; then
    # torchrun, through the same interpreter
    exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" "$REPO/core/train.py" "${args[@]}" "$@"
fi
exec "$PYTHON" "$REPO/core/train.py" "${args[@]}" "$@"
