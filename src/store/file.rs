//! A token store in a file, locked with an OS file lock.

use super::{StoreFuture, TokenStore};
use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

const MAGIC: &[u8; 4] = b"pwa1";

/// A [`TokenStore`] in a file on a local disk: for CLIs, cron jobs and processes sharing a host.
///
/// The file is created (with its directory) on the first save, readable and writable by its
/// owner only (`0600`, directory `0700`), and replaced atomically. A file that others can read
/// or write is refused: the layer then logs in without the store, and warns.
///
/// The lock is an OS file lock on a file beside it (`<path>.lock`): the OS lets go of it when
/// its holder exits or is killed, so a dead holder never delays the others.
///
/// ```
/// use patchworks_auth::{store::FileStore, AuthLayer, Credentials};
///
/// let path = std::env::temp_dir().join("my-cli").join("patchworks-token");
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
    /// A store in the file at `path`. Does no I/O.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore {
            path: Arc::new(path.into()),
            held: Arc::default(),
        }
    }

    fn lock_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }
}

impl TokenStore for FileStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        let (path, key) = (self.path.clone(), key.to_owned());
        Box::pin(async move { blocking(move || read(&path, &key)).await })
    }

    fn save<'a>(&'a self, key: &'a str, entry: &'a [u8], ttl: Duration) -> StoreFuture<'a, ()> {
        let (path, key, entry) = (self.path.clone(), key.to_owned(), entry.to_owned());
        Box::pin(async move { blocking(move || write(&path, &key, &entry, ttl)).await })
    }

    fn lock<'a>(&'a self, _key: &'a str, owner: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            // A lock whose login task vanished (its runtime shut down) lapses with its lifetime.
            let now = Instant::now();
            held.retain(|_, (_, until)| *until > now);
            if let Some(parent) = self.path.parent() {
                create_private_dir(parent)?;
            }
            let file = private_options()
                .read(true)
                .write(true)
                .truncate(false)
                .open(self.lock_path())?;
            match file.try_lock() {
                Ok(()) => {
                    held.insert(owner.to_owned(), (file, now + ttl));
                    Ok(true)
                }
                Err(TryLockError::WouldBlock) => Ok(false),
                Err(TryLockError::Error(error)) => Err(error.into()),
            }
        })
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

fn read(path: &Path, key: &str) -> io::Result<Option<Vec<u8>>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    refuse_if_shared(path)?;
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
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    if path.exists() {
        refuse_if_shared(path)?;
    }
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(
        ".{}.tmp",
        super::seal::hex(&super::seal::random::<8>())
    ));
    let temp = PathBuf::from(temp);
    let written = (|| {
        let mut file = private_options().write(true).create_new(true).open(&temp)?;
        file.write_all(MAGIC)?;
        file.write_all(&key_len.to_be_bytes())?;
        file.write_all(key.as_bytes())?;
        file.write_all(&expires_ms.to_be_bytes())?;
        file.write_all(entry)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Options that create a file readable and writable by its owner only.
fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Refuses a file that users other than its owner may read or write.
fn refuse_if_shared(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the token file {} may be read or written by others (mode {mode:o}); make it \
                     0600 (chmod 600) or delete it",
                    path.display()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
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
            assert_eq!(mode(&dir.join("sub").join("token")), 0o600);
            assert_eq!(mode(&dir.join("sub")), 0o700);
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("shared");
        let path = dir.join("token");
        let store = FileStore::new(&path);
        store
            .save("k", b"sealed", Duration::from_secs(60))
            .await
            .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = store.load("k").await.unwrap_err().to_string();
        assert!(
            error.contains("mode 644") && error.contains("chmod 600"),
            "{error}"
        );
        assert!(store
            .save("k", b"x", Duration::from_secs(60))
            .await
            .is_err());
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
