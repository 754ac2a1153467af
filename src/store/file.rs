//! A token store in files, one per account, each locked with an OS file lock.

use super::{StoreFuture, TokenStore};
use crate::budget::log::Log;
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Read, Seek, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

const MAGIC: &[u8; 4] = b"pwa1";
/// An API budget's file: this, when a pause ends, then when each unit of the window was taken
/// (microseconds since the Unix epoch, big-endian).
const BUDGET_MAGIC: &[u8; 4] = b"pwb1";
/// The most of a token file read: a real entry is a few hundred bytes.
const MAX_FILE: u64 = 16 * 1024;

/// A [`TokenStore`] in files on a local disk: for CLIs, cron jobs and processes sharing a host.
///
/// Each account has a file of its own beside `path` (`<path>-<16 hex digits>`, named from the
/// account's hashed key) with its lock beside it (`.lock`), so accounts sharing one `path` never
/// wait on or overwrite each other. A file is created (with its directory) on the first save,
/// readable and writable by its owner only (`0600`, directory `0700`), and replaced atomically.
///
/// Put it where only you can write, such as your user's cache directory
/// (`$XDG_CACHE_HOME/<app>` or `~/.cache/<app>` on Linux, `~/Library/Caches/<app>` on macOS),
/// not under `temp_dir()`, which every user can write to. The store refuses what another user
/// could have planted, and the layer then logs in without it and warns once: a file or lock
/// reached through a symbolic link (neither is followed), a file not owned by this user or that
/// others may read or write, anything but a regular file or one larger than 16 KiB (never read
/// whole), and a directory others may write to unless it has the sticky bit (as `/tmp` has).
/// Its file work runs on Tokio's blocking threads, so the store's budget bounds it.
///
/// The account's API [budget](crate::budget) is a file beside its entry (`.budget`): the times
/// of the last window's units on the wall clock the host's processes share, read and rewritten
/// under an OS lock on that file. It holds up to about 2,000 units; a larger budget is kept by
/// each process alone.
///
/// Upgrading from a version that kept one entry in the file at `path` itself: that file is no
/// longer read (the first run after the upgrade logs in once), and may be deleted.
///
/// ```
/// use patchworks_auth::{store::FileStore, AuthLayer, Credentials};
///
/// # let home = std::env::temp_dir();
/// let path = home.join(".cache").join("my-cli").join("patchworks-token");
/// let layer = AuthLayer::new(Credentials::new("ops@example.com", "hunter2"))
///     .store(FileStore::new(path));
/// ```
#[derive(Clone, Debug)]
pub struct FileStore {
    path: Arc<PathBuf>,
    /// Locks this process holds, by owner, with when they lapse.
    held: Arc<Mutex<HashMap<String, (File, Instant)>>>,
}

impl FileStore {
    /// A store in files beside `path`. Does no I/O.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore {
            path: Arc::new(path.into()),
            held: Arc::default(),
        }
    }

    /// The file of `key`'s entry, and of its lock.
    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        let mut name = self.path.as_os_str().to_owned();
        name.push("-");
        name.push(super::seal::hex(&Sha256::digest(key.as_bytes())[..8]));
        let entry = PathBuf::from(&name);
        name.push(".lock");
        (entry, PathBuf::from(name))
    }
}

