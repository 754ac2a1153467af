//! What a layer was built with.

use crate::{
    budget::{Budget, Gate},
    credentials::Credentials,
    error::Error,
    scope::{Redacted, Scope},
    store::TokenStore,
};
use http::Uri;
use std::{fmt, sync::Arc, time::Duration};

/// What the layer was built with. Cloned only by the builder methods.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) credentials: Credentials,
    pub(crate) login_url: Uri,
    /// Which requests get the token; an error if the login URL is refused.
    pub(crate) scope: Result<Scope, Error>,
    pub(crate) refresh_before: Duration,
    pub(crate) login_timeout: Duration,
    pub(crate) replay_body_limit: usize,
    /// Where the fleet shares its token, if anywhere.
    pub(crate) store: Option<Arc<dyn TokenStore>>,
    /// The key sealing the token in the store; derived from the credentials if `None`.
    pub(crate) store_key: Option<[u8; 32]>,
    /// What the store may take of one login.
    pub(crate) store_timeout: Duration,
    /// The API budget: `None` until the builder says, `Some(None)` for none.
    pub(crate) budget: Option<Option<Budget>>,
    /// The budget as the layer keeps it, made by `Cache::new` (with the store's key).
    pub(crate) gate: Option<Arc<Gate>>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("credentials", &self.credentials)
            .field("login_url", &Redacted(&self.login_url))
            .field("refresh_before", &self.refresh_before)
            .field("login_timeout", &self.login_timeout)
            .field("replay_body_limit", &self.replay_body_limit)
            .field("store", &self.store)
            .field("store_key", &self.store_key.map(|_| "<redacted>"))
            .field("store_timeout", &self.store_timeout)
            .field("budget", &self.budget)
            .finish()
    }
}
