//! The core's decisions as tables of rows, read directly: which stored token a login may take
//! (`Core::takes`), when a token the fleet shares is adopted outside a login (`Core::adopt`),
//! the deadlines its driver's one timer asks for (`Core::poll_timeout`, `Core::timeout`), and
//! the waits of a login on another process's and of a resync (`Timings::store_poll`,
//! `resync_at`).

use super::*;

/// A token lives 100 s; renewal from 50 s (`refresh_before` is capped at half the lifetime),
/// sent until 95 s (a tenth of the life, at most 5 s, before its expiry).
const TIMINGS: Timings = Timings {
    refresh_before: Duration::from_secs(300),
    login_timeout: Duration::from_secs(30),
};

fn header(text: &'static str) -> HeaderValue {
    HeaderValue::from_static(text)
}

fn obtained(text: &'static str, obtained_at: Instant) -> Obtained {
    Obtained {
        header: header(text),
        obtained_at,
        lifetime: Duration::from_secs(100),
        shared: true,
        scope: None,
    }
}

fn start(reason: Reason, replaces: Option<&'static str>, refused_at: Option<Instant>) -> Start {
    Start {
        id: 1,
        reason,
        after: None,
        replaces: replaces.map(header),
        refused_at,
        taken_up: false,
    }
}

#[test]
fn which_stored_token_a_login_takes() {
    let t0 = Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let core = Core::new(TIMINGS, None, t0);
    // (what, the login, the stored token obtained at, saved as the successor, now, taken)
    let rows = [
        (
            "a first login takes a fresh token",
            start(Reason::FirstUse, None, None),
            0,
            false,
            10,
            true,
        ),
        (
            "not one past its sending time",
            start(Reason::FirstUse, None, None),
            0,
            false,
            95,
            false,
        ),
        (
            "up to it",
            start(Reason::Expired, None, None),
            0,
            false,
            94,
            true,
        ),
        (
            "a renewal: not one due for renewal itself",
            start(Reason::Renewal, None, None),
            0,
            false,
            50,
            false,
        ),
        (
            "a renewal: one not yet due",
            start(Reason::Renewal, None, None),
            0,
            false,
            49,
            true,
        ),
        (
            "not the token it replaces",
            start(Reason::Renewal, Some("Bearer stored"), None),
            0,
            false,
            10,
            false,
        ),
        (
            "after a 401: not one obtained before the 401",
            start(Reason::Unauthorized, Some("Bearer old"), Some(at(20))),
            10,
            false,
            30,
            false,
        ),
        (
            "after a 401: one obtained after it",
            start(Reason::Unauthorized, Some("Bearer old"), Some(at(20))),
            21,
            false,
            30,
            true,
        ),
        (
            "after a 401: one saved as the refused token's successor",
            start(Reason::Unauthorized, Some("Bearer old"), Some(at(20))),
            10,
            true,
            30,
            true,
        ),
        (
            "after a 401: a successor past its sending time is not",
            start(Reason::Unauthorized, Some("Bearer old"), Some(at(20))),
            10,
            true,
            105,
            false,
        ),
    ];
    for (what, start, obtained_at, successor, now, taken) in rows {
        let stored = obtained("Bearer stored", at(obtained_at));
        assert_eq!(
            core.takes(&start, &stored, successor, at(now)),
            taken,
            "{what}"
        );
    }
}

