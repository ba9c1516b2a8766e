"""Taking a model out: ONNX / LiteRT files, their int8 copies, and `fer export`.

- `formats`: write a network to a file (Keras's exporter) and check it against Keras;
- `quantization`: int8 copies calibrated on training faces;
- `runs`: every training run's `model.onnx`, and `fer export` of a logged model.

Example:
    from fer.export import export_model
    report = export_model("runs:/<run_id>/model", "onnx", quantization="int8")
"""

from fer.export.runs import ExportReport, export_model, log_onnx_model

__all__ = ["ExportReport", "export_model", "log_onnx_model"]
