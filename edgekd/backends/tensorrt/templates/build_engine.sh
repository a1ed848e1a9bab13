#!/usr/bin/env bash
# Builds the TensorRT engine for this artifact on the board: @TARGET@ (TensorRT @TENSORRT@).
# Engines are tied to the TensorRT version and GPU that build them, so this runs on the board.
# Written by edgekd @EDGEKD_VERSION@.
#
# Usage: ./build_engine.sh [ENGINE]     (default ENGINE: model.engine beside this script)
#   DLA_CORE=N         build for DLA core N with GPU fallback, on boards with a DLA; DLA takes no
#                      explicit quantization, so int8 builds read model_noqdq.onnx + calibration.cache
#   INT8_MODE=implicit  int8 artifacts: implicit int8 on the GPU too (model_noqdq.onnx + calibration.cache);
#                      default: explicit, from the Q/DQ scales in model.onnx
#   WORKSPACE_MIB=N    builder workspace in MiB (default @WORKSPACE_MIB@)
#   TIMING_CACHE=FILE  timing cache, reused across builds (default timing.cache beside this script)
#   TRTEXEC=PATH       trtexec to run (default: trtexec on PATH, else /usr/src/tensorrt/bin/trtexec)
set -euo pipefail

# What edgekd knew when it wrote this artifact.
target=@TARGET_QUOTED@
precision=@PRECISION@      # fp32, fp16 or int8
dla_cores=@DLA_CORES@      # DLA cores on this board
sparsity=@SPARSITY@        # 1: the weights have the 2:4 pattern and the GPU has sparse kernels
build_only_flag=@BUILD_ONLY_FLAG@

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
engine="${1:-${here}/model.engine}"
workspace_mib="${WORKSPACE_MIB:-@WORKSPACE_MIB@}"
timing_cache="${TIMING_CACHE:-${here}/timing.cache}"
int8_mode="${INT8_MODE:-explicit}"
dla_core="${DLA_CORE:-}"

trtexec="${TRTEXEC:-}"
if [[ -z "${trtexec}" ]]; then
  if command -v trtexec >/dev/null 2>&1; then
    trtexec="$(command -v trtexec)"
  else
    trtexec="/usr/src/tensorrt/bin/trtexec"
  fi
fi

# int8 with fp16 fallback: layers without int8 kernels run in fp16, not fp32.
case "${precision}" in
  int8) precision_flags=("--int8" "--fp16") ;;
  fp16) precision_flags=("--fp16") ;;
  *) precision_flags=() ;;
esac

if [[ -n "${dla_core}" ]]; then
  if (( dla_cores == 0 )); then
    echo "build_engine.sh: ${target} has no DLA; unset DLA_CORE" >&2
    exit 2
  fi
  if ! [[ "${dla_core}" =~ ^[0-9]+$ ]] || (( 10#${dla_core} >= dla_cores )); then
    echo "build_engine.sh: DLA_CORE must be 0..$((dla_cores - 1)) on ${target}, got '${dla_core}'" >&2
    exit 2
  fi
  if [[ "${precision}" == "fp32" ]]; then
    echo "build_engine.sh: DLA runs fp16 or int8, and this artifact is fp32" >&2
    exit 2
  fi
  int8_mode="implicit"
fi
case "${int8_mode}" in
  explicit|implicit) ;;
  *) echo "build_engine.sh: INT8_MODE must be explicit or implicit, got '${int8_mode}'" >&2; exit 2 ;;
esac

if [[ "${precision}" == "int8" && "${int8_mode}" == "implicit" ]]; then
  args=("--onnx=${here}/model_noqdq.onnx" "--saveEngine=${engine}" "${precision_flags[@]}" "--calib=${here}/calibration.cache")
else
  args=("--onnx=${here}/model.onnx" "--saveEngine=${engine}" "${precision_flags[@]}")
fi
if (( sparsity )); then
  args+=("--sparsity=enable")
fi
args+=("--memPoolSize=workspace:${workspace_mib}" "--timingCacheFile=${timing_cache}")
if [[ -n "${dla_core}" ]]; then
  args+=("--useDLACore=${dla_core}" "--allowGPUFallback")
fi
args+=("${build_only_flag}")

echo "+ ${trtexec} ${args[*]}" >&2
exec "${trtexec}" "${args[@]}"
