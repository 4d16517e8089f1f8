-- Values the engine keeps about the store itself, such as how far the
-- sealing of content written before encryption at rest has come.
CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);
