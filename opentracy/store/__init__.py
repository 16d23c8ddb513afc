"""Storage: the catalog database, the artifact store and the Parquet row segments."""

from opentracy.store.artifacts import ArtifactStore
from opentracy.store.catalog import Catalog

__all__ = ["ArtifactStore", "Catalog"]
