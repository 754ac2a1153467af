//! A token store in Redis: one server, or a Redis Cluster; over TCP, TLS or a Unix socket.

use super::{StoreFuture, TokenStore};
use crate::error::Error;
use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    Client, Script,
};
use std::{fmt, sync::Arc, time::Duration};
use tokio::sync::Mutex;

/// How long the store may take to connect, and then to answer a command: the layer goes on
/// without it past that ([`crate::store`], "How the fleet shares a login").
const BOUND: Duration = Duration::from_millis(250);

/// Lets go of a lock only if its owner still holds it: a lock that lapsed and was taken by
/// another process is not deleted.
const UNLOCK: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0";

/// The entry and how long the store keeps it (ms): the token's expiry on the store's clock.
const LOAD: &str = r"local entry = redis.call('GET', KEYS[1])
if not entry then
    return false
end
return {entry, redis.call('PTTL', KEYS[1])}";

/// Takes one unit of an API budget: a sorted set (`KEYS[1]`) of units scored by when each ages
/// out, paused while `KEYS[2]` lives, timed by the server's clock (`TIME`) so that every host
/// agrees. A unit ages out `ARGV[2]` µs after it was taken, or sooner once its request was
/// answered (`REDATE`). Returns -1 if taken, else the microseconds until a unit may be had.
const TAKE: &str = r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
    return paused * 1000
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now + window, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
    return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(0, math.ceil(tonumber(oldest[2]) - now))";

/// Ages unit `ARGV[1]` out `ARGV[2]` µs sooner: its request was answered, and its measured
/// margin is shorter than the default one; or it was never sent, and goes back at once.
const REDATE: &str = r"local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
    return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local sooner = tonumber(score) - tonumber(ARGV[2])
if sooner <= now then
    redis.call('ZREM', KEYS[1], ARGV[1])
else
    redis.call('ZADD', KEYS[1], 'XX', sooner, ARGV[1])
end
return 1";

/// Pauses an API budget for `ARGV[1]` ms, unless a longer pause is set.
const PAUSE: &str = r"if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0";

/// A [`TokenStore`] in Redis, for replicas on several hosts and serverless functions: one
/// server ([`new`](Self::new)) or a Redis Cluster ([`cluster`](Self::cluster)), over TCP
/// (`redis://`), TLS (`rediss://`, cargo feature `redis-tls`) or a Unix socket
/// (`redis+unix:///path`).
///
/// An account's keys share one hash tag, so that a cluster keeps them in one slot:
///
/// | key | what |
/// |---|---|
/// | `patchworks-auth:{<entry>}:token` | the sealed token, expiring (`SET .. PX`) when the layer would stop sending it |
/// | `patchworks-auth:{<entry>}:lock` | the login lock: `SET NX PX` with a random owner, let go by a compare-and-delete script, lapsing after the [login timeout](crate::AuthLayer::login_timeout) if its holder dies |
/// | `patchworks-auth:{<entry>}:units` | the API [budget](crate::budget)'s units, a sorted set scored by when each ages out (on the server's clock) |
/// | `patchworks-auth:{<entry>}:pause` | set for the pause after a 429 |
///
/// The connection is redis-rs's: a [`ConnectionManager`] for one server, a cluster connection
/// (which follows `MOVED` and `ASK` and finds the new master after a failover) for a cluster.
/// It is made on first use, on the Tokio runtime of that use: the manager reconnects after an
/// error, and a cluster connection is made again once dropped (its runtime gone, say).
/// Connecting and each command are bounded to 250 ms: a store that is down or frozen is skipped,
/// and no request fails for it.
///
/// ```no_run
/// use patchworks_auth::{store::RedisStore, AuthLayer, Credentials};
///
/// # fn main() -> Result<(), patchworks_auth::Error> {
/// let layer = AuthLayer::new(Credentials::from_env()?)
///     .store(RedisStore::new("redis://cache:6379/")?);
/// // A managed Redis Cluster that speaks only TLS (cargo feature `redis-tls`):
/// # #[cfg(feature = "redis-tls")]
/// let layer = AuthLayer::new(Credentials::from_env()?).store(RedisStore::cluster(&[
///     "rediss://:password@node-1.cache.example:6379/",
///     "rediss://:password@node-2.cache.example:6379/",
/// ])?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// The connection, once made. A cluster's is made again once it is dropped (its task went
    /// with the runtime that made it); a `ConnectionManager` reconnects by itself.
    connection: Mutex<Option<Connection>>,
    unlock: Script,
    load: Script,
    take: Script,
    redate: Script,
    pause: Script,
}

