//! The account the layer logs in with.

use crate::error::Error;
use std::fmt;

/// The email and password of a Patchworks account.
///
/// `Debug` shows the email and hides the password:
///
/// ```
/// use patchworks_auth::Credentials;
///
/// let creds = Credentials::new("ops@example.com", "hunter2");
/// assert_eq!(
///     format!("{creds:?}"),
///     r#"Credentials { email: "ops@example.com", password: "<redacted>" }"#
/// );
/// ```
#[derive(Clone)]
pub struct Credentials {
    pub(crate) email: String,
    pub(crate) password: String,
}

impl Credentials {
    /// The environment variable [`from_env`](Self::from_env) reads the email from.
    pub const EMAIL_VAR: &'static str = "PATCHWORKS_EMAIL";
    /// The environment variable [`from_env`](Self::from_env) reads the password from.
    pub const PASSWORD_VAR: &'static str = "PATCHWORKS_PASSWORD";

    /// Credentials for the account with this email and password.
    pub fn new(email: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            email: email.into(),
            password: password.into(),
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
        Ok(Credentials::new(
            env_var(Self::EMAIL_VAR)?,
            env_var(Self::PASSWORD_VAR)?,
        ))
    }

    /// The account's email.
    pub fn email(&self) -> &str {
        &self.email
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
        f.debug_struct("Credentials")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .finish()
    }
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
        assert_eq!(creds.email(), "ops@example.com");
        assert!(!format!("{creds:?}").contains("s3cret-value"));
        std::env::remove_var(Credentials::EMAIL_VAR);
        std::env::remove_var(Credentials::PASSWORD_VAR);
    }
}
