"""Graph helpers: ``graph`` edits ``onnx_ir`` models (the ONNX-stage passes); ``proto_index`` reads
``onnx.ModelProto`` graphs without changing them (the backends' rules and tables); ``profile`` counts
parameters and MACs."""