// One per store, behind its `Arc`.
#[allow(clippy::large_enum_variant)]
enum Target {
    Server(Client),
    /// The client, and the seed nodes' URLs it was made from.
    Cluster(ClusterClient, Arc<[String]>),
}

#[derive(Clone)]
enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisStore {
    /// A store on the Redis server at `url`. Does no I/O: it connects on first use.
    ///
    /// # Errors
    ///
    /// An [`Error`] for which [`is_config`](Error::is_config) is `true` if `url` is not a Redis
    /// URL, or is a `rediss://` URL and the crate was built without the `redis-tls` feature.
    pub fn new(url: &str) -> Result<Self, Error> {
        let client = Client::open(check(url)?).map_err(invalid)?;
        Ok(Self::with(Target::Server(client)))
    }

    /// A store on the Redis Cluster that `urls` (some of its nodes: one is enough, more survive
    /// one of them being down at start) belong to. Does no I/O: it connects on first use.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), for any of the URLs, or if there is none.
    pub fn cluster(urls: &[&str]) -> Result<Self, Error> {
        for url in urls {
            check(url)?;
        }
        let urls: Arc<[String]> = urls.iter().map(|url| url.to_string()).collect();
        let client = cluster(&urls).build().map_err(invalid)?;
        Ok(Self::with(Target::Cluster(client, urls)))
    }

    /// Trusts the certificate authorities in `pem` (PEM) for `rediss://`, instead of the public
    /// roots (webpki-roots): for a private CA or a self-signed server. (redis-rs's
    /// `rediss://host:port/#insecure`, which verifies no certificate, works too, for a provider
    /// that gives no CA to trust; the store warns when made with one.)
    ///
    /// # Errors
    ///
    /// An [`Error`] for which [`is_config`](Error::is_config) is `true` if `pem` holds no
    /// certificate, or the store's URLs are not `rediss://`.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn root_certificates(self, pem: &[u8]) -> Result<Self, Error> {
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(Error::config(
                "the Redis root certificates hold no PEM certificate \
                 (-----BEGIN CERTIFICATE-----)",
            ));
        }
        let tls = match &self.inner.target {
            Target::Server(client) => matches!(
                client.get_connection_info().addr(),
                redis::ConnectionAddr::TcpTls { .. }
            ),
            Target::Cluster(_, urls) => urls.iter().all(|url| url.starts_with("rediss:")),
        };
        if !tls {
            return Err(Error::config(
                "Redis root certificates are for rediss:// (TLS) URLs, and this store's are not",
            ));
        }
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        };
        let target = match &self.inner.target {
            Target::Server(client) => Target::Server(
                Client::build_with_tls(client.get_connection_info().clone(), certificates)
                    .map_err(invalid)?,
            ),
            Target::Cluster(_, urls) => {
                let client = cluster(urls).certs(certificates).build().map_err(invalid)?;
                Target::Cluster(client, urls.clone())
            }
        };
        Ok(Self::with(target))
    }

    fn with(target: Target) -> Self {
        RedisStore {
            inner: Arc::new(Inner {
                target,
                connection: Mutex::new(None),
                unlock: Script::new(UNLOCK),
                load: Script::new(LOAD),
                take: Script::new(TAKE),
                redate: Script::new(REDATE),
                pause: Script::new(PAUSE),
            }),
        }
    }

    async fn connection(&self) -> redis::RedisResult<Connection> {
        let mut connection = self.inner.connection.lock().await;
        if let Some(connection) = &*connection {
            return Ok(connection.clone());
        }
        let made = match &self.inner.target {
            Target::Server(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(BOUND))
                    .set_response_timeout(Some(BOUND))
                    .set_number_of_retries(1);
                let manager = ConnectionManager::new_with_config(client.clone(), config).await?;
                Connection::Server(manager)
            }
            Target::Cluster(client, _) => Connection::Cluster(client.get_async_connection().await?),
        };
        Ok(connection.insert(made).clone())
    }

    /// `result` of an operation; a cluster connection that was dropped is made again next time.
    async fn settle<T>(&self, result: redis::RedisResult<T>) -> Result<T, tower::BoxError> {
        if let Err(error) = &result {
            if error.is_connection_dropped() {
                let mut connection = self.inner.connection.lock().await;
                if matches!(*connection, Some(Connection::Cluster(_))) {
                    *connection = None;
                }
            }
        }
        Ok(result?)
    }

    /// Runs `command`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, tower::BoxError> {
        let result = match self.connection().await? {
            Connection::Server(mut connection) => command.query_async(&mut connection).await,
            Connection::Cluster(mut connection) => command.query_async(&mut connection).await,
        };
        self.settle(result).await
    }

    /// Runs `invocation` of a script.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, tower::BoxError> {
        let result = match self.connection().await? {
            Connection::Server(mut connection) => invoke(invocation, &mut connection).await,
            Connection::Cluster(mut connection) => invoke(invocation, &mut connection).await,
        };
        self.settle(result).await
    }
}