#[test]
fn when_a_shared_token_is_adopted() {
    let t0 = Instant::now();
    // (what, the core, the token offered, adopted)
    let fresh = || Core::new(TIMINGS, None, t0);
    let with = |text| {
        let mut core = fresh();
        core.adopt(obtained(text, t0))
            .expect("adopted by a core without a token");
        core
    };
    let running = || {
        let mut core = fresh();
        let Need::Start(_) = core.need(t0, None, 0) else {
            panic!("a login starts")
        };
        core
    };
    let key = || Core::new(TIMINGS, Some(header("pk_live_4f9a")), t0);
    let rows: [(&str, Core, &'static str, bool); 5] = [
        (
            "a core without a token adopts it",
            fresh(),
            "Bearer shared",
            true,
        ),
        (
            "another token replaces the current one",
            with("Bearer mine"),
            "Bearer shared",
            true,
        ),
        (
            "not the token it already has",
            with("Bearer shared"),
            "Bearer shared",
            false,
        ),
        (
            "not while a login is in flight: its outcome decides",
            running(),
            "Bearer shared",
            false,
        ),
        ("never over an API key", key(), "Bearer shared", false),
    ];
    for (what, mut core, text, adopted) in rows {
        let before = core.usable(t0);
        let outcome = core.adopt(obtained(text, t0));
        assert_eq!(outcome.is_some(), adopted, "{what}");
        if adopted {
            let (generation, renew_at, send_by) = outcome.unwrap();
            assert_ne!(Some(generation), before, "{what}: a new generation");
            assert_eq!(
                (renew_at, send_by),
                (t0 + Duration::from_secs(50), t0 + Duration::from_secs(95)),
                "{what}"
            );
            assert_eq!(core.usable(t0), Some(generation), "{what}: current");
        } else {
            assert_eq!(core.usable(t0), before, "{what}: unchanged");
        }
    }
}

/// The deadlines the driver's one timer asks for (`Core::poll_timeout`) over a token's life,
/// and what comes due at each (`Core::timeout`): its renewal window, a failed renewal's
/// back-off, its expiry; nothing for an API key.
#[test]
fn the_core_says_when_its_timer_next_runs_and_what_came_due() {
    let t0 = Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let mut core = Core::new(TIMINGS, None, t0);
    assert_eq!(core.poll_timeout(), None, "no token, nothing timed");
    let Need::Start(first) = core.need(t0, None, 0) else {
        panic!("a first login")
    };
    let Ended::Installed { generation, .. } =
        core.login_ended(first.id, t0, Ok(obtained("Bearer a", t0)))
    else {
        panic!("installed")
    };
    assert_eq!(core.poll_timeout(), Some(at(50)));
    assert_eq!(core.timeout(at(49)), None);
    assert_eq!(core.timeout(at(50)), Some(Due::Renewal(generation)));
    assert_eq!(core.timeout(at(50)), None, "told once");
    assert_eq!(core.poll_timeout(), Some(at(95)), "then its expiry");

    // The renewal fails: due again when its back-off ends.
    let Renew::Start(renewal) = core.renew(at(50), generation) else {
        panic!("a renewal")
    };
    let failure = Failure {
        error: Error::config("down"),
        retry_at: at(60),
        attempts: 1,
    };
    core.login_ended(renewal.id, at(51), Err(failure));
    assert_eq!(core.poll_timeout(), Some(at(60)));
    // A request that sees it due meanwhile is told to wait for the same end.
    assert!(matches!(core.renew(at(55), generation), Renew::Later(end) if end == at(60)));
    assert_eq!(core.poll_timeout(), Some(at(60)));
    assert_eq!(core.timeout(at(59)), None);
    assert_eq!(core.timeout(at(60)), Some(Due::Retry(generation)));
    assert_eq!(core.poll_timeout(), Some(at(95)));

    // Past its expiry, all at once: expired, and nothing more is timed.
    assert_eq!(core.timeout(at(120)), Some(Due::Expired(generation)));
    assert_eq!(core.timeout(at(120)), None);
    assert_eq!(core.poll_timeout(), None);

    let api_key = Core::new(TIMINGS, Some(header("key")), t0);
    assert_eq!(api_key.poll_timeout(), None, "an API key is never timed");
}

/// The check that settles a bare 401 has its deadline in the core: the login timeout after it
/// started, unless it answered first.
#[test]
fn a_checks_deadline_is_the_cores() {
    let t0 = Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let mut core = Core::new(TIMINGS, None, t0);
    core.check_started(7, at(10));
    assert_eq!(
        core.poll_timeout(),
        Some(at(40)),
        "the login timeout (30 s) after it"
    );
    assert_eq!(core.timeout(at(39)), None);
    assert_eq!(core.timeout(at(40)), Some(Due::Check(7)));
    assert_eq!(core.poll_timeout(), None, "told once");

    core.check_started(8, at(50));
    core.check_ended(7);
    assert_eq!(
        core.poll_timeout(),
        Some(at(80)),
        "another token's answer ends nothing"
    );
    core.check_ended(8);
    assert_eq!(core.poll_timeout(), None, "answered in time");
}

#[test]
fn at_most_one_check_a_second_per_token() {
    let t0 = Instant::now();
    let ms = |ms: u64| t0 + Duration::from_millis(ms);
    let mut core = Core::new(TIMINGS, None, t0);
    assert!(core.check_due(7, ms(0)), "none yet");
    core.check_started(7, ms(0));
    // (a bare 401 at, its token): whether it starts a check.
    let rows = [
        (ms(500), 7, false),   // the one in flight
        (ms(5_000), 7, false), // still in flight: however old, not a second one
        (ms(500), 8, true),    // another token's
    ];
    for (at, generation, due) in rows {
        assert_eq!(core.check_due(generation, at), due, "{at:?} {generation}");
    }
    let mut core = Core::new(TIMINGS, None, t0);
    core.check_started(7, ms(0));
    core.check_ended(7);
    assert!(
        !core.check_due(7, ms(999)),
        "answered, less than a second ago"
    );
    assert!(core.check_due(7, ms(1_000)), "a second after it started");
    // Timed out (it cannot tell): the next bare 401 a second on checks again.
    let mut core = Core::new(TIMINGS, None, t0);
    core.check_started(7, ms(0));
    assert_eq!(core.timeout(ms(30_000)), Some(Due::Check(7)));
    assert!(core.check_due(7, ms(30_000)));
}

#[test]
fn how_long_a_login_waits_for_another_process_and_a_resync_for_the_store() {
    let t0 = Instant::now();
    let timings = Timings {
        refresh_before: Duration::from_secs(300),
        login_timeout: Duration::from_secs(30),
    };
    let ms = Duration::from_millis;
    // (waited since, jitter): the next look in the store, or none (log in without the lock).
    let rows = [
        (ms(0), 0.0, Some(ms(100))),
        (ms(0), 0.999, Some(ms(149))),
        (Duration::from_secs(59), 0.5, Some(ms(125))),
        (Duration::from_secs(60), 0.0, None),
    ];
    for (waited, jitter, next) in rows {
        let now = t0 + waited;
        let poll = timings.store_poll(t0, now, jitter);
        let poll = poll.map(|at| at - now).map(|d| ms(d.as_millis() as u64));
        assert_eq!(poll, next, "{waited:?} {jitter}");
    }
    // (tries that failed, jitter): the next try.
    let rows = [
        (0, 0.0, ms(500)),
        (0, 0.5, ms(625)),
        (1, 0.0, ms(1000)),
        (5, 0.0, ms(16_000)),
        (6, 0.0, ms(30_000)),
        (40, 0.999, ms(44_985)),
    ];
    for (failed, jitter, next) in rows {
        assert_eq!(
            resync_at(t0, failed, jitter) - t0,
            next,
            "{failed} {jitter}"
        );
    }
}
