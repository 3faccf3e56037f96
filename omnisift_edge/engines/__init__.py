"""Engines stage: export folder + target -> TensorRT engines and a build report.

Not built yet (see the engines issue); the package exists so the stage layout is fixed.
"""
