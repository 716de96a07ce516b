"""judge_calls: cached prompt tokens and the cost split into input, cached input and output

Providers serve a repeated prompt prefix from a cache and bill it at a lower rate; the annotator
now records those tokens and each part of a call's cost. Rows kept before this have no split
(NULL parts) and no cached tokens (0): their whole cost stays in cost_usd.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("judge_calls", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cached_prompt_tokens", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("input_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cached_input_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("output_cost_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("judge_calls", schema=None) as batch_op:
        batch_op.drop_column("output_cost_usd")
        batch_op.drop_column("cached_input_cost_usd")
        batch_op.drop_column("input_cost_usd")
        batch_op.drop_column("cached_prompt_tokens")
