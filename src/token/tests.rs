//! The core's decisions as tables of rows, read directly: which stored token a login may take
//! (`Core::takes`), and when a token the fleet shares is adopted outside a login
//! (`Core::adopt`).

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