async fn invoke<T: redis::FromRedisValue>(
    invocation: redis::ScriptInvocation<'_>,
    connection: &mut impl ConnectionLike,
) -> redis::RedisResult<T> {
    invocation.invoke_async(connection).await
}

/// A cluster client bounded as a single server's connection is, whose retries (after a node
/// went away, once it has found the new master) fit in that bound: redis-rs's default waits
/// over a second before the first.
fn cluster(urls: &[String]) -> redis::cluster::ClusterClientBuilder {
    ClusterClient::builder(urls.iter().map(String::as_str))
        .connection_timeout(BOUND)
        .response_timeout(BOUND)
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(100)
}

/// `url`, if this build can use it.
fn check(url: &str) -> Result<&str, Error> {
    if cfg!(not(feature = "redis-tls")) && url.starts_with("rediss:") {
        return Err(Error::config(
            "a rediss:// (TLS) Redis URL needs the crate's `redis-tls` feature: turn it on in \
             Cargo.toml, or use redis://",
        ));
    }
    if url.starts_with("rediss:") && url.ends_with("#insecure") {
        tracing::warn!(
            target: "patchworks_auth",
            "a rediss:// URL with #insecure: the Redis server's certificate is not verified; \
             prefer RedisStore::root_certificates with its CA"
        );
    }
    Ok(url)
}

fn invalid(error: redis::RedisError) -> Error {
    // redis-rs's message may repeat the URL, and with it a password: not shown.
    Error::config(format!(
        "the Redis URL is not valid ({:?}); expected redis://host:port/, rediss://host:port/ or \
         redis+unix:///path",
        error.kind()
    ))
}

/// `url` without its user and password.
fn redact(url: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .map_or(("", url), |(scheme, rest)| (scheme, rest));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    match scheme {
        "" => rest.to_owned(),
        scheme => format!("{scheme}://{rest}"),
    }
}

