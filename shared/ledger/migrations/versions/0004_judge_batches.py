"""judge batches: requests waiting for a provider's Batch API, the batches sent, and the batch a
judge reply came from

A judge entry with ``batch: true`` sends its calls through the provider's Batch API (OpenAI's
/v1/files + /v1/batches, half price) instead of live. Requests are kept before the message that
asked for them is committed, and each batch under our own key before it is uploaded, so a restart
neither loses a request nor uploads one twice.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("judge_calls", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.String(length=128), nullable=True))
    op.create_table(
        "judge_batch_requests",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("judge_id", sa.String(length=128), nullable=False),
        sa.Column("instruction_id", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("batch_key", sa.String(length=64), nullable=True),
        sa.Column("body", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("judge_id", "instruction_id", "state", "batch_key"):
        op.create_index(f"ix_judge_batch_requests_{column}", "judge_batch_requests", [column])
    op.create_table(
        "judge_batches",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("judge_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("file_id", sa.String(length=128), nullable=True),
        sa.Column("batch_id", sa.String(length=128), nullable=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("judge_id", "state"):
        op.create_index(f"ix_judge_batches_{column}", "judge_batches", [column])


def downgrade() -> None:
    op.drop_table("judge_batches")
    op.drop_table("judge_batch_requests")
    with op.batch_alter_table("judge_calls", schema=None) as batch_op:
        batch_op.drop_column("batch_id")
