-- A report keeps the reported message's type and media too, for its
-- evidence snapshot (PROTOCOL.md 5.2).
ALTER TABLE reports ADD COLUMN kind TEXT;
ALTER TABLE reports ADD COLUMN media TEXT;   -- MediaRef as JSON
