-- Each MLS device's signature key, pinned when it first publishes.
CREATE TABLE device_keys (
    user_id       TEXT COLLATE "C" NOT NULL,
    device_id     TEXT COLLATE "C" NOT NULL,
    signature_key BYTEA NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
