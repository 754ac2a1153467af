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
    /// A PEM file of the certificate authority a `rediss://` store is trusted by.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How far ahead of the host's the member's wall clock is, in seconds (libfaketime): a
    /// host whose clock is off.
    #[serde(default)]
    pub clock_offset_s: i64,
}

impl Spec {
    /// A member logging in at `login_url` and sending `GET api_url` through `store`:
    /// `requests` of them (`None`: until stdin closes), every 50 ms, with a 2 s login timeout,
    /// no budget, no CA to trust, and the host's clock.
    pub fn new(login_url: String, api_url: String, store: String, requests: Option<u64>) -> Spec {
        Spec {
            login_url,
            api_url,
            store,
            requests,
            interval_ms: 50,
            login_timeout_ms: 2_000,
            budget: None,
            ca: None,
            clock_offset_s: 0,
        }
    }

    /// [`Spec::new`] against `fake`'s login and its `/api/v1/flows`.
    pub fn against(
        fake: &patchworks_auth::test_util::FakePatchworks,
        store: String,
        requests: Option<u64>,
    ) -> Spec {
        let (login, api) = (fake.login_url(), fake.uri("/api/v1/flows"));
        Spec::new(login.to_string(), api.to_string(), store, requests)
    }
}

/// What a member reports when it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub requests: u64,
    pub failures: u64,
    pub logins: u64,
    pub outages: u64,
    /// How long the member's token had to live when it reported, in ms (0 without one).
    pub expires_in_ms: u64,
}

/// Runs this process as a member if [`MEMBER_VAR`] says so; `false` if it does not.
pub fn run_member_if_asked() -> bool {
    run_member(None)
}

/// Makes a `RedisStore` trust a certificate authority's PEM: `RedisStore::root_certificates`,
/// which only a build with the `redis-tls` feature has (the example's may not).
pub type Trust = fn(RedisStore, &[u8]) -> RedisStore;

/// [`run_member_if_asked`], for a member whose store may need to trust [`Spec::ca`].
pub fn run_member_trusting(trust: Trust) -> bool {
    run_member(Some(trust))
}

fn run_member(trust: Option<Trust>) -> bool {
    let Ok(spec) = std::env::var(MEMBER_VAR) else {
        return false;
    };
    let spec: Spec = serde_json::from_str(&spec).expect("a member spec");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(member(spec, trust));
    true
}

async fn member(spec: Spec, trust: Option<Trust>) {
    let layer = AuthLayer::new(Credentials::new(EMAIL, PASSWORD))
        .login_url(spec.login_url.parse().unwrap())
        .login_timeout(Duration::from_millis(spec.login_timeout_ms));
    let layer = match spec.budget {
        Some((limit, per_ms)) => layer.budget(Budget::new(limit, Duration::from_millis(per_ms))),
        None => layer,
    };
    let layer = match spec.store.split_once(':') {
        Some(("file", path)) => layer.store(FileStore::new(path)),
        Some(("redis", url)) => layer.store(trusting(RedisStore::new(url).unwrap(), &spec, trust)),
        Some(("redis-cluster", urls)) => {
            let urls: Vec<&str> = urls.split(',').collect();
            layer.store(trusting(RedisStore::cluster(&urls).unwrap(), &spec, trust))
        }
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
    let expires_in = state.expires_at.map_or(Duration::ZERO, |at| {
        at.saturating_duration_since(Instant::now())
    });
    say(&format!(
        "report requests={} failures={} logins={} outages={} expires_in_ms={}",
        report.requests,
        report.failures,
        state.logins,
        state.store_outages,
        expires_in.as_millis()
    ));
}

/// `store`, trusting the spec's certificate authority if it has one.
fn trusting(store: RedisStore, spec: &Spec, trust: Option<Trust>) -> RedisStore {
    match (&spec.ca, trust) {
        (Some(ca), Some(trust)) => trust(store, &std::fs::read(ca).unwrap()),
        (Some(_), None) => panic!("a member with a CA to trust is run with run_member_trusting"),
        (None, _) => store,
    }
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
        let mut command = Command::new(exe);
        if spec.clock_offset_s != 0 {
            command
                .env("LD_PRELOAD", FAKETIME)
                .env("FAKETIME", format!("{:+}", spec.clock_offset_s))
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        let mut child = command
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
            "expires_in_ms" => report.expires_in_ms = value,
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
        expires_in_ms: sum.expires_in_ms.max(r.expires_in_ms),
    })
}

/// The share of the budget used: the time `n` requests (logins included: they take units too)
/// would take at best under `limit` a window of `per` (the first `limit` at once, then `limit`
/// more each window), over the time from the first the fake saw to the last.
pub fn share(
    fake: &patchworks_auth::test_util::FakePatchworks,
    limit: usize,
    per: Duration,
) -> f64 {
    let seen = fake.seen();
    let first = seen.iter().map(|s| s.received_at).min().unwrap();
    let last = seen.iter().map(|s| s.received_at).max().unwrap();
    let best = per * ((seen.len() - 1) / limit) as u32;
    best.as_secs_f64() / last.duration_since(first).as_secs_f64()
}

