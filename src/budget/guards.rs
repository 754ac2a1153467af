//! The guards a unit and a waiter are held by: what goes back when they are dropped.

use super::*;

/// A unit taken for a request about to be sent, and when it was dated (at the latest), so
/// that its answer times the margin ([`Gate::answered_after`]); none without a budget.
///
/// Dropped before [`sending`](Self::sending), whatever the request was doing (waiting for its
/// turn, its body being read, the service below not ready yet, the caller gone), the unit goes
/// back: the request was never handed to the service below. Every send holds one: a request
/// on the warm path, a cold or budgeted one, a replay, a check and a login.
#[must_use]
pub(crate) struct Spent {
    unit: Option<(Arc<Gate>, Unit)>,
    sent: bool,
}

impl Spent {
    pub(super) fn new(gate: Arc<Gate>, unit: Unit) -> Spent {
        Spent {
            unit: Some((gate, unit)),
            sent: false,
        }
    }

    /// No unit: there is no budget.
    pub(crate) fn none() -> Spent {
        Spent {
            unit: None,
            sent: false,
        }
    }

    /// The request is handed to the service below, ready: from now on it may reach
    /// Patchworks, and its unit is spent.
    #[inline]
    pub(crate) fn sending(&mut self) {
        self.sent = true;
    }

    /// The request's answer (any answer, or an error after it was sent) came.
    #[inline]
    pub(crate) fn answered(&mut self) {
        self.sent = true;
        if let Some((gate, unit)) = self.unit.take() {
            gate.answered_after(unit);
        }
    }
}

impl Drop for Spent {
    #[inline]
    fn drop(&mut self) {
        if let (false, Some((gate, unit))) = (self.sent, self.unit.take()) {
            gate.give_back(unit);
        }
    }
}

/// Counts a waiter for as long as it waits (served, refused or dropped): the budget's queue,
/// and the requests waiting on a login (the driver's).
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(crate) fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A login waiting for its unit, counted while it waits (served, or dropped as its login
/// ends): the requests queued for the budget let it go first.
pub(super) struct LoginFirst<'a>(&'a Gate);

impl<'a> LoginFirst<'a> {
    pub(super) fn new(gate: &'a Gate) -> Self {
        gate.lock().login_waits();
        LoginFirst(gate)
    }
}

impl Drop for LoginFirst<'_> {
    fn drop(&mut self) {
        self.0.lock().login_served();
        self.0.login_served.notify_waiters();
    }
}
