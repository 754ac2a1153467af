//! The account the layer logs in with.

use crate::error::Error;
use std::fmt;

/// What the layer authenticates with: an account's email (or username) and password, an OAuth 2
/// client's id and secret, or an API key.
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
        /// The OAuth 2 `scope` asked for ([`Form::Client`] only).
        scope: Option<String>,
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
    /// OAuth 2 client credentials (RFC 6749 §4.4): the client id and secret in HTTP Basic, or
    /// in the form's body when `basic` is `false`; asked for with a `GET` (the form in the
    /// query, the client in Basic) when `get`, as Patchworks' Inbound API documents.
    Client { basic: bool, get: bool },
}

impl Form {
    /// The field the account goes in.
    pub(crate) fn field(self) -> &'static str {
        match self {
            Form::Email => "email",
            Form::Username => "username",
            Form::Client { .. } => "client_id",
        }
    }

    /// The form's name in logs and metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Form::Email => "email",
            Form::Username => "username",
            Form::Client { .. } => "client_credentials",
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

    /// OAuth 2 client credentials (RFC 6749 §4.4): the layer asks the token endpoint given to
    /// [`AuthLayer::login_url`](crate::AuthLayer::login_url) for an access token, as the
    /// Patchworks Inbound API and any RFC 6749 server issue them, and sends it as a bearer token
    /// to that endpoint's origin. Everything else (single flight, renewal before expiry, a 401
    /// settled and replayed, stores, the API budget) is as for a login.
    ///
    /// The request is `POST` with `Content-Type: application/x-www-form-urlencoded`, the body
    /// `grant_type=client_credentials` (and `scope`, if [set](Self::scope)), and the client
    /// authenticated with HTTP Basic, id and secret each percent-encoded first (§2.3.1 says
    /// form-encoded, whose `+` for a space a percent decoder reads as a plus; `%20` reads as a
    /// space under both); for a
    /// server that wants them in the body, see
    /// [`client_secret_in_body`](Self::client_secret_in_body). The answer is §5.1's
    /// `{"access_token", "token_type": "Bearer", "expires_in"}`; an error answer (§5.2) with
    /// `invalid_client` or `unauthorized_client`, and any 401, is a rejected login
    /// ([`Error::is_rejected`]); the code is [`Error::oauth_error`]. Of a failed answer only
    /// §5.2's `error` and `error_description` are read, every form of the secret scrubbed. Without a `login_url`, every request fails with a
    /// configuration error: there is no default token endpoint.
    ///
    /// The secret is redacted wherever a password is:
    ///
    /// ```
    /// use patchworks_auth::Credentials;
    ///
    /// let creds = Credentials::client_credentials("inbound-client", "s3cret").scope("flows:run");
    /// assert_eq!(
    ///     format!("{creds:?}"),
    ///     r#"Credentials { client_id: "inbound-client", client_secret: "<redacted>", scope: "flows:run" }"#
    /// );
    /// ```
    pub fn client_credentials(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        let form = Form::Client {
            basic: true,
            get: false,
        };
        Credentials::login(client_id.into(), client_secret.into(), form, false)
    }

    /// The OAuth 2 `scope` to ask for, for [client credentials](Self::client_credentials)
    /// (space-separated, as RFC 6749 §3.3 has it). Ignored for the other forms. Tokens for
    /// different scopes are stored apart.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        if let Secret::Login {
            form: Form::Client { .. },
            scope: slot,
            ..
        } = &mut self.secret
        {
            *slot = Some(scope.into());
        }
        self
    }

    /// Sends the [client credentials](Self::client_credentials) in the request body
    /// (`client_id`, `client_secret`) instead of HTTP Basic, for a token endpoint that wants
    /// them there (RFC 6749 §2.3.1 allows it; Basic is the default). Ignored for the other
    /// forms.
    pub fn client_secret_in_body(mut self) -> Self {
        if let Secret::Login {
            form: Form::Client { basic, get },
            ..
        } = &mut self.secret
        {
            *basic = false;
            *get = false;
        }
        self
    }

    /// Asks for the token with a `GET`, as the Patchworks Inbound API documents it ("send a GET
    /// request to the Patchworks token endpoint, with your OAuth client credentials":
    /// [Implementing API requests](https://doc.wearepatchworks.com/product-documentation/patchworks-services/inbound-api/using-the-inbound-api-connector-with-patchworks-services/implementing-api-requests)),
    /// for [client credentials](Self::client_credentials); ignored for the other forms. The
    /// client id and secret go in HTTP Basic, never in the URL; `grant_type` and the
    /// [`scope`](Self::scope) go in the query. The default is RFC 6749 §3.2's `POST`, which
    /// any other OAuth 2 server expects. Turns [`client_secret_in_body`](Self::client_secret_in_body)
    /// off: a `GET` has no body.
    ///
    /// ```
    /// use patchworks_auth::Credentials;
    ///
    /// let creds = Credentials::client_credentials("inbound-client", "s3cret").inbound_get();
    /// # let _ = creds;
    /// ```
    pub fn inbound_get(mut self) -> Self {
        if let Secret::Login {
            form: Form::Client { basic, get },
            ..
        } = &mut self.secret
        {
            *basic = true;
            *get = true;
        }
        self
    }

    fn login(account: String, password: String, form: Form, from_env: bool) -> Self {
        let secret = Secret::Login {
            account,
            password,
            form,
            from_env,
            scope: None,
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

    /// [`api_key`](Self::api_key), refusing a key that cannot be sent.
    ///
    /// # Errors
    ///
    /// An [`Error`] for which [`is_config`](Error::is_config) is `true` when the key is empty or
    /// not a valid header value. The key is never part of it.
    ///
    /// ```
    /// use patchworks_auth::Credentials;
    ///
    /// assert!(Credentials::try_api_key("pk_live_4f9a").is_ok());
    /// assert!(Credentials::try_api_key("pk\r\nX-Evil: 1").unwrap_err().is_config());
    /// ```
    pub fn try_api_key(key: impl Into<String>) -> Result<Self, Error> {
        let key = key.into();
        if api_key_header(&key).is_none() {
            return Err(invalid_api_key());
        }
        Ok(Credentials::api_key(key))
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

    /// The login form's name, for logs and metrics (`api_key` for a key).
    pub(crate) fn form_name(&self) -> &'static str {
        match &self.secret {
            Secret::Login { form, .. } => form.name(),
            Secret::ApiKey(_) => "api_key",
        }
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
            Secret::Login {
                account,
                form: Form::Client { .. },
                scope,
                ..
            } => {
                d.field("client_id", account)
                    .field("client_secret", &"<redacted>");
                if let Some(scope) = scope {
                    d.field("scope", scope);
                }
                &mut d
            }
            Secret::Login { account, form, .. } => d
                .field(form.field(), account)
                .field("password", &"<redacted>"),
            Secret::ApiKey(_) => d.field("api_key", &"<redacted>"),
        };
        d.finish()
    }
}

/// The error of an API key that is not a header value; the key is never part of it.
pub(crate) fn invalid_api_key() -> Error {
    Error::config(
        "the API key is empty or not a valid header value (control characters, CR/LF); check \
         the key",
    )
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
