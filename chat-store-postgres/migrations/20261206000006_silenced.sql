-- Participants muted by a group moderator (`mute_participant`): they may
-- not send until then. Apart from `muted_until`, the participant's own
-- notification setting.
ALTER TABLE participants ADD COLUMN silenced_until BIGINT;
