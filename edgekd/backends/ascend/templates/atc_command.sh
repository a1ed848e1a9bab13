#!/usr/bin/env bash
# Builds model.om for @SOC_VERSION@ (@TARGET@, precision @PRECISION@) from model.onnx.
# Run it on a machine with CANN installed: source <CANN install dir>/set_env.sh first, so that atc is on PATH.
# Written by edgekd @EDGEKD_VERSION@; the artifact's op_table.md lists every node and the limits it was checked against.
set -euo pipefail
cd "$(dirname "$0")"
@COMMAND@