/// An account's key for `what`, under the hash tag of its entry (`key`, made by the layer:
/// `patchworks-auth:<version>:<hex>`), so that a cluster keeps an account's keys in one slot.
fn tagged(key: &str, what: &str) -> String {
    let entry = key.strip_prefix("patchworks-auth:").unwrap_or(key);
    format!("patchworks-auth:{{{entry}}}:{what}")
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl TokenStore for RedisStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { Ok(self.load_expiring(key).await?.map(|(entry, _)| entry)) })
    }

    fn load_expiring<'a>(
        &'a self,
        key: &'a str,
    ) -> StoreFuture<'a, Option<(Vec<u8>, Option<Duration>)>> {
        Box::pin(async move {
            let loaded: Option<(Vec<u8>, i64)> = self
                .invoke(self.inner.load.key(tagged(key, "token")))
                .await?;
            Ok(loaded.map(|(entry, ttl)| {
                let ttl = u64::try_from(ttl).ok().map(Duration::from_millis);
                (entry, ttl)
            }))
        })
    }

    fn save<'a>(&'a self, key: &'a str, entry: &'a [u8], ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let command = redis::cmd("SET")
                .arg(tagged(key, "token"))
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
                .arg(tagged(key, "lock"))
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
            let mut invocation = self.inner.unlock.key(tagged(key, "lock"));
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
            let mut invocation = self.inner.take.key(tagged(key, "units"));
            invocation.key(tagged(key, "pause"));
            invocation.arg(limit).arg(micros(window)).arg(name);
            let wait: i64 = self.invoke(invocation).await?;
            Ok(u64::try_from(wait).ok().map(Duration::from_micros))
        })
    }

    fn redate_budget<'a>(
        &'a self,
        key: &'a str,
        name: &'a str,
        sooner: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut invocation = self.inner.redate.key(tagged(key, "units"));
            invocation.arg(name).arg(micros(sooner));
            self.invoke::<i64>(invocation).await?;
            Ok(())
        })
    }

    fn pause_budget<'a>(&'a self, key: &'a str, pause: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut invocation = self.inner.pause.key(tagged(key, "pause"));
            invocation.arg(millis(pause));
            self.invoke::<i64>(invocation).await?;
            Ok(())
        })
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection info may hold a password: only where it goes is shown.
        let (addr, cluster) = match &self.inner.target {
            Target::Server(client) => (client.get_connection_info().addr().to_string(), false),
            Target::Cluster(_, urls) => (urls.first().cloned().unwrap_or_default(), true),
        };
        let addr = redact(&addr);
        f.debug_struct("RedisStore")
            .field("addr", &addr)
            .field("cluster", &cluster)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accounts_keys_share_one_hash_tag() {
        let key = "patchworks-auth:v2:00ff";
        for what in ["token", "lock", "units", "pause"] {
            assert_eq!(
                tagged(key, what),
                format!("patchworks-auth:{{v2:00ff}}:{what}")
            );
        }
    }

    #[test]
    fn debug_shows_no_password() {
        let store = RedisStore::new("redis://user:hunter2@cache:6379/").unwrap();
        assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");
        let store = RedisStore::cluster(&["redis://:hunter2@node:7000/"]).unwrap();
        assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn rediss_urls_single_and_cluster_with_or_without_verification() {
        for url in ["rediss://:pw@cache:6380/", "rediss://cache:6380/#insecure"] {
            RedisStore::new(url).unwrap();
            RedisStore::cluster(&[url, url]).unwrap();
        }
        let error = RedisStore::new("rediss://cache:6380/")
            .unwrap()
            .root_certificates(b"not a certificate")
            .unwrap_err();
        assert!(error.is_config(), "{error}");
        let pem = b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
        for store in [
            RedisStore::new("redis://cache:6379/"),
            RedisStore::cluster(&["redis://node:7000/"]),
        ] {
            let error = store.unwrap().root_certificates(pem).unwrap_err();
            assert!(error.to_string().contains("rediss://"), "{error}");
        }
    }

    #[test]
    fn rediss_needs_the_tls_feature_and_says_so() {
        let made = RedisStore::new("rediss://cache:6380/").map_err(|e| e.to_string());
        let tls = cfg!(feature = "redis-tls");
        assert_eq!(made.is_ok(), tls, "{made:?}");
        if let Err(error) = made {
            assert!(error.contains("`redis-tls` feature"), "{error}");
        }
    }
}