/// One scenario at a time in a test binary: each has the machine's two cores to itself.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
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

    /// How long until each unit of every account's budget ages out, by the server's clock.
    pub fn units_age_out_in(&self) -> Vec<Duration> {
        let mut stream = std::os::unix::net::UnixStream::connect(self.socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let bulk = |resp: &Resp| match resp {
            Resp::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            other => panic!("expected a bulk string, got {other:?}"),
        };
        let now = match command(&mut stream, &[b"TIME"]) {
            Resp::Array(time) => {
                let (s, us): (u64, u64) = (
                    bulk(&time[0]).parse().unwrap(),
                    bulk(&time[1]).parse().unwrap(),
                );
                s * 1_000_000 + us
            }
            other => panic!("TIME answered {other:?}"),
        };
        let Resp::Array(keys) = command(&mut stream, &[b"KEYS", b"*:units"]) else {
            panic!("KEYS failed")
        };
        let mut left = Vec::new();
        for key in keys.iter().map(bulk) {
            let Resp::Array(scored) = command(
                &mut stream,
                &[b"ZRANGE", key.as_bytes(), b"0", b"-1", b"WITHSCORES"],
            ) else {
                panic!("ZRANGE failed")
            };
            for pair in scored.chunks(2) {
                let score: f64 = bulk(&pair[1]).parse().unwrap();
                left.push(Duration::from_micros((score as u64).saturating_sub(now)));
            }
        }
        left
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

/// libfaketime, which `.ci/run` installs (Debian's `faketime`): a member's wall clock off by
/// [`Spec::clock_offset_s`], its monotonic clock untouched.
pub const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn installed(program: &str) -> bool {
    let installed = Command::new(program)
        .arg(if program == "openssl" {
            "version"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: {program} is not installed");
    }
    installed
}

/// A free port on loopback (and its cluster bus port, 10000 above it, when `bus`).
fn free_port(bus: bool) -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    loop {
        let port = fastrand::u16(20_000..50_000);
        if free(port) && (!bus || free(port + 10_000)) {
            return port;
        }
    }
}

/// `redis-cli` with `args`: its output, or `None` if it failed.
fn cli(args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Waits (in real time, at most `within`) until `condition` holds, for what other processes do.
fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "not {what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn redis_server(dir: &Path, port: u16, args: &[&str]) -> Child {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

/// A certificate authority of the test's own and a server certificate for `127.0.0.1` it
/// signed, made with `openssl` in `dir` (`ca.pem`, `cert.pem`, `key.pem`): a TLS Redis's. The
/// arguments that make a `redis-server` speak TLS with them on `port`.
fn tls(dir: &Path, port: u16) -> Vec<String> {
    if !dir.join("cert.pem").exists() {
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "openssl {args:?}");
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let ec: Vec<&str> = ec.split(' ').collect();
        let ca = "-keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca";
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &ca.split(' ').collect::<Vec<_>>(),
            ]
            .concat(),
        );
        let csr = "-keyout key.pem -out server.csr -subj /CN=127.0.0.1";
        openssl(&[&["req"][..], &ec, &csr.split(' ').collect::<Vec<_>>()].concat());
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        let sign = "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                    -out cert.pem -days 1 -extfile san.ext";
        openssl(&sign.split_whitespace().collect::<Vec<_>>());
    }
    let file = |name: &str| dir.join(name).display().to_string();
    let args = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &file("cert.pem"),
        "--tls-key-file",
        &file("key.pem"),
        "--tls-ca-cert-file",
        &file("ca.pem"),
        "--tls-auth-clients",
        "no",
        "--tls-cluster",
        "yes",
        "--tls-replication",
        "yes",
    ];
    args.iter().map(|arg| arg.to_string()).collect()
}

/// A real Redis Cluster on loopback: three masters, each with a replica when asked, made with
/// `redis-cli --cluster create`, over plain TCP or TLS only; every node stopped when dropped.
pub struct RedisCluster {
    dir: TempDir,
    nodes: Vec<(u16, Option<Child>)>,
    tls: bool,
}

