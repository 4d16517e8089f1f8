//! The statements of a post, kept prepared by the writer thread.
//!
//! rusqlite's `prepare_cached` finds a statement in an LRU cache by its
//! text, hashing a few hundred bytes, and on drop puts it back, hashing
//! again and clearing its bindings: about 1,300 instructions each time,
//! 8% of the writer's work per post with three statements (callgrind, see
//! BENCHMARKS.md). The writer keeps these few for its whole life instead.

use std::cell::RefCell;

use rusqlite::{Connection, Statement};

use crate::Error;

/// A statement on the path of every post.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hot {
    /// `?1` chat, `?2` user: the chat's counter if the user takes part.
    MemberSeq,
    /// `?1` chat: the chat's counter.
    ChatSeq,
    /// The post's row (see `write::insert_post`).
    InsertPost,
    /// `?1` chat, `?2` counter, `?3` last activity.
    SetLastSeq,
}

impl Hot {
    const COUNT: usize = 4;

    pub(crate) const fn sql(self) -> &'static str {
        match self {
            Self::MemberSeq => {
                "SELECT c.last_seq FROM participants p JOIN chats c ON c.id = p.chat_id \
                 WHERE p.chat_id = ?1 AND p.user_id = ?2"
            }
            Self::ChatSeq => "SELECT last_seq FROM chats WHERE id = ?1",
            Self::InsertPost => {
                "INSERT INTO messages (id, chat_id, seq, updated_seq, sender_id, kind, content, \
                 media, reply_to, client_msg_id, created_at, edited_at, deleted, system, mls) \
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, 0, ?11, ?12) \
                 ON CONFLICT (sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL \
                 DO NOTHING"
            }
            Self::SetLastSeq => "UPDATE chats SET last_seq = ?2, last_activity = ?3 WHERE id = ?1",
        }
    }
}

/// The writer's connection with its [`Hot`] statements, each prepared on
/// first use and kept.
pub(crate) struct Prepared<'c> {
    conn: &'c Connection,
    slots: [RefCell<Option<Statement<'c>>>; Hot::COUNT],
}

impl<'c> Prepared<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            slots: Default::default(),
        }
    }

    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    /// Runs `f` on the statement, preparing it the first time. rusqlite
    /// resets a statement after each execution and query, so `f` finds it
    /// ready to bind and run.
    pub(crate) fn with<T>(
        &self,
        which: Hot,
        f: impl FnOnce(&mut Statement<'c>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let slot = &self.slots[which as usize];
        // Taken out while in use, so that a nested use of the same
        // statement (none exists) would prepare a second one rather than
        // fail.
        let taken = slot.borrow_mut().take();
        let mut stmt = match taken {
            Some(stmt) => stmt,
            None => self.conn.prepare(which.sql())?,
        };
        let out = f(&mut stmt);
        *slot.borrow_mut() = Some(stmt);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_prepares_against_the_schema() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = Connection::open_in_memory()?;
        crate::schema::migrate(&mut conn)?;
        let prepared = Prepared::new(&conn);
        for hot in [
            Hot::MemberSeq,
            Hot::ChatSeq,
            Hot::InsertPost,
            Hot::SetLastSeq,
        ] {
            prepared.with(hot, |_| Ok(()))?;
        }
        // Kept: the second use finds the statement prepared.
        assert!(prepared.slots.iter().all(|s| s.borrow().is_some()));
        Ok(())
    }
}
