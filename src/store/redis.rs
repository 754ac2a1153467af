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

/// Takes one unit of an API budget: a sliding log in a sorted set (`KEYS[1]`), paused while
/// `KEYS[2]` lives, timed by the server's clock (`TIME`) so that every host agrees. Returns -1
/// if taken, else the microseconds until a unit may be had.
const TAKE: &str = r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
    return paused * 1000
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
    return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(0, math.ceil(tonumber(oldest[2]) + window - now))";

/// Pauses an API budget for `ARGV[1]` ms, unless a longer pause is set.
const PAUSE: &str = r"if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0";

/// A [`TokenStore`] in Redis: for replicas on several hosts, and serverless functions.
///
/// The entry is a string key with an expiry (`SET .. PX`); the lock is a key beside it
/// (`<key>:lock`) taken with `SET NX PX` and a random owner, let go by a compare-and-delete
/// script, and lapsing after the [login timeout](crate::AuthLayer::login_timeout) if its holder
/// dies. The account's API [budget](crate::budget) is a sorted set beside them
/// (`<key>:budget`, and `<key>:budget:pause` after a 429), taken by one script timed by the
/// server's clock. It connects on first use, over TCP (`redis://`, `rediss://` with redis-rs's TLS
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
    take: Arc<Script>,
    pause: Arc<Script>,
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
            take: Arc::new(Script::new(TAKE)),
            pause: Arc::new(Script::new(PAUSE)),
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

    /// Runs `invocation` of a script; forgets the connection if it fails.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, tower::BoxError> {
        let mut connection = self.connection().await?;
        let result = invocation.invoke_async(&mut connection).await;
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
            let mut invocation = self.unlock.key(format!("{key}:lock"));
            invocation.arg(owner);
            self.invoke::<i64>(invocation).await?;
            Ok(())
        })
    }

    fn take_budget<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
        window: Duration,
        name: &'a str,
    ) -> StoreFuture<'a, Option<Duration>> {
        Box::pin(async move {
            let mut invocation = self.take.key(format!("{key}:budget"));
            invocation.key(format!("{key}:budget:pause"));
            let window = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
            invocation.arg(limit).arg(window).arg(name);
            let wait: i64 = self.invoke(invocation).await?;
            Ok(u64::try_from(wait).ok().map(Duration::from_micros))
        })
    }

    fn pause_budget<'a>(&'a self, key: &'a str, pause: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut invocation = self.pause.key(format!("{key}:budget:pause"));
            invocation.arg(millis(pause));
            self.invoke::<i64>(invocation).await?;
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
