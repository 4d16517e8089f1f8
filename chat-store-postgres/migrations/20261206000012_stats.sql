-- Analytics (`record_session`, `stats`). Counts only: the stats read
-- the messages and chats as they are, and these two tables hold what the
-- log does not. `messages` gets no index for them: the send path does
-- not pay for analytics (stats scan it).

-- Sessions opened, per UTC day (`created_at / 86400000`, floored) and
-- user; `erase_user_rows` renames a user's rows to the pseudonym.
CREATE TABLE daily_sessions (
    day      BIGINT NOT NULL,
    user_id  TEXT COLLATE "C" NOT NULL,
    sessions BIGINT NOT NULL,
    PRIMARY KEY (day, user_id)
);

-- When a message (of the latest `RECEIPT_WINDOW` a mark covers, counted,
-- not older than `RECEIPT_HORIZON_MS` at the mark) was first delivered to
-- and first read by a member other than its sender. A row is inserted by
-- the first delivery (`ON CONFLICT DO NOTHING` keeps the first) and its
-- `read_at` set once. `created_at` is the message's, so that the horizon
-- needs no join.
CREATE TABLE receipt_times (
    chat_id      TEXT COLLATE "C" NOT NULL,
    seq          BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    delivered_at BIGINT NOT NULL,
    read_at      BIGINT,
    PRIMARY KEY (chat_id, seq)
);
