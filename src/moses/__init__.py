"""moses: continual learning of LLMs with Mixtures of SubExperts."""

from moses.adapter import MoSEsConfig, MoSEsLayer, MoSEsModel, get_moses_model
from moses.errors import CheckpointError, ConfigError, MoSEsError, TaskError

__version__ = "0.3.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MoSEsConfig",
    "MoSEsError",
    "MoSEsLayer",
    "MoSEsModel",
    "TaskError",
    "get_moses_model",
]
