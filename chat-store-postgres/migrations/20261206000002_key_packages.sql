-- The MLS key package directory of e2ee chats: per device, key packages
-- handed out once (oldest first), and one reusable last-resort package.
CREATE TABLE key_packages (
    id          BIGSERIAL PRIMARY KEY,   -- publishing order
    user_id     TEXT COLLATE "C" NOT NULL,
    device_id   TEXT COLLATE "C" NOT NULL,
    last_resort BOOLEAN NOT NULL,
    bytes       BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages (user_id, device_id, last_resort, id);
CREATE UNIQUE INDEX key_packages_one_last_resort ON key_packages (user_id, device_id)
    WHERE last_resort;
