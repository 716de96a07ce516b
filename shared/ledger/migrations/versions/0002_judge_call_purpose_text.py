"""judge_calls.purpose as text

The annotator's purpose names the pass, the mode and every aspect rated
("pass1:all_in_one:Helpfulness+Visual Faithfulness+Ethical Considerations", 71 characters), which
PostgreSQL refused in the VARCHAR(64) column: every all-in-one rating failed there.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("judge_calls", schema=None) as batch_op:
        batch_op.alter_column(
            "purpose", existing_type=sa.String(length=64), type_=sa.Text(), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("judge_calls", schema=None) as batch_op:
        batch_op.alter_column(
            "purpose", existing_type=sa.Text(), type_=sa.String(length=64), existing_nullable=False
        )
