"""Fixtures for the compressor tests (builders live in layouts.py)."""

from __future__ import annotations

import pytest

from .layouts import tiny_selector


@pytest.fixture
def selector():
    """A seeded random selector, D=32, H=16, 4 heads."""
    return tiny_selector()
