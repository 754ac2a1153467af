//! Token stores: one login for a whole fleet of processes.
//!
//! With [`AuthLayer::store`](crate::AuthLayer::store), every process that uses the same store
//! and account shares one token:
//!
//! - [`FileStore`]: a file on a local disk, for CLIs and cron jobs on one machine (one login a
//!   day instead of one a run) and for processes sharing a host.
//! - `RedisStore` (cargo feature `redis`): a Redis server or a Redis Cluster, over TCP, TLS
//!   (feature `redis-tls`) or a Unix socket, for replicas on several hosts.
//! - Your own: implement [`TokenStore`] (four operations on opaque bytes).
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # fn main() -> Result<(), patchworks_auth::Error> {
//! use patchworks_auth::{store::RedisStore, AuthLayer, Credentials};
//!
//! let layer = AuthLayer::new(Credentials::from_env()?)
//!     .store(RedisStore::new("redis://cache:6379/")?);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "redis"))]
//! # fn main() {}
//! ```
//!
//! # How the fleet shares a login
//!
//! A process reads the store only when it has no usable token: its first request, an expired
//! token, a 401, a renewal. A request with a fresh token never touches it. Then:
//!
//! 1. If the store holds a token this process may use, it takes it: no login. After a 401, that
//!    is a token saved by a process that logged in after the same token was refused, or one
//!    obtained after the 401 arrived; never the token refused, nor one that may have been
//!    revoked with it. For a renewal, one not itself due for renewal.
//! 2. Otherwise it takes the store's lock, logs in, saves the token and lets go. Processes that
//!    find the lock held poll the store (every 100 to 150 ms) for the holder's token, and take
//!    the lock themselves when it comes free without one: a lock lapses after its lifetime (the
//!    [login timeout](crate::AuthLayer::login_timeout)), so a holder killed mid-login delays
//!    the others by at most that. A lock that never comes free (a file lock held by a hung
//!    process) is given up on after twice its lifetime: they log in by themselves.
//! 3. What the store does for one login (loads, the lock) shares one budget, 300 ms by default
//!    ([`AuthLayer::store_timeout`](crate::AuthLayer::store_timeout)): a store that does not
//!    answer within what is left of it, or answers with an error, is skipped, and the process
//!    logs in by itself, as it would without a store, and warns once per outage. So a store adds
//!    at most the budget to a cold request. The token goes to the requests waiting for it before
//!    it is saved and the lock let go (with a budget of their own). A
//!    process that logged in while the store was down offers its token to the store (or takes
//!    the fleet's) every half-second or so, backing off to every 30 s while the store stays down,
//!    until it succeeds: the fleet converges on one token again once the store is back, without
//!    a login.
//!
//! The store never fails a request.
//!
//! # What is stored
//!
//! Under a key made from the login URL's origin and the account's email, hashed with SHA-256
//! (`patchworks-auth:v1:<hex>`; in Redis `patchworks-auth:{v1:<hex>}:token`, as
//! `RedisStore`'s key table says), the entry holds the token, when it was obtained and how long it
//! lives, sealed with XChaCha20-Poly1305. The sealing key is derived from the email and
//! password with Argon2id (19 MiB, 2 passes) and a random salt stored with the entry, or is a
//! key you give ([`AuthLayer::store_key`](crate::AuthLayer::store_key)). No byte of the store
//! holds the password, the email or the token in the clear, and testing a password guess
//! against an entry costs an Argon2id derivation. An entry that does not open (the password was
//! changed, or the entry was tampered with) is a miss, and the next login overwrites it.
//!
//! The derivation runs once per process and salt, on a blocking thread: about 50 ms optimized,
//! about 0.9 s in a debug build unless your `Cargo.toml` builds `argon2` and `blake2` with
//! `opt-level = 3` (the README's "Install" gives the lines).
//!
//! An entry expires from the store when the layer would stop sending its token (a tenth of its
//! lifetime, at most 5 s, before it expires), so a store never hands out a token the layer
//! would not send. A process that takes a token from Redis reads its expiry on the store's
//! clock (how long the store keeps the entry), so hosts whose clocks differ agree on it; a
//! [`FileStore`], on one host, shares its clock. A store of your own that says nothing of the
//! time left ([`TokenStore::load_expiring`]) dates the entry by the hosts' wall clocks, which
//! then need to agree to within seconds (NTP).
//!
//! # Which store
//!
//! | | [`FileStore`] | `RedisStore` |
//! |---|---|---|
//! | Shared by | processes on one host (one user) | processes on any host |
//! | Lock | an OS file lock, let go by the OS when its holder dies | `SET NX PX` with a random owner, let go by compare-and-delete |
//! | Budget's margin | fixed (a twentieth of the window, at least 250 ms) | measured: each unit re-dated on the server once answered |
//! | Clock | the host's | the server's (`TIME`, and each key's time to live) |
//! | Lock lifetime | until its holder lets go or dies; waiters give up after the login timeout | the login timeout |
//! | Good for | CLIs, cron jobs, several workers on one machine | replicas behind a load balancer, serverless |

