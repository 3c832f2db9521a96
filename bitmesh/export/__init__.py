"""Export of fake-quantized models to deployable files (torch-only subpackage).

``bitmesh.export.onnx_qdq`` writes an ONNX model whose quantized layers are
QuantizeLinear/DequantizeLinear pairs computed with the same scales and
rounding as bitmesh's fake quantizers; ``bitmesh.export.verify`` runs it in
onnxruntime and compares it with the torch model. Nothing is imported here so
that ``import bitmesh.export`` stays free of torch, onnx and onnxruntime.
"""
