//! A token store in Redis.

use super::{StoreFuture, TokenStore};
use crate::error::Error;
use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client, Script};
use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

/// Lets go of a lock only if its owner still holds it: a lock that lapsed and was taken by
/// another process is not deleted.
const UNLOCK: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0";

/// A [`TokenStore`] in Redis: for replicas on several hosts, and serverless functions.
///
/// The entry is a string key with an expiry (`SET .. PX`); the lock is a key beside it
/// (`<key>:lock`) taken with `SET NX PX` and a random owner, let go by a compare-and-delete
/// script, and lapsing after the [login timeout](crate::AuthLayer::login_timeout) if its holder
/// dies. It connects on first use, over TCP (`redis://`, `rediss://` with redis-rs's TLS
/// features) or a Unix socket (`redis+unix:///path`), and again after any error.
///
/// ```no_run
/// use patchworks_auth::{store::RedisStore, AuthLayer, Credentials};
///
/// # fn main() -> Result<(), patchworks_auth::Error> {
/// let layer = AuthLayer::new(Credentials::from_env()?)
///     .store(RedisStore::new("redis://cache:6379/")?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    client: Client,
    /// The connection, once made; dropped after an error so that the next operation reconnects.
    connection: Arc<Mutex<Option<MultiplexedConnection>>>,
    unlock: Arc<Script>,
}

impl RedisStore {
    /// A store on the Redis server at `url`. Does no I/O: it connects on first use.
    ///
    /// # Errors
    ///
    /// An [`Error`] for which [`is_config`](Error::is_config) is `true` if `url` is not a Redis
    /// URL.
    pub fn new(url: &str) -> Result<Self, Error> {
        let client = Client::open(url).map_err(|error| {
            // redis-rs's message may repeat the URL, and with it a password: not shown.
            Error::config(format!(
                "the Redis URL is not valid ({:?}); expected redis://host:port/ or \
                 redis+unix:///path",
                error.kind()
            ))
        })?;
        Ok(RedisStore {
            client,
            connection: Arc::default(),
            unlock: Arc::new(Script::new(UNLOCK)),
        })
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let cached = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(connection) = cached {
            return Ok(connection);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(250)))
            .set_response_timeout(Some(Duration::from_millis(250)));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `command` on the connection; forgets the connection if it fails.
    async fn run<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, tower::BoxError> {
        let mut connection = self.connection().await?;
        let result = command.query_async(&mut connection).await;
        if result.is_err() {
            self.forget();
        }
        Ok(result?)
    }

    fn forget(&self) {
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl TokenStore for RedisStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { self.run(redis::cmd("GET").arg(key)).await })
    }

    fn save<'a>(&'a self, key: &'a str, entry: &'a [u8], ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let command = redis::cmd("SET")
                .arg(key)
                .arg(entry)
                .arg("PX")
                .arg(millis(ttl))
                .to_owned();
            self.run(&command).await
        })
    }

    fn lock<'a>(&'a self, key: &'a str, owner: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let command = redis::cmd("SET")
                .arg(format!("{key}:lock"))
                .arg(owner)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .to_owned();
            let taken: Option<String> = self.run(&command).await?;
            Ok(taken.is_some())
        })
    }

    fn unlock<'a>(&'a self, key: &'a str, owner: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let result: redis::RedisResult<i64> = self
                .unlock
                .key(format!("{key}:lock"))
                .arg(owner)
                .invoke_async(&mut connection)
                .await;
            if result.is_err() {
                self.forget();
            }
            result?;
            Ok(())
        })
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection info may hold a password: only where it goes is shown.
        let addr = self.client.get_connection_info().addr().to_string();
        let addr = match addr.split_once('@') {
            Some((_, host)) => host.to_owned(),
            None => addr,
        };
        f.debug_struct("RedisStore").field("addr", &addr).finish()
    }
}