impl RedisCluster {
    /// Starts one and waits until it serves every slot, or `None` if `redis-server` (or, for
    /// `tls`, `openssl`) is not installed (outside CI only).
    pub fn start(replicas: bool, tls: bool) -> Option<RedisCluster> {
        if !installed("redis-server") || (tls && !installed("openssl")) {
            return None;
        }
        let dir = TempDir::new("cluster");
        let nodes: Vec<(u16, Option<Child>)> = (0..if replicas { 6 } else { 3 })
            .map(|_| {
                let port = free_port(true);
                let conf = format!("nodes-{port}.conf");
                let mut args: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "1000",
                    "--repl-diskless-sync-delay",
                    "0",
                ]
                .iter()
                .map(|arg| arg.to_string())
                .collect();
                let port_arg = if tls {
                    args.extend(self::tls(&dir.0, port));
                    0
                } else {
                    port
                };
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                (port, Some(redis_server(&dir.0, port_arg, &args)))
            })
            .collect();
        let cluster = RedisCluster { dir, nodes, tls };
        for (port, _) in &cluster.nodes {
            let port = port.to_string();
            wait_for("a node answering", Duration::from_secs(10), || {
                cluster
                    .cli(&["-p", &port, "ping"])
                    .is_some_and(|out| out.contains("PONG"))
            });
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend([
            "--cluster-replicas",
            if replicas { "1" } else { "0" },
            "--cluster-yes",
        ]);
        cluster.cli(&args).expect("redis-cli --cluster create");
        cluster.wait_until_ok();
        Some(cluster)
    }

    /// `redis-cli` with `args`, over TLS for a TLS cluster.
    fn cli(&self, args: &[&str]) -> Option<String> {
        if !self.tls {
            return cli(args);
        }
        let ca = self.ca().display().to_string();
        cli(&[&["--tls", "--cacert", &ca][..], args].concat())
    }

    /// The PEM of the certificate authority a TLS cluster's certificates are signed by.
    pub fn ca(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    /// The seed URLs, comma-separated: every node's.
    pub fn urls(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|(port, _)| format!("{scheme}://127.0.0.1:{port}/"))
            .collect();
        urls.join(",")
    }

    /// Waits until every running node says the cluster is up, each slot served by a master,
    /// and every running replica is in sync with its master (so that it can take over).
    pub fn wait_until_ok(&self) {
        for (port, child) in &self.nodes {
            if child.is_some() {
                let port = port.to_string();
                wait_for("the cluster up", Duration::from_secs(30), || {
                    let ok = self
                        .cli(&["-p", &port, "cluster", "info"])
                        .is_some_and(|info| info.contains("cluster_state:ok"));
                    let synced =
                        self.cli(&["-p", &port, "info", "replication"])
                            .is_some_and(|info| {
                                info.contains("role:master")
                                    || info.contains("master_link_status:up")
                            });
                    ok && synced
                });
            }
        }
    }

    /// Whether the node on `port` is a master holding the account's keys.
    fn holds(&self, port: u16) -> bool {
        let port = port.to_string();
        let role = self.cli(&["-p", &port, "role"]).unwrap_or_default();
        let keys = self.cli(&["-p", &port, "--scan", "--pattern", "patchworks-auth:*"]);
        role.starts_with("master") && keys.is_some_and(|keys| !keys.trim().is_empty())
    }

    /// Kills (SIGKILL) the master that holds the account's keys; its port.
    pub fn kill_the_accounts_master(&mut self) -> u16 {
        let port = self
            .the_accounts_master()
            .expect("a master holding the account's keys");
        let (_, child) = self.nodes.iter_mut().find(|(p, _)| *p == port).unwrap();
        let mut child = child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        port
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let (_, child) = self.nodes.iter().find(|(p, _)| *p == port).unwrap();
        let id = child.as_ref().expect("a running node").id().to_string();
        let status = Command::new("kill").args([signal, &id]).status().unwrap();
        assert!(status.success(), "kill {signal}");
    }

    /// The units of the account's budget that the node on `port` holds (its `:units` set's
    /// members, by `ZRANGE`): they change when a member takes one there.
    pub fn units_on(&self, port: u16) -> String {
        let port = port.to_string();
        let pattern = [
            "-p",
            &port,
            "--scan",
            "--pattern",
            "patchworks-auth:*:units",
        ];
        let keys = self.cli(&pattern).unwrap_or_default();
        match keys.lines().next() {
            Some(key) => self
                .cli(&["-p", &port, "zrange", key, "0", "-1"])
                .unwrap_or_default(),
            None => String::new(),
        }
    }

    /// The master of the account's keys now, by the cluster's own account of it.
    pub fn the_accounts_master(&self) -> Option<u16> {
        self.nodes
            .iter()
            .filter(|(_, child)| child.is_some())
            .map(|(port, _)| *port)
            .find(|port| self.holds(*port))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A real `redis-server` that speaks only TLS, on loopback, with a certificate from a
/// certificate authority of its own (made with `openssl`); stopped when dropped.
pub struct RedisTls {
    dir: TempDir,
    port: u16,
    child: Child,
}

impl RedisTls {
    /// Starts one, or `None` if `redis-server` or `openssl` is not installed (outside CI only).
    pub fn start() -> Option<RedisTls> {
        if !installed("redis-server") || !installed("openssl") {
            return None;
        }
        let dir = TempDir::new("tls");
        let port = free_port(false);
        let args = tls(&dir.0, port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = redis_server(&dir.0, 0, &args);
        wait_for("redis-server on TLS", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(RedisTls { dir, port, child })
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// The PEM of the certificate authority that signed the server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
