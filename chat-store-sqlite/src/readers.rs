//! A small pool of read connections, used on tokio's blocking pool.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Error;

/// Read connections: a permit per idle connection, so that waiting for one
/// happens asynchronously and never on a runtime thread.
#[derive(Debug)]
pub(crate) struct Readers {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

/// A connection taken from the pool; goes back on drop (also on panic).
struct Lease {
    conn: Option<Connection>,
    pool: Arc<Readers>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}

impl Readers {
    pub(crate) fn new(conns: Vec<Connection>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(conns.len())),
            idle: Mutex::new(conns),
        }
    }

    /// Runs `f` on a read connection, inside one read transaction (a
    /// consistent snapshot that includes every committed write).
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, Error>
    where
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let lease = Lease {
                conn,
                pool,
                _permit: permit,
            };
            // A permit is only handed out for an idle connection.
            let conn = lease.conn.as_ref().ok_or(Error::Closed)?;
            let tx = conn.unchecked_transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await?
    }
}