mod file;
#[cfg(feature = "redis")]
mod redis;
mod seal;

pub(crate) use seal::api_key_budget_key;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;
pub use file::FileStore;

use crate::{
    credentials::Form,
    token::{send_margin, Obtained, Timings},
};
use http::{HeaderValue, Uri};
use seal::Sealer;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};
use tokio::time::{timeout, Instant};
use tower::BoxError;

/// The future a [`TokenStore`] operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// Where processes share a token: an entry per account, and a lock per entry.
///
/// The layer hands a store opaque bytes (already sealed) and keys it made; a store only keeps
/// them. Every operation may fail or hang: the operations of one login share a budget (300 ms by
/// default), and on any error the layer logs in by itself, so a store never fails a request. Implement it for a store of your own
/// (a database, a secrets manager) the way [`FileStore`] and `RedisStore` do.
pub trait TokenStore: fmt::Debug + Send + Sync + 'static {
    /// The entry under `key`, if there is one that has not expired.
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// [`load`](Self::load), and how much longer the store keeps the entry, if it can say:
    /// then the token's expiry is read on the store's clock, not this host's.
    ///
    /// The default says nothing of the time left: the host's clock dates the entry.
    fn load_expiring<'a>(
        &'a self,
        key: &'a str,
    ) -> StoreFuture<'a, Option<(Vec<u8>, Option<Duration>)>> {
        Box::pin(async move { Ok(self.load(key).await?.map(|entry| (entry, None))) })
    }

    /// Keeps `entry` under `key` for `ttl`, replacing what was there.
    fn save<'a>(&'a self, key: &'a str, entry: &'a [u8], ttl: Duration) -> StoreFuture<'a, ()>;

    /// Takes the lock of `key` for `owner`, for at most `ttl`: `true` if taken, `false` if
    /// another owner holds it.
    fn lock<'a>(&'a self, key: &'a str, owner: &'a str, ttl: Duration) -> StoreFuture<'a, bool>;

    /// Lets go of the lock of `key` if `owner` still holds it (and only then).
    fn unlock<'a>(&'a self, key: &'a str, owner: &'a str) -> StoreFuture<'a, ()>;

    /// Takes one unit of the API [budget](crate::budget) of `key`'s account, as `name`: at most
    /// `limit` units in any `window`, timed by one clock every process shares. `None` if taken;
    /// otherwise how long until one may be had (the oldest ages out, or a pause ends).
    ///
    /// The default shares nothing: each process keeps its own budget.
    fn take_budget<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
        window: Duration,
        name: &'a str,
    ) -> StoreFuture<'a, Option<Duration>> {
        let _ = (key, limit, window, name);
        Box::pin(std::future::ready(Err(Unsupported.into())))
    }

    /// Unit `name` of `key`'s account ages out `sooner` than the `window` it was taken for: its
    /// request was answered, and its measured margin is shorter than the default one. A unit
    /// that would then have aged out already is gone: a unit never sent goes back this way, with
    /// `sooner` the whole window.
    ///
    /// The default keeps every unit for its window.
    fn redate_budget<'a>(
        &'a self,
        key: &'a str,
        name: &'a str,
        sooner: Duration,
    ) -> StoreFuture<'a, ()> {
        let _ = (key, name, sooner);
        Box::pin(std::future::ready(Err(Unsupported.into())))
    }

    /// Pauses the API budget of `key`'s account for `pause` (after a 429), for every process;
    /// a longer pause already set stays.
    ///
    /// The default shares nothing.
    fn pause_budget<'a>(&'a self, key: &'a str, pause: Duration) -> StoreFuture<'a, ()> {
        let _ = (key, pause);
        Box::pin(std::future::ready(Err(Unsupported.into())))
    }
}

/// A store that keeps no shared budget: the default of [`TokenStore::take_budget`].
#[derive(Debug)]
struct Unsupported;

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this token store shares no API budget")
    }
}

impl std::error::Error for Unsupported {}

pub(crate) fn is_unsupported(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<Unsupported>()
}

/// What the store may take of one login, its operations together: see
/// [`AuthLayer::store_timeout`](crate::AuthLayer::store_timeout).
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_millis(300);

/// A random lock owner: which process (and login) holds a lock.
pub(crate) struct Owner(String);

