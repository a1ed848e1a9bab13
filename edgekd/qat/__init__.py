"""Quantization-aware training: the fused ONNX graph trained in torch with fake quantization where the
target's quantization plan puts Q/DQ, distilled from the float graph."""
