-- Check-ins: whether a user shares their mood answers (`Privacy::
-- mood_sharing`, off unless they opt in, so also for the users from
-- before; a constant default adds the column without rewriting the
-- table), and the answers, one per user and check-in.
ALTER TABLE users ADD COLUMN mood_sharing BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE checkin_answers (
    message_id  TEXT COLLATE "C" NOT NULL,
    chat_id     TEXT COLLATE "C" NOT NULL,
    user_id     TEXT COLLATE "C" NOT NULL,
    option      INTEGER NOT NULL,
    -- the order answers were first given: a changed answer updates the
    -- row and keeps its place
    ordinal     BIGINT GENERATED ALWAYS AS IDENTITY,
    answered_at BIGINT NOT NULL,
    -- one answer per user and check-in, also between nodes (the upsert
    -- of answer_checkin)
    PRIMARY KEY (message_id, user_id)
);
-- answers_by_user pages in check-in id order; erase_user_rows deletes them.
CREATE INDEX checkin_answers_by_user ON checkin_answers (user_id, message_id);
