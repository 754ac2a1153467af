//! The account the layer logs in with.

use crate::error::Error;
use std::fmt;

/// What the layer authenticates with: an account's email and password, or an API key.
///
/// `Debug` shows the email and hides the password and the API key:
///
/// ```
/// use patchworks_auth::Credentials;
///
/// let creds = Credentials::new("ops@example.com", "hunter2");
/// assert_eq!(
///     format!("{creds:?}"),
///     r#"Credentials { email: "ops@example.com", password: "<redacted>" }"#
/// );
/// let key = Credentials::api_key("pk_live_4f9a");
/// assert_eq!(format!("{key:?}"), r#"Credentials { api_key: "<redacted>" }"#);
/// ```
#[derive(Clone)]
pub struct Credentials {
    pub(crate) secret: Secret,
}

#[derive(Clone)]
pub(crate) enum Secret {
    /// Logged in with at the login endpoint, for a bearer token: an email or a username, as
    /// `form` says, and whether they came from the environment.
    Login {
        account: String,
        password: String,
        form: Form,
        from_env: bool,
    },
    /// Sent as it is in `Authorization`: no login, no expiry.
    ApiKey(String),
}

/// Which login form the account is sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// `{"email", "password"}` to the Core API's login.
    Email,
    /// `{"username", "password"}` to the Fabric login.
    Username,
}

impl Form {
    /// The field the account goes in.
    pub(crate) fn field(self) -> &'static str {
        match self {
            Form::Email => "email",
            Form::Username => "username",
        }
    }
}

impl Credentials {
    /// The environment variable [`from_env`](Self::from_env) reads the email from.
    pub const EMAIL_VAR: &'static str = "PATCHWORKS_EMAIL";
    /// The environment variable [`from_env`](Self::from_env) reads the password from.
    pub const PASSWORD_VAR: &'static str = "PATCHWORKS_PASSWORD";

    /// Credentials for the account with this email and password: the layer logs in with them
    /// and sends the bearer token it gets.
    pub fn new(email: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials::login(email.into(), password.into(), Form::Email, false)
    }

    /// Credentials for the account with this username and password, for Patchworks' other
    /// documented login: `POST https://app.wearepatchworks.com/fabric/api/login` with
    /// `{"username", "password"}`, which [`AuthLayer::new`](crate::AuthLayer::new) then uses
    /// (its answer is the same). Redacted, scoped and stored like an email's; its store entry
    /// is apart from an email spelled the same.
    ///
    /// ```
    /// use patchworks_auth::Credentials;
    ///
    /// let creds = Credentials::username("ops", "hunter2");
    /// assert_eq!(
    ///     format!("{creds:?}"),
    ///     r#"Credentials { username: "ops", password: "<redacted>" }"#
    /// );
    /// ```
    pub fn username(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials::login(username.into(), password.into(), Form::Username, false)
    }

    fn login(account: String, password: String, form: Form, from_env: bool) -> Self {
        let secret = Secret::Login {
            account,
            password,
            form,
            from_env,
        };
        Credentials { secret }
    }

    /// A Patchworks API key: the layer sends it as it is, `Authorization: <key>` (no `Bearer`),
    /// to the same origins it would send a token to. There is no login and nothing expires; a
    /// 401 is returned as it is.
    ///
    /// A key that is not a valid header value (control characters, CR/LF) makes every request
    /// fail with an [`Error`] for which [`is_config`](Error::is_config) is `true`.
    pub fn api_key(key: impl Into<String>) -> Self {
        Credentials {
            secret: Secret::ApiKey(key.into()),
        }
    }

    /// Reads the credentials from `PATCHWORKS_EMAIL` and `PATCHWORKS_PASSWORD`.
    ///
    /// # Errors
    ///
    /// An [`Error`] for which [`is_config`](Error::is_config) is `true`, naming the variable
    /// that is unset, empty or not Unicode. The value of a variable is never part of it.
    ///
    /// ```no_run
    /// use patchworks_auth::{AuthLayer, Credentials};
    ///
    /// # fn main() -> Result<(), patchworks_auth::Error> {
    /// let layer = AuthLayer::new(Credentials::from_env()?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_env() -> Result<Self, Error> {
        let (email, password) = (env_var(Self::EMAIL_VAR)?, env_var(Self::PASSWORD_VAR)?);
        Ok(Credentials::login(email, password, Form::Email, true))
    }

    /// The account's email; `None` for a username or an API key.
    pub fn email(&self) -> Option<&str> {
        match &self.secret {
            Secret::Login {
                account,
                form: Form::Email,
                ..
            } => Some(account),
            _ => None,
        }
    }
}

fn env_var(name: &str) -> Result<String, Error> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        Ok(_) => Err(Error::config(format!(
            "the environment variable {name} is empty; set it to your Patchworks login"
        ))),
        Err(std::env::VarError::NotPresent) => Err(Error::config(format!(
            "the environment variable {name} is not set; set it to your Patchworks login"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::config(format!(
            "the environment variable {name} is not valid Unicode"
        ))),
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Credentials");
        match &self.secret {
            Secret::Login { account, form, .. } => d
                .field(form.field(), account)
                .field("password", &"<redacted>"),
            Secret::ApiKey(_) => d.field("api_key", &"<redacted>"),
        };
        d.finish()
    }
}

/// An API key as a sensitive header value, if it is one.
pub(crate) fn api_key_header(key: &str) -> Option<http::HeaderValue> {
    let mut value = http::HeaderValue::from_str(key)
        .ok()
        .filter(|_| !key.trim().is_empty())?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_env_names_the_missing_variable() {
        // One test touches the environment, so tests running in parallel cannot race on it.
        std::env::remove_var(Credentials::EMAIL_VAR);
        std::env::remove_var(Credentials::PASSWORD_VAR);
        let err = Credentials::from_env().unwrap_err();
        assert!(err.is_config());
        assert!(err.to_string().contains("PATCHWORKS_EMAIL"), "{err}");

        std::env::set_var(Credentials::EMAIL_VAR, "ops@example.com");
        std::env::set_var(Credentials::PASSWORD_VAR, "");
        let err = Credentials::from_env().unwrap_err();
        assert!(
            err.to_string().contains("PATCHWORKS_PASSWORD is empty"),
            "{err}"
        );

        std::env::set_var(Credentials::PASSWORD_VAR, "s3cret-value");
        let creds = Credentials::from_env().unwrap();
        assert_eq!(creds.email(), Some("ops@example.com"));
        assert!(!format!("{creds:?}").contains("s3cret-value"));
        std::env::remove_var(Credentials::EMAIL_VAR);
        std::env::remove_var(Credentials::PASSWORD_VAR);
    }
}
