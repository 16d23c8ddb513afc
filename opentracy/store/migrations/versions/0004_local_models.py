"""Local models: the registry of in-process `local/<name>` models (base model, LoRA adapter, defaults, price).

Revision ID: 0004_local_models
Revises: 0003 (traces)
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_local_models"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "local_models",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("base_model", sa.String(1000), nullable=False),
        sa.Column("adapter", sa.String(1000), nullable=True),
        sa.Column("chat_template", sa.Text(), nullable=True),
        sa.Column("generation", sa.JSON(), nullable=False),
        sa.Column("input_price", sa.Float(), nullable=False),
        sa.Column("output_price", sa.Float(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("local_models")
