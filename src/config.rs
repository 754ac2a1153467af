//! What a layer was built with.

use crate::{
    budget::Budget,
    credentials::{api_key_header, Credentials, Form, Secret},
    error::Error,
    scope::{Redacted, Scope},
    store::TokenStore,
};
use http::Uri;
use std::{fmt, sync::Arc, time::Duration};

/// What the layer was built with, as the builder methods were given it. Judged once, when the
/// layer is built ([`Config::judge`]). Cloned only by the builder methods.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) credentials: Credentials,
    pub(crate) login_url: Uri,
    /// Whether the builder was given the login URL (OAuth 2 client credentials have no default).
    pub(crate) login_url_given: bool,
    /// Origins trusted with the token besides the login URL's and Patchworks hosts.
    pub(crate) trusted: Vec<Uri>,
    pub(crate) refresh_before: Duration,
    pub(crate) login_timeout: Duration,
    pub(crate) replay_body_limit: usize,
    /// Where the fleet shares its token, if anywhere.
    pub(crate) store: Option<Arc<dyn TokenStore>>,
    /// The key sealing the token in the store; derived from the credentials if `None`.
    pub(crate) store_key: Option<[u8; 32]>,
    /// What the store may take of one login.
    pub(crate) store_timeout: Duration,
    /// The API budget, as the builder chose it.
    pub(crate) budget: BudgetChoice,
}

/// The API budget as the builder chose it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BudgetChoice {
    /// Not chosen: none, or the ready client's default.
    Unset,
    /// None ([`AuthLayer::no_budget`](crate::AuthLayer::no_budget)).
    Off,
    On(Budget),
}

impl Config {
    /// The one configuration rule: which requests get the token, or what is wrong with the
    /// first input that is (credentials, login URL, trusted origins, timeouts, budget). Every
    /// call of a layer so built fails with that error, unsent, and it is logged at ERROR once
    /// where the layer is put to use ([`Cache::tell_config`](crate::cache::Cache::tell_config)).
    pub(crate) fn judge(&self) -> Result<Scope, Error> {
        match &self.credentials.secret {
            Secret::ApiKey(key) if api_key_header(key).is_none() => {
                return Err(crate::credentials::invalid_api_key());
            }
            Secret::Login {
                account,
                password,
                form,
                ..
            } => {
                if account.trim().is_empty() || password.is_empty() {
                    return Err(Error::config(format!(
                        "the {} or the {} given to Credentials is empty",
                        form.field(),
                        match form {
                            Form::Client { .. } => "client secret",
                            Form::Email | Form::Username => "password",
                        }
                    )));
                }
                if matches!(form, Form::Client { .. }) && !self.login_url_given {
                    return Err(Error::config(
                        "OAuth 2 client credentials need their token endpoint: set \
                         AuthLayer::login_url to it",
                    ));
                }
            }
            Secret::ApiKey(_) => {}
        }
        if self.login_timeout.is_zero() {
            return Err(Error::config(
                "the login timeout is zero, so every login would time out; give \
                 AuthLayer::login_timeout a few seconds at least",
            ));
        }
        if self.store.is_some() && self.store_timeout.is_zero() {
            return Err(Error::config(
                "the store timeout is zero, so the store could never answer in time; give \
                 AuthLayer::store_timeout a few hundred milliseconds, or use no store",
            ));
        }
        if let BudgetChoice::On(budget) = &self.budget {
            budget.check()?;
        }
        Scope::new(&self.login_url, &self.trusted)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("credentials", &self.credentials)
            .field("login_url", &Redacted(&self.login_url))
            .field(
                "trusted",
                &self.trusted.iter().map(Redacted).collect::<Vec<_>>(),
            )
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