impl TokenStore for FileStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        let ((path, _), key) = (self.paths(key), key.to_owned());
        Box::pin(async move { blocking(move || read(&path, &key)).await })
    }

    fn save<'a>(&'a self, key: &'a str, entry: &'a [u8], ttl: Duration) -> StoreFuture<'a, ()> {
        let ((path, _), key, entry) = (self.paths(key), key.to_owned(), entry.to_owned());
        Box::pin(async move { blocking(move || write(&path, &key, &entry, ttl)).await })
    }

    fn lock<'a>(&'a self, key: &'a str, owner: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        let ((_, lock_path), owner, held) = (self.paths(key), owner.to_owned(), self.held.clone());
        Box::pin(blocking(move || {
            let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
            // A lock whose login task vanished (its runtime shut down) lapses with its lifetime.
            let now = Instant::now();
            held.retain(|_, (_, until)| *until > now);
            let file = open_private(&lock_path, true)?;
            match file.try_lock() {
                Ok(()) => {
                    held.insert(owner, (file, now + ttl));
                    Ok(true)
                }
                Err(TryLockError::WouldBlock) => Ok(false),
                Err(TryLockError::Error(error)) => Err(error),
            }
        }))
    }

    fn take_budget<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
        window: Duration,
        _name: &'a str,
    ) -> StoreFuture<'a, Option<Duration>> {
        let path = budget_path(&self.paths(key).0);
        Box::pin(blocking(move || {
            let window = crate::budget::log::micros(window);
            update_budget(&path, |now, log| {
                log.take(now, limit, window)
                    .err()
                    .map(|at| Duration::from_micros(at.saturating_sub(now)))
            })
        }))
    }

    fn pause_budget<'a>(&'a self, key: &'a str, pause: Duration) -> StoreFuture<'a, ()> {
        let path = budget_path(&self.paths(key).0);
        Box::pin(blocking(move || {
            let pause = crate::budget::log::micros(pause);
            update_budget(&path, |now, log| log.pause(now.saturating_add(pause)))
        }))
    }

    fn unlock<'a>(&'a self, _key: &'a str, owner: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // Closing the file lets go of the lock.
            let held = self
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(owner);
            drop(held);
            Ok(())
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, tower::BoxError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

fn budget_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".budget");
    PathBuf::from(name)
}

/// Runs `f` on a budget's log (now, and the log, in microseconds since the Unix epoch) under
/// an exclusive OS lock on its file, and writes the log back.
fn update_budget<T>(path: &Path, f: impl FnOnce(u64, &mut Log) -> T) -> io::Result<T> {
    let file = open_private(path, true)?;
    file.lock()?;
    let mut bytes = Vec::new();
    (&file).take(MAX_FILE).read_to_end(&mut bytes)?;
    // A file that does not parse (new, or cut short by a crash) is an empty budget.
    let mut words = bytes
        .strip_prefix(BUDGET_MAGIC)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|word| u64::from_be_bytes(word.try_into().unwrap_or_default()));
    let mut log = Log {
        paused_until: words.next().filter(|until| *until != 0),
        sent: words.collect(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(io::Error::other)?;
    let outcome = f(crate::budget::log::micros(now), &mut log);
    let mut out = Vec::with_capacity(12 + 8 * log.sent.len());
    out.extend_from_slice(BUDGET_MAGIC);
    out.extend_from_slice(&log.paused_until.unwrap_or(0).to_be_bytes());
    for at in &log.sent {
        out.extend_from_slice(&at.to_be_bytes());
    }
    // In place, under the lock (a rename would leave the lock on the old file).
    file.set_len(0)?;
    (&file).seek(io::SeekFrom::Start(0))?;
    (&file).write_all(&out)?;
    Ok(outcome)
}

fn read(path: &Path, key: &str) -> io::Result<Option<Vec<u8>>> {
    let file = match open_private(path, false) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE).read_to_end(&mut bytes)?;
    Ok(parse(&bytes, key).map(<[u8]>::to_vec))
}

/// The entry in a file's bytes, if they hold one for `key` that has not expired.
fn parse<'a>(bytes: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let (stored_key, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
    let (expires_at, entry) = rest.split_first_chunk::<8>()?;
    let expires_at = UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(*expires_at));
    (stored_key == key.as_bytes() && SystemTime::now() < expires_at).then_some(entry)
}

