"""Synthetic generation runs.

Revision ID: 0007_generation
Revises: 0006_clustering
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_generation"
down_revision = "0006_clustering"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "generation_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "dataset_id", sa.String(40), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("output_version_id", sa.String(80), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("prompts", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("samples_key", sa.String(400), nullable=False),
        sa.Column("samples_sha256", sa.String(80), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_generation_runs_dataset", "generation_runs", ["dataset_id", "created_at"])
    op.create_index("ix_generation_runs_job_id", "generation_runs", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_generation_runs_job_id", "generation_runs")
    op.drop_index("ix_generation_runs_dataset", "generation_runs")
    op.drop_table("generation_runs")