impl Owner {
    pub(crate) fn new() -> Owner {
        Owner(seal::hex(&seal::random::<16>()))
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

/// A store as the layer uses it: sealed entries under the account's key, a deadline on every
/// operation, and one warning per outage.
pub(crate) struct Shared {
    store: Arc<dyn TokenStore>,
    key: String,
    sealer: Arc<Sealer>,
    /// Whether the last operation failed.
    down: AtomicBool,
    outages: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        store: &Arc<dyn TokenStore>,
        login_url: &Uri,
        (form, account, password, scope): (Form, &str, &str, Option<&str>),
        key: Option<[u8; 32]>,
    ) -> Shared {
        let origin = format!(
            "{}://{}",
            login_url.scheme_str().unwrap_or_default(),
            login_url
                .authority()
                .map(|authority| authority.as_str())
                .unwrap_or_default()
        );
        Shared {
            store: store.clone(),
            key: seal::entry_key(&origin, form, account, scope),
            sealer: Arc::new(Sealer::new(&seal::identity(form, account), password, key)),
            down: AtomicBool::new(false),
            outages: AtomicU64::new(0),
        }
    }

    /// The store and the account's key, for the API budget.
    pub(crate) fn budget(&self) -> (Arc<dyn TokenStore>, String) {
        (self.store.clone(), self.key.clone())
    }

    pub(crate) fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Runs one operation within what is left of `budget`, and takes its time from it;
    /// `Err(())` when the store is unavailable or the budget spent.
    async fn run<T>(
        &self,
        what: &str,
        op: StoreFuture<'_, T>,
        budget: &mut Duration,
    ) -> Result<T, ()> {
        let (started, allowed) = (Instant::now(), *budget);
        let outcome = timeout(allowed, op).await;
        *budget = budget.saturating_sub(started.elapsed());
        let failed = if outcome.is_ok() { "error" } else { "timeout" };
        let error = match outcome {
            Ok(Ok(value)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: "patchworks_auth", "token store answers again");
                }
                return Ok(value);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("its budget for this login ({allowed:?}) ran out"),
        };
        crate::metrics::store(what, failed);
        if !self.down.swap(true, Ordering::Relaxed) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "patchworks_auth",
                store = ?self.store,
                operation = what,
                %error,
                "token store unavailable: logging in without it until it answers"
            );
        }
        Err(())
    }

    /// The token in the store, if any opens, and whether it was saved as the successor of
    /// `refused` (by a process that logged in after a 401 to that token).
    pub(crate) async fn load(
        &self,
        refused: Option<&HeaderValue>,
        budget: &mut Duration,
    ) -> Result<Option<(Obtained, bool)>, ()> {
        let loaded = self.store.load_expiring(&self.key);
        let loaded = self.run("load", loaded, budget).await?;
        crate::metrics::store("load", if loaded.is_some() { "ok" } else { "miss" });
        let Some((bytes, kept_for)) = loaded else {
            return Ok(None);
        };
        let Some(entry) = self.sealer.open(&self.key, &bytes).await else {
            tracing::debug!(
                target: "patchworks_auth",
                "the stored token does not open with these credentials: ignored"
            );
            return Ok(None);
        };
        // To this process's monotonic clock: from the store's, which keeps the entry for as
        // long as the token may be sent; else from the wall clock the fleet shares.
        let age = match kept_for {
            Some(kept_for) => {
                (entry.lifetime - send_margin(entry.lifetime)).saturating_sub(kept_for)
            }
            None => SystemTime::now()
                .duration_since(entry.obtained_at)
                .unwrap_or_default(),
        };
        let obtained = Obtained {
            header: entry.header,
            obtained_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            lifetime: entry.lifetime,
            shared: true,
            scope: None,
        };
        let successor =
            refused.is_some_and(|refused| entry.replaces == Some(seal::fingerprint(refused)));
        Ok(Some((obtained, successor)))
    }

    /// Saves a token for as long as it may be sent, naming the token it `replaces` after a 401.
    /// Best effort: a failure is only logged.
    pub(crate) async fn save(
        &self,
        obtained: &Obtained,
        replaces: Option<&HeaderValue>,
        timings: &Timings,
        budget: &mut Duration,
    ) {
        let (_, send_by) = timings.schedule(obtained.obtained_at, obtained.lifetime);
        let ttl = send_by.saturating_duration_since(Instant::now());
        if ttl < Duration::from_secs(1) {
            return;
        }
        let entry = seal::Entry {
            header: obtained.header.clone(),
            obtained_at: SystemTime::now() - obtained.obtained_at.elapsed(),
            lifetime: obtained.lifetime,
            replaces: replaces.map(seal::fingerprint),
        };
        let Some(bytes) = self.sealer.seal(&self.key, &entry).await else {
            return;
        };
        let saved = self.run("save", self.store.save(&self.key, &bytes, ttl), budget);
        if saved.await.is_ok() {
            crate::metrics::store("save", "ok");
        }
    }

    /// Takes the entry's lock for `ttl`.
    pub(crate) async fn lock(
        &self,
        owner: &Owner,
        ttl: Duration,
        budget: &mut Duration,
    ) -> Result<bool, ()> {
        let lock = self.store.lock(&self.key, &owner.0, ttl);
        let taken = self.run("lock", lock, budget).await;
        if taken.is_ok() {
            crate::metrics::store("lock", "ok");
        }
        taken
    }

    /// Lets go of the entry's lock. Best effort: the lock expires by itself.
    pub(crate) async fn unlock(&self, owner: &Owner, budget: &mut Duration) {
        let _ = self
            .run("unlock", self.store.unlock(&self.key, &owner.0), budget)
            .await;
    }
}
