"""Fixtures shared by the test modules."""

import pytest
from toy_data import write_corpus


@pytest.fixture
def corpus(tmp_path) -> dict:
    """The toy Markov-chain corpus (``toy_data.write_corpus``) as train and val shards in ``tmp_path``."""
    return write_corpus(tmp_path)
