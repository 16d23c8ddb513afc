"""Curation runs and the review queue.

Revision ID: 0005_curation
Revises: 0004_local_models
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_curation"
down_revision = "0004_local_models"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "curation_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "dataset_id", sa.String(40), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("source_version_id", sa.String(80), nullable=False),
        sa.Column("output_version_id", sa.String(80), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("decisions_key", sa.String(400), nullable=False),
        sa.Column("decisions_sha256", sa.String(80), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_curation_runs_dataset", "curation_runs", ["dataset_id", "created_at"])
    op.create_table(
        "review_items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "dataset_id", sa.String(40), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("row_id", sa.String(200), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("version_id", sa.String(80), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("original", sa.JSON(), nullable=False),
        sa.Column("edited", sa.JSON(), nullable=True),
        sa.Column("reviewer", sa.String(200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("decided_at", TS, nullable=True),
    )
    op.create_index("ix_review_items_dataset_row", "review_items", ["dataset_id", "row_id"], unique=True)
    op.create_index("ix_review_items_dataset_status", "review_items", ["dataset_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_review_items_dataset_status", "review_items")
    op.drop_index("ix_review_items_dataset_row", "review_items")
    op.drop_table("review_items")
    op.drop_index("ix_curation_runs_dataset", "curation_runs")
    op.drop_table("curation_runs")