fn write(path: &Path, key: &str, entry: &[u8], ttl: Duration) -> io::Result<()> {
    let key_len = u16::try_from(key.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "key too long"))?;
    let expires_at = (SystemTime::now() + ttl)
        .duration_since(UNIX_EPOCH)
        .map_err(io::Error::other)?;
    let expires_ms = u64::try_from(expires_at.as_millis()).unwrap_or(u64::MAX);
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(
        ".{}.tmp",
        super::seal::hex(&super::seal::random::<8>())
    ));
    let temp = PathBuf::from(temp);
    let written = (|| {
        // Checks the directory, and makes a new file: `create_new` never follows a link.
        let mut file = open_private(&temp, true)?;
        file.write_all(MAGIC)?;
        file.write_all(&key_len.to_be_bytes())?;
        file.write_all(key.as_bytes())?;
        file.write_all(&expires_ms.to_be_bytes())?;
        file.write_all(entry)?;
        file.sync_all()?;
        // Replaces whatever is at `path`, a planted link included, without following it.
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Opens a file of the store, creating it (and its directory) if `create`, readable and
/// writable by its owner only; refuses what another user may have planted (see [`FileStore`]).
/// The checks are made on the open file, not on its path, so the file cannot be swapped between
/// the check and the use.
fn open_private(path: &Path, create: bool) -> io::Result<File> {
    let refuse = |why: String| {
        let message = format!("the token store refuses {}: {why}", path.display());
        io::Error::new(io::ErrorKind::PermissionDenied, message)
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        if create && !dir.is_dir() {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir)?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir)?.permissions().mode();
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(refuse(format!(
                    "its directory may be written by others (mode {:o}) and has no sticky \
                     bit; keep the token in a directory of your own, such as your cache \
                     directory",
                    mode & 0o7777
                )));
            }
        }
    }
    let mut options = OpenOptions::new();
    options.read(true).write(create).create(create);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    let file = options.open(path).map_err(|error| {
        #[cfg(unix)] // `O_NOFOLLOW` met a link
        if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            return refuse("it is a symbolic link".to_owned());
        }
        error
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file".to_owned()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode() & 0o777;
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(refuse("it belongs to another user".to_owned()));
        }
        if mode & 0o077 != 0 {
            return Err(refuse(format!(
                "it may be read or written by others (mode {mode:o}); make it 0600 (chmod \
                 600) or delete it"
            )));
        }
    }
    if meta.len() > MAX_FILE {
        return Err(refuse(format!("it is larger than {MAX_FILE} bytes")));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "patchworks-auth-{name}-{}",
            super::super::seal::hex(&super::super::seal::random::<6>())
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn saves_loads_and_expires_entries_for_their_key_only() {
        let dir = temp_dir("file");
        let store = FileStore::new(dir.join("sub").join("token"));
        assert_eq!(store.load("k1").await.unwrap(), None);
        store
            .save("k1", b"sealed", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            store.load("k1").await.unwrap().as_deref(),
            Some(&b"sealed"[..])
        );
        assert_eq!(
            store.load("k2").await.unwrap(),
            None,
            "another account's key"
        );
        store.save("k1", b"gone", Duration::ZERO).await.unwrap();
        assert_eq!(store.load("k1").await.unwrap(), None, "expired");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&store.paths("k1").0), 0o600);
            assert_eq!(mode(&dir.join("sub")), 0o700);
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("shared");
        let store = FileStore::new(dir.join("token"));
        store
            .save("k", b"sealed", Duration::from_secs(60))
            .await
            .unwrap();
        let path = store.paths("k").0;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = store.load("k").await.unwrap_err().to_string();
        assert!(
            error.contains("mode 644") && error.contains("chmod 600"),
            "{error}"
        );
        // A save replaces it with a private file, without reading it.
        store
            .save("k", b"x", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(store.load("k").await.unwrap().as_deref(), Some(&b"x"[..]));
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_lock_has_one_holder_and_lapses() {
        let dir = temp_dir("lock");
        let (a, b) = (
            FileStore::new(dir.join("token")),
            FileStore::new(dir.join("token")),
        );
        let ttl = Duration::from_secs(60);
        assert!(a.lock("k", "a", ttl).await.unwrap());
        assert!(!b.lock("k", "b", ttl).await.unwrap(), "held by a");
        b.unlock("k", "b").await.unwrap(); // not the holder: nothing happens
        assert!(!b.lock("k", "b", ttl).await.unwrap());
        a.unlock("k", "a").await.unwrap();
        assert!(b.lock("k", "b", ttl).await.unwrap());
        // A holder whose login vanished lets go once the lock's lifetime has passed.
        b.unlock("k", "b").await.unwrap();
        assert!(a.lock("k", "a", Duration::ZERO).await.unwrap());
        assert!(
            a.lock("k", "a2", ttl).await.unwrap(),
            "lapsed lock taken over"
        );
        assert!(!b.lock("k", "b", ttl).await.unwrap());
        fs::remove_dir_all(dir).unwrap();
    }
}
