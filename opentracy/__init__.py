"""opentracy: turn LLM traffic into training data and cheaper models.

`import opentracy` stays light: the client and the engine load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Distiller", "__version__"]

if TYPE_CHECKING:
    from opentracy.client import Distiller


def __getattr__(name: str) -> Any:
    if name == "Distiller":
        from opentracy.client import Distiller

        return Distiller
    raise AttributeError(f"module 'opentracy' has no attribute {name!r}")
