"""tnt model: GPTConfig, the GPT network, weight accessors, hooks and checkpoint I/O."""

from .config import MLP_KINDS, ConfigError, GPTConfig
from .gpt import GPT
from .io import CheckpointError, load_model, save_model

__all__ = ["GPT", "MLP_KINDS", "CheckpointError", "ConfigError", "GPTConfig", "load_model", "save_model"]
