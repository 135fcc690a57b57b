"""Fixtures shared by several test modules."""

import pytest

from ssl_keras import registry


@pytest.fixture
def clean_registry():
    """Layer registrations a test makes are undone after it."""
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
