"""Serving: a Triton Inference Server model repository for many camera streams (docs/serving.md)."""
