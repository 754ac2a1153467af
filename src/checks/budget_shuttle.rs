//! A model check of the budget's gate with shuttle: a login and requests waiting for the one
//! unit of a full window, woken as units go back. shuttle runs them in many random orders,
//! switching at every take of the rules' lock (which `cfg(shuttle)` makes shuttle's). In every
//! order:
//! - every waiter gets its unit (a waiter left hanging is a deadlock, which shuttle reports):
//!   no wake-up is lost between the rules' decision and the wait, whether the waiter waits for
//!   a unit to go back or for the login it stands behind;
//! - never more units in use than the budget's limit.
//!
//! The gate's timers are tokio's, which shuttle does not run: the window here is longer than
//! any run, so only a unit given back frees one, and a wait that depended on a timer would hang.

use crate::budget::{Budget, Gate, Purpose};
use shuttle::{
    future::block_on,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
};
use std::{sync::Arc, time::Duration};

/// Takes a unit for `purpose`, holds it (counted in `in_use`), and gives it back unsent.
fn take_and_give_back(gate: &Arc<Gate>, purpose: Purpose, in_use: &AtomicUsize) {
    let unit = block_on(gate.take(purpose)).expect("a unit within max_wait");
    let held = in_use.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(held <= 1, "{held} units in use under a budget of 1");
    thread::yield_now();
    in_use.fetch_sub(1, Ordering::SeqCst);
    drop(unit); // never sent: it goes back, and wakes the next
}

#[test]
fn a_login_and_requests_waiting_for_a_full_window_are_each_served() {
    shuttle::check_random(
        || {
            // The gate's timers need a runtime to be made in; it is never driven.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let _context = runtime.enter();
            let budget =
                Budget::new(1, Duration::from_secs(3_600)).max_wait(Duration::from_secs(3_600));
            let gate = Arc::new(Gate::new(budget, None));
            let in_use = Arc::new(AtomicUsize::new(1));
            let held = block_on(gate.take(Purpose::Request)).unwrap();
            let waiters: Vec<_> = [Purpose::Login, Purpose::Request, Purpose::Request]
                .into_iter()
                .map(|purpose| {
                    let (gate, in_use) = (gate.clone(), in_use.clone());
                    thread::spawn(move || take_and_give_back(&gate, purpose, &in_use))
                })
                .collect();
            thread::yield_now();
            in_use.fetch_sub(1, Ordering::SeqCst);
            drop(held);
            for waiter in waiters {
                waiter.join().unwrap();
            }
            assert_eq!(gate.state().queued, 0);
        },
        2_000,
    );
}
