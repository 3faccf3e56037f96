"""The export folder as a contract: the bottom layer every stage and backend builds on.

- `tensors`: every graph's tensor names, axes and dtypes, declared once;
- `manifest`: manifest.json written and read (schema, checksums), typed as `Manifest`;
- `folder`: `ExportFolder`, an export opened for running (graphs by role, tables, engine builds);
- `onnx_runtime`: ONNX Runtime sessions with explicit providers.

Nothing here imports a stage, the runtime, torch or TensorRT (docs/architecture.md).
"""
