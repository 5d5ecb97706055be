//! The message store: one SQLite file, one table.
//!
//! rusqlite is a blocking API, so handlers call the store from
//! `tokio::task::spawn_blocking` and the async threads never wait on disk.
//! One connection behind a mutex is plenty for a guestbook; a busier service
//! would use a connection pool.

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use serde::Serialize;

/// A stored message, as `GET /messages` and `POST /messages` return it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    pub id: i64,
    pub name: String,
    pub message: String,
    /// `positive`, `neutral` or `negative` from sentiment-service, or
    /// `unknown` when it could not be asked.
    pub sentiment: String,
    /// When it was stored: UTC, RFC 3339 with milliseconds (`2026-01-31T09:30:00.123Z`).
    pub timestamp: String,
}

/// A storage failure; handlers turn it into a 500 that says what to check.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the SQLite database {path:?}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("SQLite error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the database connection is unusable: a thread panicked while holding it")]
    Poisoned,
}

/// A cheap-to-clone handle to the database.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Open (or create) the database at `path` and create the table if missing.
    /// `:memory:` gives a private in-memory database (tests use it).
    pub fn open(path: &str) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        // `IF NOT EXISTS` makes start-up idempotent: the first instance creates
        // the table, later starts reuse it. AUTOINCREMENT keeps ids increasing
        // even after deletes, so "newest first" can sort by id.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS messages (
                 id        INTEGER PRIMARY KEY AUTOINCREMENT,
                 name      TEXT NOT NULL,
                 message   TEXT NOT NULL,
                 sentiment TEXT NOT NULL,
                 timestamp TEXT NOT NULL
             );",
        )
        .map_err(open_err)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Store one message, already validated and classified. A single INSERT:
    /// either the whole row is stored or nothing is. SQLite stamps the time
    /// and `RETURNING` hands back the id and timestamp it chose.
    pub fn insert(
        &self,
        name: &str,
        message: &str,
        sentiment: &str,
    ) -> Result<Message, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let (id, timestamp) = conn.query_row(
            "INSERT INTO messages (name, message, sentiment, timestamp)
             VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             RETURNING id, timestamp",
            params![name, message, sentiment],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok(Message {
            id,
            name: name.to_string(),
            message: message.to_string(),
            sentiment: sentiment.to_string(),
            timestamp,
        })
    }

    /// The newest `limit` messages, newest first.
    pub fn list(&self, limit: u32) -> Result<Vec<Message>, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, message, sentiment, timestamp
             FROM messages ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |row| {
            Ok(Message {
                id: row.get(0)?,
                name: row.get(1)?,
                message: row.get(2)?,
                sentiment: row.get(3)?,
                timestamp: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_then_list_newest_first_with_limit() {
        let store = Store::open(":memory:").unwrap();
        let first = store.insert("ray", "hello", "neutral").unwrap();
        let second = store.insert("ana", "great talk", "positive").unwrap();
        assert!(second.id > first.id);
        assert!(first.timestamp.ends_with('Z') && first.timestamp.contains('T'));

        assert_eq!(store.list(50).unwrap(), vec![second.clone(), first]);
        assert_eq!(store.list(1).unwrap(), vec![second]);
    }

    #[test]
    fn file_database_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("guestbook-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guestbook.db");
        let path = path.to_str().unwrap();

        let stored = Store::open(path)
            .unwrap()
            .insert("ray", "kept", "unknown")
            .unwrap();
        // A second open runs CREATE TABLE IF NOT EXISTS again and sees the row.
        assert_eq!(Store::open(path).unwrap().list(50).unwrap(), vec![stored]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_in_a_missing_directory_names_the_path() {
        let err = Store::open("/nonexistent-dir-for-guestbook-test/x.db")
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("nonexistent-dir-for-guestbook-test"),
            "{err}"
        );
    }
}
