"""Traces and their tags.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "traces",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("model", sa.String(400), nullable=False),
        sa.Column("provider", sa.String(100), nullable=True),
        sa.Column("alias", sa.String(200), nullable=True),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("prompt_text", sa.Text(), nullable=False),
        sa.Column("response_text", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.String(40), nullable=True),
        sa.Column("is_error", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("session_id", sa.String(200), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_traces_started", "traces", ["started_at", "id"])
    op.create_index("ix_traces_model", "traces", ["model", "started_at"])
    for col in ("alias", "user_id", "session_id"):  # partial: NULLs are not indexed
        where = sa.text(f"{col} IS NOT NULL")
        name = {"alias": "ix_traces_alias", "user_id": "ix_traces_user", "session_id": "ix_traces_session"}[
            col
        ]
        op.create_index(name, "traces", [col, "started_at"], sqlite_where=where, postgresql_where=where)
    op.create_index(
        "ix_traces_errors",
        "traces",
        ["started_at"],
        sqlite_where=sa.text("is_error = 1"),
        postgresql_where=sa.text("is_error = true"),
    )
    op.create_table(
        "trace_tags",
        sa.Column(
            "trace_id", sa.String(80), sa.ForeignKey("traces.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("tag", sa.String(200), primary_key=True),
    )
    op.create_index("ix_trace_tags_tag", "trace_tags", ["tag", "trace_id"])


def downgrade() -> None:
    op.drop_table("trace_tags")
    op.drop_table("traces")
