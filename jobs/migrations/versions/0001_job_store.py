"""The job store as it stood when schema versions began: jobs, variant_stats, lease,
webhook_messages, webhook_attempts and api_keys.

On a SQLite job store written before schema versions, every table may already exist: they are
created only where missing, and the columns later releases added to ``jobs`` on open
(idempotency_key, request_hash, owner) are added where missing, so every row is kept.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: A FIFO sequence: SQLite's rowid alias (INTEGER PRIMARY KEY) there, a 64-bit identity on PostgreSQL.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: Unix seconds: double precision (PostgreSQL's REAL is 4 bytes, too coarse for timestamps).
SECONDS = sa.Float(precision=53)

#: Columns of ``jobs`` added by releases before schema versions, on open.
LATER_JOB_COLUMNS = ("idempotency_key", "request_hash", "owner")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),  # FIFO order
        sa.Column("id", sa.Text(), nullable=False, unique=True),
        sa.Column("variant", sa.Text(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),  # JobSpec as JSON
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("phase", sa.Text()),
        sa.Column("step", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("total_steps", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("step_seconds", SECONDS),
        sa.Column("gpu_id", sa.Text()),
        sa.Column("filename", sa.Text()),
        sa.Column("file_deleted", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error_code", sa.Text()),
        sa.Column("error_message", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("result", sa.Text()),  # JobResult as JSON
        sa.Column("created_at", SECONDS, nullable=False),
        sa.Column("started_at", SECONDS),
        sa.Column("finished_at", SECONDS),
        sa.Column("idempotency_key", sa.Text()),  # the POST's Idempotency-Key header, scoped to its owner
        sa.Column("request_hash", sa.Text()),  # sha256 of the request it came with
        sa.Column("owner", sa.Text()),  # public id of the submitting API key
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("jobs")}
    for column in LATER_JOB_COLUMNS:
        if column not in present:
            op.add_column("jobs", sa.Column(column, sa.Text()))
    op.create_index("jobs_status", "jobs", ["status", "seq"], if_not_exists=True)
    op.create_index("jobs_prompt", "jobs", ["prompt", "seq"], if_not_exists=True)
    op.create_index("jobs_filename", "jobs", ["filename"], if_not_exists=True)
    op.create_index("jobs_owner", "jobs", ["owner", "seq"], if_not_exists=True)
    op.create_index(
        "jobs_idempotency",
        "jobs",
        ["idempotency_key"],
        unique=True,
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        if_not_exists=True,
    )
    op.create_table(
        "variant_stats",
        sa.Column("variant", sa.Text(), primary_key=True),
        sa.Column("avg_job_seconds", SECONDS, nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        if_not_exists=True,
    )
    op.create_table(
        "lease",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="lease_one_row"),
        if_not_exists=True,
    )
    op.create_table(
        "webhook_messages",
        sa.Column("id", sa.Text(), primary_key=True),  # webhook-id header, the same on every attempt
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),  # the body, byte for byte as signed
        sa.Column("state", sa.Text(), nullable=False),  # pending | delivered | failed
        sa.Column("created_at", SECONDS, nullable=False),
        if_not_exists=True,
    )
    op.create_index("webhook_messages_job", "webhook_messages", ["job_id", "created_at"], if_not_exists=True)
    op.create_index("webhook_messages_state", "webhook_messages", ["state"], if_not_exists=True)
    op.create_table(
        "webhook_attempts",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),  # 1, 2, ...
        sa.Column("attempted_at", SECONDS, nullable=False),
        sa.Column("address", sa.Text()),  # the checked IP address it connected to
        sa.Column("status_code", sa.Integer()),  # the receiver's HTTP status, if it answered
        sa.Column("error", sa.Text()),  # why it was not delivered, if it was not
        sa.Column("duration_s", SECONDS),
        sa.Column("next_attempt_at", SECONDS),  # when the retry is due; null when none follows
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    op.create_index("webhook_attempts_message", "webhook_attempts", ["message_id", "attempt"], if_not_exists=True)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text(), primary_key=True),  # public id, the owner of the key's jobs
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("shown", sa.Text(), nullable=False),  # the first characters of the secret
        sa.Column("sha256", sa.Text(), nullable=False, unique=True),  # of the secret; never the secret
        sa.Column("admin", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_running", sa.Integer()),
        sa.Column("max_queued", sa.Integer()),
        sa.Column("jobs_per_hour", sa.Integer()),
        sa.Column("created_at", SECONDS, nullable=False),
        sa.Column("last_used_at", SECONDS),
        sa.Column("revoked_at", SECONDS),
        if_not_exists=True,
    )
    op.create_index(
        "api_keys_live_name",
        "api_keys",
        ["name"],
        unique=True,
        sqlite_where=sa.text("revoked_at IS NULL"),
        postgresql_where=sa.text("revoked_at IS NULL"),
        if_not_exists=True,
    )


def downgrade() -> None:
    for table in ("api_keys", "webhook_attempts", "webhook_messages", "lease", "variant_stats", "jobs"):
        op.drop_table(table)
