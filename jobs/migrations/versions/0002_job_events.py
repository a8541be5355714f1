"""Progress events and the queue's rotation in the job store, so every ingress replica reads them.

- ``job_events``: each job's events (jobs/events.py ``JobEvent`` as JSON), numbered 1, 2, ... per
  job, written by the router in the transaction of the change they report.
- ``queue_rotation``: per variant, the order in which API keys' lanes take their turns
  (jobs/queue.py); written only while a variant has queued jobs of two keys or more.
- An index for queue positions: queued jobs per variant and owner in FIFO order.

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
    op.create_table(
        "job_events",
        sa.Column("job_id", sa.Text(), primary_key=True),
        sa.Column("n", sa.Integer(), primary_key=True),  # 1, 2, ... within the job
        sa.Column("data", sa.Text(), nullable=False),  # JobEvent as JSON
    )
    op.create_table(
        "queue_rotation",
        sa.Column("variant", sa.Text(), primary_key=True),
        sa.Column("turn", sa.Integer(), primary_key=True),  # 0 takes the next turn
        sa.Column("owner", sa.Text(), nullable=False),  # the lane's key: an owner, or "" for jobs without one
    )
    op.create_index("jobs_queue", "jobs", ["status", "variant", "owner", "seq"])


def downgrade() -> None:
    op.drop_index("jobs_queue", "jobs")
    op.drop_table("queue_rotation")
    op.drop_table("job_events")
