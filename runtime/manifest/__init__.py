"""The artifact contract: manifest.json's typed entries, loading with validation, file checks, atomic writes."""

from .document import *  # noqa: F401,F403
from .document import __all__  # noqa: F401
