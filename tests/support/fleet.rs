//! A fleet of real OS processes sharing one token store, and a real `redis-server`: shared by
//! `tests/fleet.rs` and `examples/fleet.rs` (which includes this file), so that the test and
//! the example run the same members.
//!
//! A member is the running executable itself, started again with [`MEMBER_VAR`] set to its
//! [`Spec`]: it builds a hyper-util client with the layer and the store, sends `GET`s to the
//! fake Patchworks, and prints what happened on stdout, one `fleet:` line each.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use patchworks_auth::{
    budget::Budget,
    store::{FileStore, RedisStore},
    test_util::{EMAIL, PASSWORD},
    AuthLayer, Credentials,
};
use serde::{Deserialize, Serialize};
use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};
use tower::{Layer, ServiceExt};

/// The environment variable that makes the executable a fleet member.
pub const MEMBER_VAR: &str = "PATCHWORKS_FLEET_MEMBER";

/// What a member does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub login_url: String,
    pub api_url: String,
    /// `file:<path>` or `redis:<url>`.
    pub store: String,
    /// Requests to send, then exit; `None`: send until stdin closes.
    pub requests: Option<u64>,
    /// Between two requests.
    pub interval_ms: u64,
    pub login_timeout_ms: u64,
    /// An API budget: `(limit, per in ms)`.
    #[serde(default)]
    pub budget: Option<(u32, u64)>,
}

/// What a member reports when it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub requests: u64,
    pub failures: u64,
    pub logins: u64,
    pub outages: u64,
}

/// Runs this process as a member if [`MEMBER_VAR`] says so; `false` if it does not.
pub fn run_member_if_asked() -> bool {
    let Ok(spec) = std::env::var(MEMBER_VAR) else {
        return false;
    };
    let spec: Spec = serde_json::from_str(&spec).expect("a member spec");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(member(spec));
    true
}

async fn member(spec: Spec) {
    let layer = AuthLayer::new(Credentials::new(EMAIL, PASSWORD))
        .login_url(spec.login_url.parse().unwrap())
        .login_timeout(Duration::from_millis(spec.login_timeout_ms));
    let layer = match spec.budget {
        Some((limit, per_ms)) => layer.budget(Budget::new(limit, Duration::from_millis(per_ms))),
        None => layer,
    };
    let layer = match spec.store.split_once(':') {
        Some(("file", path)) => layer.store(FileStore::new(path)),
        Some(("redis", url)) => layer.store(RedisStore::new(url).unwrap()),
        _ => panic!("unknown store {}", spec.store),
    };
    let client = layer.layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    // In the open-ended mode, stdin closing is the signal to stop.
    let stop = Arc::new(AtomicBool::new(false));
    if spec.requests.is_none() {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut report = Report::default();
    let mut ready = false;
    while spec.requests.is_none_or(|n| report.requests < n) && !stop.load(Ordering::Relaxed) {
        let request = http::Request::get(&spec.api_url)
            .body(Full::default())
            .unwrap();
        report.requests += 1;
        match client.clone().oneshot(request).await {
            Ok(response) if response.status() == http::StatusCode::OK => {
                if !ready {
                    ready = true;
                    say("ready");
                }
            }
            Ok(response) => {
                report.failures += 1;
                say(&format!("failed status={}", response.status()));
            }
            Err(error) => {
                report.failures += 1;
                say(&format!("failed error={error}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(spec.interval_ms)).await;
    }
    let state = client.state();
    say(&format!(
        "report requests={} failures={} logins={} outages={}",
        report.requests, report.failures, state.logins, state.store_outages
    ));
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "fleet: {line}");
    let _ = stdout.flush();
}

/// A running member, killed if dropped unfinished.
pub struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Member {
    /// Starts the executable at `exe` (with `args`) as a member doing `spec`.
    pub fn spawn(exe: &Path, args: &[&str], spec: &Spec) -> Member {
        let mut child = Command::new(exe)
            .args(args)
            .env(MEMBER_VAR, serde_json::to_string(spec).unwrap())
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a fleet member");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(line) = line.strip_prefix("fleet: ") {
                    let _ = tx.send(line.to_owned());
                }
            }
        });
        Member {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// Waits (at most `within`) for the member's first successful request.
    pub fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == "ready" => return,
                Ok(line) if line.starts_with("report") => panic!("member ended early: {line}"),
                Ok(_) => {}
                Err(_) => panic!("member not ready within {within:?}"),
            }
        }
    }

    /// Closes stdin (the stop signal) and waits (at most `within`) for the member's report.
    pub fn finish(mut self, within: Duration) -> Report {
        drop(self.stdin.take());
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(report) = parse_report(&line) {
                        let _ = self.child.wait();
                        return report;
                    }
                }
                Err(_) => panic!("no report from a member within {within:?}"),
            }
        }
    }

    /// Kills the member with SIGKILL.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_report(line: &str) -> Option<Report> {
    let rest = line.strip_prefix("report ")?;
    let mut report = Report::default();
    for field in rest.split(' ') {
        let (name, value) = field.split_once('=')?;
        let value = value.parse().ok()?;
        match name {
            "requests" => report.requests = value,
            "failures" => report.failures = value,
            "logins" => report.logins = value,
            "outages" => report.outages = value,
            _ => {}
        }
    }
    Some(report)
}

