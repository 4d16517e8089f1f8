-- What an upload is (kind, image dimensions, file name), whether its bytes
-- are sealed, and the message it is attached to. Rows from before have no
-- kind and are read by their mime.
ALTER TABLE media
    ADD COLUMN kind       TEXT,
    ADD COLUMN width      BIGINT,
    ADD COLUMN height     BIGINT,
    ADD COLUMN name       TEXT,
    ADD COLUMN sealed     BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN message_id TEXT COLLATE "C";
-- the sweep of abandoned uploads: the unattached ones, oldest first.
CREATE INDEX media_unattached ON media (created_at, id) WHERE message_id IS NULL;
