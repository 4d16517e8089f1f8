-- The schema of chat-store-sqlite (its migrations 1 and 2), in PostgreSQL.
--
-- Ids are TEXT in their string form (ULIDs, user ids) with COLLATE "C", so
-- that ORDER BY id is byte order: the order of the Rust types (ULIDs sort by
-- time). Timestamps are BIGINT milliseconds since the Unix epoch; enums are
-- their wire strings; media references and system events are JSONB.
--
-- Never edit a migration that has shipped; add a new file.

-- One row per chat; `last_seq` is the chat's log counter. Every change of a
-- chat updates this row (last_seq, last_activity) in the transaction that
-- stores it, so its row lock serializes the writers of one chat. Neither
-- column is indexed, so those updates are HOT; the fill factor leaves room.
CREATE TABLE chats (
    id            TEXT COLLATE "C" PRIMARY KEY,
    kind          TEXT NOT NULL,
    name          TEXT,
    description   TEXT,
    avatar_url    TEXT,
    encryption    TEXT NOT NULL,
    last_seq      BIGINT NOT NULL DEFAULT 0,
    last_activity BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    -- "a/b" for the direct chat of users a <= b ('/' is not valid in ids):
    -- one direct chat per unordered pair, also across nodes.
    direct_key    TEXT COLLATE "C" UNIQUE
) WITH (fillfactor = 70);

CREATE TABLE participants (
    chat_id          TEXT COLLATE "C" NOT NULL REFERENCES chats (id),
    user_id          TEXT COLLATE "C" NOT NULL,
    role             TEXT NOT NULL,
    joined_at        BIGINT NOT NULL,
    delivered_seq    BIGINT NOT NULL DEFAULT 0,
    read_seq         BIGINT NOT NULL DEFAULT 0,
    visible_from_seq BIGINT NOT NULL DEFAULT 0,
    -- joining order within the chat
    ordinal          BIGINT NOT NULL,
    -- the participant's own settings
    muted_until      BIGINT,
    hidden_seq       BIGINT,
    PRIMARY KEY (chat_id, user_id)
) WITH (fillfactor = 80);
-- list_chats and co_members start from the user.
CREATE INDEX participants_by_user ON participants (user_id, chat_id);
-- a chat's participants in joining order.
CREATE INDEX participants_by_ordinal ON participants (chat_id, ordinal);

CREATE TABLE messages (
    id            TEXT COLLATE "C" PRIMARY KEY,
    chat_id       TEXT COLLATE "C" NOT NULL REFERENCES chats (id),
    seq           BIGINT NOT NULL,
    updated_seq   BIGINT NOT NULL,
    sender_id     TEXT COLLATE "C" NOT NULL,
    kind          TEXT NOT NULL,
    content       TEXT,
    media         JSONB,   -- MediaRef
    reply_to      TEXT COLLATE "C",
    client_msg_id TEXT COLLATE "C",
    created_at    BIGINT NOT NULL,
    edited_at     BIGINT,
    deleted       BOOLEAN NOT NULL DEFAULT FALSE,
    system        JSONB,   -- SystemEvent
    -- the log: history pages on it, and no seq is taken twice.
    UNIQUE (chat_id, seq)
);
-- sync: everything changed after a cursor.
CREATE INDEX messages_by_updated_seq ON messages (chat_id, updated_seq);
-- idempotency of posts, also between nodes (INSERT ... ON CONFLICT).
CREATE UNIQUE INDEX messages_by_client_id ON messages (sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
-- unread counts.
CREATE INDEX messages_unread ON messages (chat_id, seq, sender_id)
    WHERE kind <> 'system' AND NOT deleted;

CREATE TABLE reactions (
    message_id TEXT COLLATE "C" NOT NULL REFERENCES messages (id),
    emoji      TEXT COLLATE "C" NOT NULL,
    user_id    TEXT COLLATE "C" NOT NULL,
    -- reaction order within the message
    ordinal    BIGINT NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);

CREATE TABLE blocks (
    -- the order blocks were recorded in
    ordinal BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    blocker TEXT COLLATE "C" NOT NULL,
    blocked TEXT COLLATE "C" NOT NULL,
    UNIQUE (blocker, blocked)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked, blocker);

CREATE TABLE users (
    user_id         TEXT COLLATE "C" PRIMARY KEY,
    last_seen       BIGINT,
    read_receipts   BOOLEAN NOT NULL DEFAULT TRUE,
    typing          BOOLEAN NOT NULL DEFAULT TRUE,
    presence        BOOLEAN NOT NULL DEFAULT TRUE,
    suspended_until BIGINT
);

CREATE TABLE reports (
    id               TEXT COLLATE "C" PRIMARY KEY,
    reporter_id      TEXT COLLATE "C" NOT NULL,
    chat_id          TEXT COLLATE "C" NOT NULL,
    message_id       TEXT COLLATE "C" NOT NULL,
    reported_user_id TEXT COLLATE "C" NOT NULL,
    reason           TEXT NOT NULL,
    content          TEXT,
    status           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    resolved_at      BIGINT,
    resolved_by      TEXT COLLATE "C",
    resolution_note  TEXT
);
-- the moderation queue, oldest first (ids are time-ordered).
CREATE INDEX reports_by_status ON reports (status, id);
-- at most one open report per reporter and message, also between nodes.
CREATE UNIQUE INDEX reports_open_by_reporter ON reports (reporter_id, message_id)
    WHERE status = 'open';

CREATE TABLE media (
    id            TEXT COLLATE "C" PRIMARY KEY,
    chat_id       TEXT COLLATE "C" NOT NULL,
    uploader_id   TEXT COLLATE "C" NOT NULL,
    mime          TEXT NOT NULL,
    size          BIGINT NOT NULL,
    duration_ms   BIGINT,
    has_thumbnail BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL
);
