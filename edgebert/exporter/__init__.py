"""torch -> ONNX export of a BERT checkpoint into a bundle, validated against torch."""

from edgebert.exporter.onnx_export import ExportConfig, export

__all__ = ["ExportConfig", "export"]
