"""Helpers over ``onnx_ir`` graphs shared by the ONNX-stage passes and the backends."""
