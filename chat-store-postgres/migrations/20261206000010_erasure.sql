-- The erasure of a user (`erase_user`). An open report of the user's
-- messages is put on legal hold: it keeps its snapshot, under the
-- pseudonym, until it is resolved. Rows from before are not held. (A
-- constant default adds the column without rewriting the table.)
ALTER TABLE reports ADD COLUMN legal_hold BOOLEAN NOT NULL DEFAULT false;
-- reactions_by_user, and the deletion of the user's reactions.
CREATE INDEX reactions_by_user ON reactions (user_id);
-- media_by_uploader pages in id order; erase_user_rows renames them.
CREATE INDEX media_by_uploader ON media (uploader_id, id);
-- hold_reports: the reports of the user's messages, open and closed.
CREATE INDEX reports_by_reported_user ON reports (reported_user_id, status);
-- the reports of one message (list_reports by message, open or not).
CREATE INDEX reports_by_message ON reports (message_id, status);
