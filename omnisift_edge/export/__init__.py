"""Export stage: model + ratio -> ONNX graphs and `manifest.json`, validated in ONNX Runtime.

Not built yet (see the export issue); the package exists so the stage layout is fixed.
"""
