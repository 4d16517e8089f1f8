-- The moderation audit log (000007: 000006 is another change's). Append-only:
-- paged newest first by its time-ordered id, listed by actor or by action,
-- and found by the user it names when that user is erased. A trigger
-- refuses to delete an entry or to change anything but the ids that
-- pseudonymization replaces. Self-contained and idempotent.
CREATE TABLE IF NOT EXISTS audit_log (
    id          TEXT COLLATE "C" PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor_id    TEXT COLLATE "C" NOT NULL,
    action      TEXT COLLATE "C" NOT NULL,
    target_type TEXT COLLATE "C" NOT NULL,
    target_id   TEXT COLLATE "C" NOT NULL,
    chat_id     TEXT COLLATE "C",
    note        TEXT
);
CREATE INDEX IF NOT EXISTS audit_log_by_actor ON audit_log (actor_id, id);
CREATE INDEX IF NOT EXISTS audit_log_by_action ON audit_log (action, id);
CREATE INDEX IF NOT EXISTS audit_log_by_user_target ON audit_log (target_id)
    WHERE target_type = 'user';

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       OR NEW.id IS DISTINCT FROM OLD.id
       OR NEW.at IS DISTINCT FROM OLD.at
       OR NEW.action IS DISTINCT FROM OLD.action
       OR NEW.target_type IS DISTINCT FROM OLD.target_type
       OR NEW.chat_id IS DISTINCT FROM OLD.chat_id
       OR NEW.note IS DISTINCT FROM OLD.note THEN
        RAISE EXCEPTION 'the audit log is append-only';
    END IF;
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
