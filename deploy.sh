#!/usr/bin/env bash
# Predict and score the Composition-1k test set with the reference's settings:
# whole-image inference, max size 1600, stage 1 (SPEC §9); on the GPU when torch sees one.
#
#   DATA_ROOT=data/Combined_Dataset bash deploy.sh
#   DATA_ROOT=... CKPT=model/my.pth STAGE=2 SAVE_DIR=result/mine CUDA=0 bash deploy.sh --amp
#
# DATA_ROOT  folder holding Test_set/comp/{image,trimap,alpha} (made by tools/composite.py); required
# COMP_NAME  the composite folder inside Test_set (default: comp; e.g. comp_adobe for Adobe's compositing)
# CKPT       checkpoint (default: model/stage1_skip_sad_52.9.pth)
# STAGE      0/1: encoder-decoder alpha, 2/3: refined alpha (default: 1)
# SAVE_DIR   where the mattes, metrics.csv and metrics.json go (default: result/comp1k_stage$STAGE)
# CUDA       1: run on the GPU (an error without one), 0: on the CPU (default: the GPU when torch sees one, else the CPU)
# NPROC      processes (GPUs) on this machine; > 1 launches torchrun --standalone, each rank a share of the images (default: 1)
# TORCHRUN_ARGS  torchrun's own options instead of --standalone, e.g. "--nnodes 2 --node_rank 0 --rdzv_endpoint host:29500"
# PYTHON     Python interpreter (default: python)
# Extra arguments go to core/test.py (e.g. --crop_or_resize crop, --amp, --no_skip).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${DATA_ROOT:-}" ]]; then
    echo "error: set DATA_ROOT to the folder holding Test_set/comp/{image,trimap,alpha}, e.g. DATA_ROOT=data/Combined_Dataset bash deploy.sh (see tools/composite.py)" >&2
    exit 2
fi
CKPT="${CKPT:-$REPO/model/stage1_skip_sad_52.9.pth}"
STAGE="${STAGE:-1}"
SAVE_DIR="${SAVE_DIR:-$REPO/result/comp1k_stage$STAGE}"
CUDA="${CUDA:-}"
PYTHON="${PYTHON:-python}"
NPROC="${NPROC:-1}"
TORCHRUN_ARGS="${TORCHRUN_ARGS:-}"
case "$NPROC" in
    ''|*[!0-9]*|0) echo "error: NPROC must be a positive integer, not '$NPROC'" >&2; exit 2 ;;
esac

COMP="$DATA_ROOT/Test_set/${COMP_NAME:-comp}"
for sub in image trimap alpha; do
    if [[ ! -d "$COMP/$sub" ]]; then
        echo "error: $COMP/$sub: no such folder (DATA_ROOT=$DATA_ROOT; build the test set with tools/composite.py)" >&2
        exit 2
    fi
done

# The device rule (CUDA unset/1/0) is core.utils.script_device's: it says its choice on stderr, prints --cuda for the GPU.
DEVICE_FLAG=()
device_flag="$(PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m core.utils device deploy.sh testing "$CUDA")" || exit 2
if [ -n "$device_flag" ]; then DEVICE_FLAG=("$device_flag"); fi

LAUNCH=("$REPO/core/test.py")
if [ "$NPROC" -gt 1 ] || [ -n "$TORCHRUN_ARGS" ]; then
    # torchrun, through the same interpreter; TORCHRUN_ARGS (word-split) replaces --standalone for several machines
    read -r -a RUN_ARGS <<< "${TORCHRUN_ARGS:---standalone}"
    LAUNCH=(-m torch.distributed.run "${RUN_ARGS[@]}" --nproc_per_node="$NPROC" "$REPO/core/test.py")
fi

exec "$PYTHON" "${LAUNCH[@]}" \
    --imgDir "$COMP/image" --trimapDir "$COMP/trimap" --alphaDir "$COMP/alpha" \
    --saveDir "$SAVE_DIR" --resume "$CKPT" --stage "$STAGE" --stage_setting STAGE \
    --crop_or_resize whole --max_size 1600 --size_h 320 --size_w 320 \
    ${DEVICE_FLAG[@]+"${DEVICE_FLAG[@]}"} "$@"
