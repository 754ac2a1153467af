//! The file store against what another user could plant, two accounts on one path, and a store
//! that stalls: every request is answered, nothing planted is followed or read whole, and a
//! store adds at most its budget to a cold request.

mod support;

use http::StatusCode;
use patchworks_auth::{
    store::{FileStore, StoreFuture, TokenStore},
    test_util::FakePatchworks,
    AuthLayer,
};
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use support::*;
use tower::Layer;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "patchworks-store-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The files beside `path` whose names end with `suffix` (the account's entry or lock).
fn beside(path: &Path, suffix: &str) -> Vec<PathBuf> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            let file = p.file_name().unwrap().to_string_lossy();
            file.starts_with(&format!("{name}-")) && file.ends_with(suffix)
        })
        .collect()
}

fn stored(
    fake: &FakePatchworks,
    path: &Path,
) -> patchworks_auth::Auth<patchworks_auth::test_util::HttpClient> {
    layer(fake).store(FileStore::new(path)).layer(fake.client())
}

#[tokio::test]
async fn two_accounts_on_one_path_log_in_once_each_and_never_wait_on_each_other() {
    let dir = temp_dir("accounts");
    let path = dir.join("token");
    let (a, b) = (
        FakePatchworks::start().await.unwrap(),
        FakePatchworks::start().await.unwrap(),
    );
    // A's login hangs while B logs in: B must not wait behind A's lock.
    let a = Arc::new(a);
    a.hold_logins();
    let (client_a, fake_a) = (stored(&a, &path), a.clone());
    let waiting_a = tokio::spawn(async move { status(&client_a, &fake_a, "/api/v1/flows").await });
    // A takes its account's lock before it logs in.
    until_real("A's login reaches its fake", || a.logins() == 1).await;
    let client_b = stored(&b, &path);
    // Had B waited on A's lock, it would have waited out the lock's lifetime (the login
    // timeout, 30 s): 10 s is far from it, and far from B's own time on a busy machine.
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        status(&client_b, &b, "/api/v1/flows"),
    )
    .await;
    assert_eq!(answered.expect("B waited on A's login"), StatusCode::OK);
    assert!(!waiting_a.is_finished(), "A is still logging in");
    a.release_logins();
    assert_eq!(waiting_a.await.unwrap(), StatusCode::OK);
    assert_eq!((a.logins(), b.logins()), (1, 1));

    // Each account's token is kept apart: new processes of each take their own, no login.
    let (c, d) = (
        FakePatchworks::start().await.unwrap(),
        FakePatchworks::start().await.unwrap(),
    );
    let path = dir.join("pair");
    for round in 0..2 {
        for fake in [&c, &d] {
            expect_status(&stored(fake, &path), fake, "/api/v1/flows", StatusCode::OK).await;
            assert_eq!(fake.logins(), 1, "round {round}");
        }
    }
    assert_eq!(
        beside(&path, "")
            .iter()
            .filter(|p| !p.to_string_lossy().ends_with(".lock"))
            .count(),
        2
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs one cold request through a new layer on `path`: it succeeds, and the store counted one
/// outage (the warning is said once).
async fn a_cold_request_succeeds_without_the_store(fake: &FakePatchworks, path: &Path) {
    let client = stored(fake, path);
    expect_status(&client, fake, "/api/v1/flows", StatusCode::OK).await;
    expect_status(&client, fake, "/api/v1/flows", StatusCode::OK).await;
    assert_eq!(client.state().store_outages, 1);
}

#[cfg(unix)]
#[tokio::test]
async fn planted_links_and_a_shared_directory_are_refused_and_fail_no_request() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = temp_dir("planted");
    let path = dir.join("token");
    let fake = FakePatchworks::start().await.unwrap();
    expect_status(
        &stored(&fake, &path),
        &fake,
        "/api/v1/flows",
        StatusCode::OK,
    )
    .await;
    let (entry, lock) = (
        beside(&path, "")
            .into_iter()
            .find(|p| !p.to_string_lossy().ends_with(".lock"))
            .unwrap(),
        beside(&path, ".lock").remove(0),
    );

    // The entry, a link to /dev/zero: not followed, not read (a read would never end).
    std::fs::remove_file(&entry).unwrap();
    symlink("/dev/zero", &entry).unwrap();
    a_cold_request_succeeds_without_the_store(&fake, &path).await;

    // The lock, a link elsewhere: nothing is created through it.
    std::fs::remove_file(&entry).unwrap();
    std::fs::remove_file(&lock).unwrap();
    let target = dir.join("elsewhere").join("created-through-a-link");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    symlink(&target, &lock).unwrap();
    a_cold_request_succeeds_without_the_store(&fake, &path).await;
    assert!(
        !target.exists(),
        "a file was created through the planted link"
    );

    // A directory every user may write to, without the sticky bit.
    let open = dir.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    a_cold_request_succeeds_without_the_store(&fake, &open.join("token")).await;
    assert_eq!(
        std::fs::read_dir(&open).unwrap().count(),
        0,
        "nothing written there"
    );
    // With the sticky bit (as /tmp), files of our own are used.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let client = stored(&fake, &open.join("token"));
    expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    assert_eq!(client.state().store_outages, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A store that answers every operation after 250 ms, counting them.
#[derive(Clone, Debug, Default)]
struct Slow {
    operations: Arc<AtomicUsize>,
}

impl Slow {
    fn answer<T: Send + 'static>(&self, value: T) -> StoreFuture<'_, T> {
        self.operations.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            Ok(value)
        })
    }
}

impl TokenStore for Slow {
    fn load<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.answer(None)
    }
    fn save<'a>(&'a self, _: &'a str, _: &'a [u8], _: Duration) -> StoreFuture<'a, ()> {
        self.answer(())
    }
    fn lock<'a>(&'a self, _: &'a str, _: &'a str, _: Duration) -> StoreFuture<'a, bool> {
        self.answer(true)
    }
    fn unlock<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, ()> {
        self.answer(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_answering_each_operation_in_250_ms_adds_at_most_its_budget() {
    let fake = FakePatchworks::start().await.unwrap();
    let slow = Slow::default();
    let client = AuthLayer::new(fake.credentials())
        .login_url(fake.login_url())
        .store(slow.clone())
        .layer(fake.client());
    // The load takes 250 ms of the 300; the lock gets the 50 left, and the login goes on
    // without the store: no read again, no save, no unlock.
    expect_status(&client, &fake, "/api/v1/flows", StatusCode::OK).await;
    assert_eq!(
        slow.operations.load(Ordering::SeqCst),
        2,
        "a load and a lock"
    );
    assert_eq!(client.state().store_outages, 1);
    assert_eq!(fake.logins(), 1);
}
