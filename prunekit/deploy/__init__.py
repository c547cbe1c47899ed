"""Deployment: what ships. BN folding and channels-last (``structured.surgery.deploy``), ONNX export
checked in ONNX Runtime (``deploy.onnx``), HuggingFace round trips (``deploy.hf``)."""
from ..structured.surgery.deploy import deploy, fold_bn, to_channels_last
from .onnx import ExportMismatchError, compare_onnx, to_onnx

__all__ = ["ExportMismatchError", "compare_onnx", "deploy", "fold_bn", "to_channels_last", "to_onnx"]
