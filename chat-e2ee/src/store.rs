//! Persistence of a device's MLS state as a key-value map.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, params};

/// A failure of a [`DeviceStore`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    message: String,
}

impl StoreError {
    /// An error with this description (which must not contain stored
    /// values: they are key material).
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        // rusqlite's messages name the failing statement or SQLite code,
        // never bound parameter values.
        StoreError::new(format!("sqlite: {e}"))
    }
}

/// One stored entry: `(key, value)`.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One change to the store: `(key, Some(value))` sets, `(key, None)`
/// deletes.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Where a [`Device`](crate::Device) keeps its whole state: an opaque
/// key-value map (keys and values are bytes; values include private keys).
///
/// The device reads the map once ([`load`](Self::load), at
/// [`Device::open`](crate::Device::open)) and afterwards only writes the
/// entries each operation changed ([`apply`](Self::apply)), before that
/// operation hands anything out.
pub trait DeviceStore: Send + Sync {
    /// Every entry of the map.
    fn load(&self) -> Result<Vec<Entry>, StoreError>;

    /// Sets (`Some`) or deletes (`None`) each key, all or nothing: in one
    /// atomic, durable transaction. When this returns `Ok`, the changes must
    /// survive a crash.
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError>;
}

impl<S: DeviceStore + ?Sized> DeviceStore for Arc<S> {
    fn load(&self) -> Result<Vec<Entry>, StoreError> {
        (**self).load()
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        (**self).apply(changes)
    }
}

impl<S: DeviceStore + ?Sized> DeviceStore for Box<S> {
    fn load(&self) -> Result<Vec<Entry>, StoreError> {
        (**self).load()
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        (**self).apply(changes)
    }
}

/// An in-memory [`DeviceStore`], for tests.
///
/// Clones share the same map, so a test can drop a
/// [`Device`](crate::Device) and [`open`](crate::Device::open) it again from
/// a clone, as after a restart. [`fail_writes`](Self::fail_writes) makes
/// [`apply`](DeviceStore::apply) fail, to test the persistence rule.
#[derive(Clone, Default)]
pub struct MemoryDeviceStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Default)]
struct MemoryInner {
    map: HashMap<Vec<u8>, Vec<u8>>,
    fail_writes: bool,
    writes: u64,
}

impl MemoryDeviceStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every following [`apply`](DeviceStore::apply) fail (`true`) or
    /// succeed again (`false`).
    pub fn fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    /// How many successful [`apply`](DeviceStore::apply) calls this store
    /// has seen: a test checks with it that a failed operation wrote
    /// nothing.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// A copy of the whole map, to compare before and after an operation.
    pub fn entries(&self) -> HashMap<Vec<u8>, Vec<u8>> {
        self.lock().map.clone()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        // A panic while holding the lock cannot leave the map half-written
        // (apply builds nothing in place before checking), so a poisoned
        // lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for MemoryDeviceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The values are key material: only their count is shown.
        f.debug_struct("MemoryDeviceStore")
            .field("entries", &self.lock().map.len())
            .finish_non_exhaustive()
    }
}

impl DeviceStore for MemoryDeviceStore {
    fn load(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .lock()
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.fail_writes {
            return Err(StoreError::new("writes disabled (test)"));
        }
        for (key, value) in changes {
            match value {
                Some(value) => inner.map.insert(key.clone(), value.clone()),
                None => inner.map.remove(key),
            };
        }
        inner.writes += 1;
        Ok(())
    }
}

/// A [`DeviceStore`] in its own SQLite file: one table
/// `kv(key BLOB PRIMARY KEY, value BLOB NOT NULL)`, WAL journal,
/// `synchronous=FULL` (a committed apply survives power loss) and
/// `secure_delete=ON` (deleted keys are overwritten in the file rather than
/// left in free pages). On Unix a new file is created readable by its owner
/// only.
pub struct SqliteDeviceStore {
    conn: Mutex<Connection>,
}

impl SqliteDeviceStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        create_private_file(path)?;
        let conn = Connection::open(path)?;
        // journal_mode answers with the mode in effect: check it took.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::new(format!(
                "sqlite: journal_mode is {mode}, expected wal"
            )));
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             PRAGMA secure_delete=ON;
             CREATE TABLE IF NOT EXISTS kv (
                 key BLOB PRIMARY KEY,
                 value BLOB NOT NULL
             ) WITHOUT ROWID;",
        )?;
        Ok(SqliteDeviceStore {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // Every apply is one transaction that rolls back when dropped
        // uncommitted, so a connection behind a poisoned lock is consistent.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::new(format!("creating the store file: {e}"))),
    }
}

#[cfg(not(unix))]
fn create_private_file(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

impl fmt::Debug for SqliteDeviceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDeviceStore").finish_non_exhaustive()
    }
}

impl DeviceStore for SqliteDeviceStore {
    fn load(&self) -> Result<Vec<Entry>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT key, value FROM kv")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
            for (key, value) in changes {
                match value {
                    Some(value) => upsert.execute(params![key, value])?,
                    None => delete.execute(params![key])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_store_applies_atomically_and_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("device.db");
        {
            let store = SqliteDeviceStore::open(&path).expect("open");
            store
                .apply(&[
                    (b"a".to_vec(), Some(b"1".to_vec())),
                    (b"b".to_vec(), Some(b"2".to_vec())),
                ])
                .expect("apply");
            store
                .apply(&[(b"a".to_vec(), None), (b"b".to_vec(), Some(b"3".to_vec()))])
                .expect("apply");
        }
        let store = SqliteDeviceStore::open(&path).expect("reopen");
        let mut entries = store.load().expect("load");
        entries.sort();
        assert_eq!(entries, vec![(b"b".to_vec(), b"3".to_vec())]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "store readable by others: {mode:o}");
        }
    }

    #[test]
    fn memory_store_shares_between_clones_and_can_fail() {
        let store = MemoryDeviceStore::new();
        let clone = store.clone();
        store
            .apply(&[(b"k".to_vec(), Some(b"v".to_vec()))])
            .expect("apply");
        assert_eq!(clone.load().expect("load").len(), 1);
        clone.fail_writes(true);
        assert!(store.apply(&[(b"k".to_vec(), None)]).is_err());
        assert_eq!(store.writes(), 1);
        assert_eq!(store.entries().len(), 1);
    }
}
