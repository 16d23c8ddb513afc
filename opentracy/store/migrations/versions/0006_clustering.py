"""Clustering runs, clusters and the embedding cache's shard list.

Revision ID: 0006_clustering
Revises: 0005_curation
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_clustering"
down_revision = "0005_curation"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "embedding_shards",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.String(300), nullable=False),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_embedding_shards_model", "embedding_shards", ["model_id", "id"])
    op.create_table(
        "clustering_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("embedder", sa.String(300), nullable=False),
        sa.Column("namer", sa.String(300), nullable=True),
        sa.Column("n_items", sa.BigInteger(), nullable=False),
        sa.Column("n_clusters", sa.Integer(), nullable=False),
        sa.Column("n_outliers", sa.BigInteger(), nullable=False),
        sa.Column("previous_run_id", sa.String(40), nullable=True),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_clustering_runs_created", "clustering_runs", ["created_at"])
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("namer", sa.String(300), nullable=False),
        sa.Column("first_run_id", sa.String(40), nullable=False),
        sa.Column("last_run_id", sa.String(40), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "clustering_run_clusters",
        sa.Column(
            "run_id", sa.String(40), sa.ForeignKey("clustering_runs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("cluster_id", sa.String(40), primary_key=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("cohesion", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.Column("representatives", sa.JSON(), nullable=False),
        sa.Column("diverse", sa.JSON(), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("matched_similarity", sa.Float(), nullable=True),
    )
    op.create_index("ix_run_clusters_cluster", "clustering_run_clusters", ["cluster_id", "run_id"])


def downgrade() -> None:
    op.drop_index("ix_run_clusters_cluster", "clustering_run_clusters")
    op.drop_table("clustering_run_clusters")
    op.drop_table("clusters")
    op.drop_index("ix_clustering_runs_created", "clustering_runs")
    op.drop_table("clustering_runs")
    op.drop_index("ix_embedding_shards_model", "embedding_shards")
    op.drop_table("embedding_shards")
