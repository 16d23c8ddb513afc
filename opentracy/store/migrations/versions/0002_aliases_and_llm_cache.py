"""Aliases with their history, and the LLM response cache.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("target", sa.String(400), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("alias", sa.String(200), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("by", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("old_target", sa.String(400), nullable=True),
        sa.Column("new_target", sa.String(400), nullable=True),
    )
    op.create_index("ix_alias_history_alias", "alias_history", ["alias", "id"])
    op.create_table(
        "llm_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(400), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("hits", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_llm_cache_model", "llm_cache", ["model"])


def downgrade() -> None:
    op.drop_index("ix_llm_cache_model", "llm_cache")
    op.drop_table("llm_cache")
    op.drop_index("ix_alias_history_alias", "alias_history")
    op.drop_table("alias_history")
    op.drop_table("aliases")
