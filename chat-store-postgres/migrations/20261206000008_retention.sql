-- A chat's retention (`set_retention`), and how far its sweep has come:
-- every message with `seq <= retention_swept_seq` was swept. The sweep
-- reads each chat's log from there, so messages need no index by time
-- (one more index every post would maintain); it finds the chats with a
-- retention from an index of them alone. Neither new column changes on a
-- post, so the updates of `last_seq` stay HOT.
ALTER TABLE chats ADD COLUMN retention_secs BIGINT;
ALTER TABLE chats ADD COLUMN retention_swept_seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX chats_with_retention ON chats (id) WHERE retention_secs IS NOT NULL;
