"""reprocls: reproduce image-classification papers with one recipe and one command."""

from reprocls.models import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models", "register_model"]
