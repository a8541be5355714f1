"""Announce each stored job event on PostgreSQL (NOTIFY), for readers that LISTEN
(jobs/event_notices.py). SQLite has no such thing: nothing changes there.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from jobs.event_notices import EVENTS_CHANNEL

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    # pg_notify sends when the inserting transaction commits, so a reader never hears of an event
    # it cannot read yet; one trigger serves every writer, with no extra round trip for them.
    op.execute(
        "CREATE FUNCTION announce_job_event() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN PERFORM pg_notify('{EVENTS_CHANNEL}', NEW.job_id); RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER job_events_announce AFTER INSERT ON job_events "
        "FOR EACH ROW EXECUTE FUNCTION announce_job_event()"
    )


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER job_events_announce ON job_events")
    op.execute("DROP FUNCTION announce_job_event()")
