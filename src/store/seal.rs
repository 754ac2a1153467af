//! Sealing a stored token: entry keys, the sealing key, and the entry's bytes.
//!
//! Entry bytes: `version (1) | salt (16) | nonce (24) | XChaCha20-Poly1305 ciphertext`, with
//! the version and the entry key as associated data, so that an entry copied under another
//! key does not open. The plaintext is `obtained_at (u64 ms since the epoch) | lifetime (u64 ms)
//! | replaces (16) | the Authorization header value`, where `replaces` is the [`fingerprint`] of
//! the token a 401 refused before this one was obtained (zeros for none).

use crate::credentials::Form;
use argon2::Argon2;
use chacha20poly1305::{
    aead::{Aead, Generate, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use http::HeaderValue;
use sha2::{Digest, Sha256};
use std::{
    borrow::Cow,
    fmt,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const VERSION: u8 = 2;
const SALT: usize = 16;
const NONCE: usize = 24;

/// A token as it is stored.
pub(crate) struct Entry {
    pub(crate) header: HeaderValue,
    pub(crate) obtained_at: SystemTime,
    pub(crate) lifetime: Duration,
    /// The fingerprint of the token this one replaced after a 401, if any.
    pub(crate) replaces: Option<[u8; 16]>,
}

/// What names a token in a stored entry without showing it: its first 16 bytes of SHA-256.
pub(crate) fn fingerprint(header: &HeaderValue) -> [u8; 16] {
    let hash = Sha256::digest(header.as_bytes());
    let mut print = [0; 16];
    print.copy_from_slice(&hash[..16]);
    print
}

/// `n` random bytes from the operating system.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    <[u8; N]>::generate()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The account as the server compares it, for its entry key, its budget and its sealing key.
///
/// An email is trimmed and lowercased: Patchworks finds an account by its email without
/// regard to case (as mail servers read an address's domain, and as most sign-ins do), so two
/// spellings are one account, one token and one budget. A username and an OAuth 2 client id
/// are kept byte for byte: a token endpoint compares a client id exactly (RFC 6749 §2.2 makes
/// it a string the server issues), and folding two of them would give one client's token and
/// budget to another. Not folding where a server would costs at most a login of its own.
pub(crate) fn identity(form: Form, account: &str) -> Cow<'_, str> {
    match form {
        Form::Email => Cow::Owned(account.trim().to_lowercase()),
        Form::Username | Form::Client { .. } => Cow::Borrowed(account),
    }
}

/// The store key of an account's entry: versioned, and hashed so that it shows neither the
/// account nor the login origin.
///
/// An email's key is `v1`, as it has always been. A username's and a client's are `v2`: `v1`
/// folded them as an email's, so an entry stored under a `v1` key of theirs is never read (one
/// login at the upgrade, never another client's token).
pub(crate) fn entry_key(origin: &str, form: Form, account: &str, scope: Option<&str>) -> String {
    let version = match form {
        Form::Email => "v1",
        Form::Username | Form::Client { .. } => "v2",
    };
    let mut hash = Sha256::new();
    hash.update(format!("patchworks-auth/{version}\0"));
    hash.update(origin.to_ascii_lowercase().as_bytes());
    hash.update(b"\0");
    // A username is kept apart from an email spelled the same, and an OAuth client (with its
    // scope) from both.
    match form {
        Form::Email => {}
        Form::Username => hash.update(b"username\0"),
        Form::Client { .. } => {
            hash.update(b"client_credentials\0");
            hash.update(scope.unwrap_or_default().as_bytes());
            hash.update(b"\0");
        }
    }
    hash.update(identity(form, account).as_bytes());
    format!("patchworks-auth:{version}:{}", hex(&hash.finalize()))
}

/// The store key an API key's budget is shared under: its hash (an API key is never stored, and
/// one key may serve several accounts' processes no better than its hash tells them apart).
pub(crate) fn api_key_budget_key(key: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"patchworks-auth/v1\0api-key\0");
    hash.update(key.as_bytes());
    format!("patchworks-auth:v1:key:{}", hex(&hash.finalize()))
}

/// Seals and opens entries with a key derived from the credentials (or given).
pub(crate) struct Sealer {
    material: Material,
    /// The last salt used and the key derived with it: a fleet shares one entry, so each
    /// process derives once.
    derived: Mutex<Option<([u8; SALT], [u8; 32])>>,
}

enum Material {
    /// `email \0 password`, for Argon2id.
    Credentials(Vec<u8>),
    /// A key the user gave.
    Key([u8; 32]),
}

impl Sealer {
    /// A sealer for `account` (its [`identity`]) and `password`, or for `key`.
    pub(crate) fn new(account: &str, password: &str, key: Option<[u8; 32]>) -> Sealer {
        let material = match key {
            Some(key) => Material::Key(key),
            None => {
                Material::Credentials([account.as_bytes(), b"\0", password.as_bytes()].concat())
            }
        };
        Sealer {
            material,
            derived: Mutex::new(None),
        }
    }

    /// The sealing key for `salt` (a new salt if `None`), derived off the async runtime.
    async fn key(&self, salt: Option<[u8; SALT]>) -> Option<([u8; SALT], [u8; 32])> {
        let cached = *self
            .derived
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((cached_salt, key)) = cached {
            if salt.is_none_or(|salt| salt == cached_salt) {
                return Some((cached_salt, key));
            }
        }
        let salt = salt.unwrap_or_else(random);
        let key = match &self.material {
            Material::Key(key) => *key,
            Material::Credentials(material) => {
                let material = material.clone();
                // Argon2id with its default cost (19 MiB, 2 passes): about 50 ms of CPU
                // optimized (0.9 s unoptimized: see the module docs), once per process and salt.
                tokio::task::spawn_blocking(move || {
                    let mut key = [0; 32];
                    Argon2::default()
                        .hash_password_into(&material, &salt, &mut key)
                        .ok()
                        .map(|()| key)
                })
                .await
                .ok()??
            }
        };
        *self
            .derived
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((salt, key));
        Some((salt, key))
    }

    pub(crate) async fn seal(&self, entry_key: &str, entry: &Entry) -> Option<Vec<u8>> {
        let (salt, key) = self.key(None).await?;
        let nonce: [u8; NONCE] = random();
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let obtained_at = entry.obtained_at.duration_since(UNIX_EPOCH).ok()?;
        let mut plain = Vec::with_capacity(32 + entry.header.len());
        plain.extend_from_slice(&millis(obtained_at).to_be_bytes());
        plain.extend_from_slice(&millis(entry.lifetime).to_be_bytes());
        plain.extend_from_slice(&entry.replaces.unwrap_or_default());
        plain.extend_from_slice(entry.header.as_bytes());
        let aad = [&[VERSION], entry_key.as_bytes()].concat();
        let sealed = XChaCha20Poly1305::new(&key.into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .ok()?;
        Some([&[VERSION][..], &salt, &nonce, &sealed].concat())
    }

    /// The entry, if `bytes` is one sealed under `entry_key` with this sealer's key.
    pub(crate) async fn open(&self, entry_key: &str, bytes: &[u8]) -> Option<Entry> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() < SALT + NONCE {
            return None;
        }
        let (salt, rest) = rest.split_at(SALT);
        let (nonce, sealed) = rest.split_at(NONCE);
        let (_, key) = self.key(Some(salt.try_into().ok()?)).await?;
        let aad = [&[VERSION], entry_key.as_bytes()].concat();
        let plain = XChaCha20Poly1305::new(&key.into())
            .decrypt(
                &XNonce::from(<[u8; NONCE]>::try_from(nonce).ok()?),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .ok()?;
        let (numbers, header) = plain.split_at_checked(32)?;
        let obtained_ms = u64::from_be_bytes(numbers[..8].try_into().ok()?);
        let lifetime_ms = u64::from_be_bytes(numbers[8..16].try_into().ok()?);
        let replaces = <[u8; 16]>::try_from(&numbers[16..]).ok()?;
        let mut header = HeaderValue::from_bytes(header).ok()?;
        header.set_sensitive(true);
        Some(Entry {
            header,
            obtained_at: UNIX_EPOCH.checked_add(Duration::from_millis(obtained_ms))?,
            lifetime: Duration::from_millis(lifetime_ms),
            replaces: (replaces != [0; 16]).then_some(replaces),
        })
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut header = HeaderValue::from_static("Bearer eyJhbGciOi.secret-token");
        header.set_sensitive(true);
        Entry {
            header,
            obtained_at: UNIX_EPOCH + Duration::from_millis(1_790_000_000_123),
            lifetime: Duration::from_secs(86_400),
            replaces: Some([7; 16]),
        }
    }

    #[tokio::test]
    async fn an_entry_opens_with_the_same_credentials_only() {
        let key = entry_key(
            "https://svc-fabric.pwks.co",
            Form::Email,
            "ops@example.com",
            None,
        );
        let sealed = Sealer::new("ops@example.com", "hunter2", None)
            .seal(&key, &entry())
            .await
            .unwrap();
        for needle in [
            &b"secret-token"[..],
            b"hunter2",
            b"ops@example.com",
            b"example",
        ] {
            assert!(
                !sealed.windows(needle.len()).any(|window| window == needle),
                "{needle:?} in the clear"
            );
        }

        // Another process with the same credentials (its own sealer) opens it.
        let opened = Sealer::new(&identity(Form::Email, " OPS@example.com"), "hunter2", None)
            .open(&key, &sealed)
            .await
            .unwrap();
        assert_eq!(opened.header, entry().header);
        assert!(opened.header.is_sensitive());
        assert_eq!(opened.obtained_at, entry().obtained_at);
        assert_eq!(opened.lifetime, entry().lifetime);

        // A rotated password, another key, a flipped byte, another version: a miss.
        let rotated = Sealer::new("ops@example.com", "hunter3", None);
        assert!(rotated.open(&key, &sealed).await.is_none());
        let other_key = entry_key(
            "https://svc-fabric.pwks.co",
            Form::Email,
            "billing@example.com",
            None,
        );
        let sealer = Sealer::new("ops@example.com", "hunter2", None);
        assert!(sealer.open(&other_key, &sealed).await.is_none());
        for at in [0, 5, SALT + 3, 1 + SALT + NONCE + 2, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[at] ^= 0x40;
            assert!(sealer.open(&key, &tampered).await.is_none(), "byte {at}");
        }
        assert!(sealer.open(&key, &sealed[..20]).await.is_none());
        assert!(sealer.open(&key, b"").await.is_none());
    }

    #[tokio::test]
    async fn a_given_key_seals_without_the_credentials() {
        let key = entry_key(
            "https://svc-fabric.pwks.co",
            Form::Email,
            "ops@example.com",
            None,
        );
        let sealed = Sealer::new("ops@example.com", "hunter2", Some([7; 32]))
            .seal(&key, &entry())
            .await
            .unwrap();
        let same_key = Sealer::new("ops@example.com", "rotated", Some([7; 32]));
        assert!(same_key.open(&key, &sealed).await.is_some());
        let derived = Sealer::new("ops@example.com", "hunter2", None);
        assert!(derived.open(&key, &sealed).await.is_none());
    }

    #[test]
    fn entry_keys_are_versioned_hashes_of_origin_and_email() {
        let key = entry_key(
            "https://svc-fabric.pwks.co",
            Form::Email,
            "ops@example.com",
            None,
        );
        assert!(key.starts_with("patchworks-auth:v1:"));
        assert_eq!(key.len(), "patchworks-auth:v1:".len() + 64);
        assert!(!key.contains("example"));
        assert_eq!(
            key,
            entry_key(
                "HTTPS://svc-fabric.pwks.co",
                Form::Email,
                " Ops@Example.com",
                None
            )
        );
        assert_ne!(
            key,
            entry_key(
                "https://staging.pwks.co",
                Form::Email,
                "ops@example.com",
                None
            )
        );
        assert_ne!(
            key,
            entry_key(
                "https://svc-fabric.pwks.co",
                Form::Email,
                "dev@example.com",
                None
            )
        );
        let username = entry_key(
            "https://svc-fabric.pwks.co",
            Form::Username,
            "ops@example.com",
            None,
        );
        assert_ne!(
            key, username,
            "a username spelled as an email has an entry of its own"
        );
        let client = |scope| {
            let form = Form::Client {
                basic: true,
                get: false,
            };
            entry_key("https://svc-fabric.pwks.co", form, "ops@example.com", scope)
        };
        assert_ne!(client(None), key, "an OAuth client apart from an email");
        assert_ne!(client(None), username, "and from a username");
        assert_ne!(client(None), client(Some("flows")), "each scope apart");

        // A client id and a username are compared byte for byte, as a server compares them, in
        // a key of their own version (`v1` folded them).
        let form = Form::Client {
            basic: true,
            get: false,
        };
        let origin = "https://svc-fabric.pwks.co";
        let exact = entry_key(origin, form, "Acme-Inbound-7f3K", None);
        assert!(exact.starts_with("patchworks-auth:v2:"));
        assert_ne!(exact, entry_key(origin, form, "acme-inbound-7f3k", None));
        assert_ne!(exact, entry_key(origin, form, " Acme-Inbound-7f3K", None));
        assert_ne!(
            entry_key(origin, Form::Username, "Ops", None),
            entry_key(origin, Form::Username, "ops", None)
        );
        assert_eq!(identity(form, "Acme-Inbound-7f3K"), "Acme-Inbound-7f3K");
        assert_eq!(identity(Form::Email, " Ops@Example.com"), "ops@example.com");
    }
}
