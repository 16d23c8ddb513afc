"""The datasets core: named datasets, their versions, and the rows in each.

`DatasetService` is assembled from one part per concern: versions.py (datasets and versions), rowops.py
(reading and writing rows), upload.py (files in), and export (files out, below). _core.py holds what they
share.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from opentracy.datasets._core import DatasetCore
from opentracy.datasets.derive import DeriveMixin
from opentracy.datasets.rowops import RowsMixin
from opentracy.datasets.upload import UploadMixin
from opentracy.datasets.versions import VersionsMixin

__all__ = ["DatasetService"]


class DatasetService(VersionsMixin, RowsMixin, UploadMixin, DeriveMixin, DatasetCore):
    def export(self, name: str, version: int | str | None, fmt: str | None, dest: str | Path) -> int:
        """Write a version to a file (jsonl, openai, csv, parquet; None: as the file name's suffix says);
        returns the row count."""
        from opentracy.datasets.export import check_format, write_export
        from opentracy.datasets.suffixes import export_format

        return write_export(self.iter_arrow(name, version), check_format(export_format(dest, fmt)), dest)

    def export_bytes(self, name: str, version: int | str | None, fmt: str) -> Iterator[bytes]:
        from opentracy.datasets.export import check_format, iter_export

        self._read_sql(name, version)  # fail before streaming starts: no such version, an altered segment
        return iter_export(self.iter_arrow(name, version), check_format(fmt))

    def to_hf(
        self,
        name: str,
        version: int | str | None = None,
        *,
        test_size: float | int | None = None,
        seed: int = 0,
    ) -> Any:
        """The version as a `datasets.Dataset`, or a train/validation `DatasetDict` when test_size is given."""
        from opentracy.datasets.export import to_hf

        batches = list(self.iter_arrow(name, version))
        table = (
            pa.Table.from_batches(batches)
            if batches
            else pa.table(
                {
                    c: pa.array([], t)
                    for c, t in [
                        ("row_id", pa.string()),
                        ("ord", pa.int64()),
                        ("prompt", pa.string()),
                        ("prompt_messages", pa.bool_()),
                        ("response", pa.string()),
                        ("metadata", pa.string()),
                    ]
                }
            )
        )
        return to_hf(table, test_size=test_size, seed=seed)