/// Members' reports summed.
pub fn total(reports: &[Report]) -> Report {
    reports.iter().fold(Report::default(), |sum, r| Report {
        requests: sum.requests + r.requests,
        failures: sum.failures + r.failures,
        logins: sum.logins + r.logins,
        outages: sum.outages + r.outages,
    })
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "patchworks-fleet-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real `redis-server` on a Unix socket in a temporary directory, persistence off; stopped
/// when dropped.
pub struct Redis {
    dir: TempDir,
    child: Option<Child>,
}

impl Redis {
    /// Starts one, or `None` if `redis-server` is not installed (outside CI only: in CI it must
    /// be, and a missing one fails).
    pub fn start() -> Option<Redis> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed; .ci/run installs it (apt-get install redis-server)"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let mut redis = Redis {
            dir: TempDir::new("redis"),
            child: None,
        };
        redis.start_again();
        Some(redis)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.0.join("redis.sock")
    }

    /// The URL the members connect with.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Stops the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Freezes the server (SIGSTOP: it keeps its connections and answers nothing, as a
    /// server swapping or paused by its host would) until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running redis-server");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    /// Starts the server (again), empty, and waits until it answers.
    pub fn start_again(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Empties the server, as an operator's `FLUSHALL` does.
    pub fn flushall(&self) {
        let mut stream = std::os::unix::net::UnixStream::connect(self.socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        command(&mut stream, &[b"FLUSHALL"]);
    }

    /// Every key and value in the server, as bytes.
    pub fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut stream = std::os::unix::net::UnixStream::connect(self.socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let keys = match command(&mut stream, &[b"KEYS", b"*"]) {
            Resp::Array(keys) => keys,
            other => panic!("KEYS answered {other:?}"),
        };
        keys.into_iter()
            .filter_map(|key| match key {
                Resp::Bulk(Some(key)) => match command(&mut stream, &[b"GET", &key]) {
                    Resp::Bulk(Some(value)) => Some((key, value)),
                    _ => Some((key, Vec::new())),
                },
                _ => None,
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The part of RESP the dump needs (a test reads the server's raw bytes, not through the store
/// under test).
#[derive(Debug)]
enum Resp {
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
    Other(String),
}

fn command(stream: &mut std::os::unix::net::UnixStream, args: &[&[u8]]) -> Resp {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    stream.write_all(&out).unwrap();
    let mut reader = BufReader::new(stream);
    read_resp(&mut reader)
}

fn read_resp(reader: &mut impl BufRead) -> Resp {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "$" => {
            let len: i64 = rest.parse().unwrap();
            if len < 0 {
                return Resp::Bulk(None);
            }
            let mut value = vec![0; len as usize + 2];
            reader.read_exact(&mut value).unwrap();
            value.truncate(len as usize);
            Resp::Bulk(Some(value))
        }
        "*" => {
            let len: i64 = rest.parse().unwrap();
            Resp::Array((0..len.max(0)).map(|_| read_resp(reader)).collect())
        }
        _ => Resp::Other(line.to_owned()),
    }
}

/// Whether `haystack` holds `needle` anywhere.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// Sleeps in real time until `condition` holds, looking every 10 ms; fails the test after
/// `within`: a deadline on an event, for what happens in other processes.
pub async fn until_within(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "not {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
