-- MLS commits of e2ee chats: on their log messages, and each chat's group
-- as the server follows it (epoch, member devices, public state).
ALTER TABLE messages ADD COLUMN mls JSONB;   -- MlsCommitRecord
CREATE TABLE mls_groups (
    chat_id TEXT COLLATE "C" PRIMARY KEY REFERENCES chats (id),
    epoch   BIGINT NOT NULL,
    members JSONB NOT NULL,   -- [[user, device], ...]
    state   BYTEA NOT NULL
);
