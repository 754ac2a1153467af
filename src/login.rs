//! The login request and the reading of its answer.
//!
//! Everything here handles bytes the network sent, so nothing here may panic: every oddity of
//! the answer becomes an [`Error`].

use crate::{
    bounds::{HttpService, ResponseBody},
    budget::Gate,
    config::Config,
    credentials::{Credentials, Form, Secret},
    error::{Error, Kind},
    oauth::{basic_auth, oauth_error, warn_if_narrower, with_query},
    token::Obtained,
};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::{error::Category, value::RawValue};
use std::{
    future::Future,
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_http::follow_redirect::RequestUri;

/// A function that logs in once: one attempt, no retries (the driver retries).
pub(crate) type LoginFn =
    Arc<dyn Fn() -> crate::bounds::BoxFuture<Result<Obtained, Error>> + Send + Sync>;

/// The largest login answer read; a larger one is refused. A real answer is about 1 KiB.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The lifetime assumed when the answer gives neither `expires_in` nor a JWT `exp`.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// Shorter lifetimes are refused: such a token would expire on its way to the API.
pub(crate) const MIN_LIFETIME: Duration = Duration::from_secs(1);
/// Longer lifetimes are cut to this, so that no instant arithmetic can overflow.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// A token the login endpoint issued, ready to attach.
#[derive(Debug)]
pub(crate) struct Issued {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    /// How long the token lives, counted from when the login request was sent.
    pub(crate) lifetime: Duration,
    /// The OAuth 2 `scope` the answer says was granted, if it says.
    pub(crate) scope: Option<String>,
}

/// What every login of a layer sends and spends: made once, with the layer.
pub(crate) struct Login {
    url: Uri,
    credentials: Credentials,
    /// The API budget a login takes a unit of.
    gate: Option<Arc<Gate>>,
    /// Whether a scope narrower than asked was told (once for the layer's logins).
    narrowed: AtomicBool,
}

impl Login {
    pub(crate) fn new(config: &Config, gate: Option<Arc<Gate>>) -> Self {
        Login {
            url: config.login_url.clone(),
            credentials: config.credentials.clone(),
            gate,
            narrowed: AtomicBool::new(false),
        }
    }
}

/// The function the login driver logs in with: one attempt through a clone of `inner`.
pub(crate) fn login_fn<S, B, RB>(login: &Arc<Login>, inner: &S) -> LoginFn
where
    S: HttpService<B, ResBody = RB>,
    B: From<Bytes> + Send + 'static,
    RB: ResponseBody,
{
    // A mutex only to make the service (`Send`, maybe not `Sync`) shareable: it is cloned out
    // once per attempt.
    let inner = Mutex::new(inner.clone());
    login_through(login, move || {
        let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        move |request| async move {
            let transport = |err: S::Error| Error::with_source(Kind::Transport, err);
            let inner = inner.ready().await.map_err(transport)?;
            inner.call(request).await.map_err(transport)
        }
    })
}

/// A [`LoginFn`] whose attempts send the login request with the sender `make` makes for each:
/// the one piece that differs between a tower service and another client.
pub(crate) fn login_through<M, F, Fut, B, RB>(login: &Arc<Login>, make: M) -> LoginFn
where
    M: Fn() -> F + Send + Sync + 'static,
    F: FnOnce(Request<B>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<RB>, Error>> + Send,
    B: From<Bytes>,
    RB: ResponseBody,
{
    let login = login.clone();
    Arc::new(move || {
        let (login, send) = (login.clone(), make());
        Box::pin(async move {
            let Login {
                url: login_url,
                credentials,
                gate,
                narrowed,
            } = &*login;
            let Secret::Login {
                account,
                password,
                form,
                from_env,
                scope,
            } = &credentials.secret
            else {
                return Err(Error::config("an API key needs no login"));
            };
            // A login is a request to Patchworks: it takes a unit of the API budget, and its
            // wait is bounded by the login timeout, not `max_wait`.
            let spent = match gate {
                Some(gate) => gate.take(crate::budget::Purpose::Login).await,
                None => Ok(crate::budget::Spent::none()),
            };
            // A login's take is never refused (its wait is the login timeout's).
            let mut spent = spent.unwrap_or_else(|_| crate::budget::Spent::none());
            spent.sending();
            let sent_at = Instant::now();
            let login = request(login_url, *form, account, password, scope.as_deref());
            let response = send(login).await;
            spent.answered();
            let response = response?;
            if let (Some(gate), true) = (gate, crate::budget::is_too_many(response.status())) {
                gate.too_many(response.headers());
            }
            let answer = read_answer(login_url, *form, (account, password), response).await;
            let issued = answer.map_err(|error| error.with_env_hint(*from_env))?;
            let granted = match (form, issued.scope) {
                (Form::Client { .. }, Some(granted)) => {
                    warn_if_narrower(scope.as_deref(), &granted, narrowed);
                    Some(Arc::from(granted))
                }
                // RFC 6749 §5.1: no `scope` in the answer is the scope asked for.
                (Form::Client { .. }, None) => scope.as_deref().map(Arc::from),
                _ => None,
            };
            Ok(Obtained {
                header: issued.header,
                obtained_at: sent_at,
                lifetime: issued.lifetime,
                shared: false,
                scope: granted,
            })
        })
    })
}

/// The login request: `POST <url>` with `{"email", "password"}`, or `{"username", "password"}`
/// for that form; for OAuth 2 client credentials, RFC 6749 §4.4's form, the client in HTTP
/// Basic (or in the body) and `scope` if there is one.
pub(crate) fn request<B: From<Bytes>>(
    url: &Uri,
    form: Form,
    account: &str,
    password: &str,
    scope: Option<&str>,
) -> Request<B> {
    // What differs between the forms: the body (and its type, or none for a `GET`), the URI,
    // and the client's Basic credentials.
    let (body, content_type, uri, basic) = match form {
        Form::Email | Form::Username => {
            let body = serde_json::json!({ form.field(): account, "password": password });
            // Serializing two strings into a Vec cannot fail.
            let json = serde_json::to_vec(&body).unwrap_or_default();
            (json, Some("application/json"), url.clone(), None)
        }
        Form::Client { basic, get } => {
            let mut body = form_urlencoded::Serializer::new(String::new());
            body.append_pair("grant_type", "client_credentials");
            if let Some(scope) = scope {
                body.append_pair("scope", scope);
            }
            if !basic {
                body.append_pair("client_id", account);
                body.append_pair("client_secret", password);
            }
            let basic = basic.then(|| basic_auth(account, password)).flatten();
            let form = body.finish();
            if get {
                // The form in the query (the client is in Basic, never in the URL).
                (Vec::new(), None, with_query(url, &form), basic)
            } else {
                let form_type = "application/x-www-form-urlencoded";
                (form.into_bytes(), Some(form_type), url.clone(), basic)
            }
        }
    };
    let mut request = Request::new(B::from(Bytes::from(body)));
    if content_type.is_some() {
        *request.method_mut() = Method::POST;
    }
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(basic) = basic {
        headers.insert(header::AUTHORIZATION, basic);
    }
    request
}

/// Reads a login answer sent to `login_url`: its status, then at most [`MAX_ANSWER_BYTES`] of
/// its body.
///
/// A redirect is refused, and so is an answer that a redirect-following service below the layer
/// fetched from another URI (tower-http's `FollowRedirect` says which in
/// [`RequestUri`](tower_http::follow_redirect::RequestUri)): the token must come from the login
/// URL, and the password must not follow a redirect.
///
/// For OAuth 2 client credentials (`form`), a failed answer's body is read for RFC 6749 §5.2's
/// `error` and `error_description` and nothing else, with every form of the client's secret
/// the layer sent (`client`: the id and the secret) scrubbed from them.
pub(crate) async fn read_answer<B>(
    login_url: &Uri,
    form: Form,
    client: (&str, &str),
    response: Response<B>,
) -> Result<Issued, Error>
where
    B: Body,
    B::Error: Into<tower::BoxError>,
{
    let status = response.status();
    if status.is_redirection() {
        return Err(Error::new(Kind::Redirected(Some(status))));
    }
    let oauth = matches!(form, Form::Client { .. });
    if status != StatusCode::OK {
        let retry_after = crate::challenge::retry_after(response.headers(), SystemTime::now());
        let rejected = matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::UNPROCESSABLE_ENTITY
        );
        if !oauth {
            // The body of a failed login is not read: nothing in it is needed, and a hostile
            // server could echo the password there.
            return Err(Error::new(if rejected {
                Kind::Rejected(status, false)
            } else {
                Kind::Status(status, retry_after)
            }));
        }
        // An unreadable body is no reason to hide the status: it is read as saying nothing.
        let body = read_body(response.into_body()).await.unwrap_or_default();
        let (code, description) = oauth_error(&body, client);
        if code.is_none() && !rejected && status != StatusCode::BAD_REQUEST {
            // A 404, a 5xx or a 429 with no §5.2 error: what any login's would be.
            return Err(Error::new(Kind::Status(status, retry_after)));
        }
        let rejected = rejected
            || matches!(
                code.as_deref(),
                Some("invalid_client" | "unauthorized_client")
            );
        return Err(Error::new(Kind::OAuth {
            status,
            rejected,
            code,
            description,
            retry_after,
        }));
    }
    if let Some(RequestUri(from)) = response.extensions().get::<RequestUri>() {
        if from != login_url {
            return Err(Error::new(Kind::Redirected(None)));
        }
    }
    let bytes = read_body(response.into_body()).await?;
    parse_answer_as(&bytes, SystemTime::now(), oauth)
}

/// At most [`MAX_ANSWER_BYTES`] of a login answer's body.
async fn read_body<B>(body: B) -> Result<Bytes, Error>
where
    B: Body,
    B::Error: Into<tower::BoxError>,
{
    if body.size_hint().lower() > MAX_ANSWER_BYTES as u64 {
        return Err(too_large());
    }
    match Limited::new(body, MAX_ANSWER_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(too_large()),
        Err(err) => Err(Error::with_source(Kind::Transport, err)),
    }
}

fn too_large() -> Error {
    Error::new(Kind::Malformed("it is larger than 64 KiB"))
}

/// The fields of a login answer, as raw JSON so that each can be judged on its own. Other
/// fields are skipped unread (a huge number in `message` is no fault of the token).
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    access_token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    expires_in: Option<&'a RawValue>,
    #[serde(borrow, default)]
    scope: Option<&'a RawValue>,
}

/// Parses the body of a `200` login answer. `now` is the wall clock, for a JWT's `exp`.
#[cfg(any(test, fuzzing))]
pub(crate) fn parse_answer(body: &[u8], now: SystemTime) -> Result<Issued, Error> {
    parse_answer_as(body, now, false)
}

/// [`parse_answer`], or with `oauth` an RFC 6749 §5.1 answer: `access_token`, and a
/// `token_type` of `Bearer` in any case.
pub(crate) fn parse_answer_as(body: &[u8], now: SystemTime, oauth: bool) -> Result<Issued, Error> {
    // serde would read a struct from an array too: an answer is an object or nothing.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
        return Err(Error::new(Kind::Malformed(if json {
            "it is not a JSON object"
        } else {
            "it is not valid JSON"
        })));
    }
    let answer: Answer<'_> = serde_json::from_slice(body).map_err(|err| {
        Error::new(Kind::Malformed(match err.classify() {
            Category::Data if err.to_string().starts_with("duplicate field") => {
                "it has a field twice"
            }
            Category::Data => "it is not a JSON object",
            Category::Syntax | Category::Eof | Category::Io => "it is not valid JSON",
        }))
    })?;
    let string =
        |raw: Option<&RawValue>| raw.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
    let token = if oauth {
        let token_type = string(answer.token_type);
        if !token_type.is_some_and(|t| t.eq_ignore_ascii_case("bearer")) {
            return Err(Error::new(Kind::Malformed(
                "its \"token_type\" is not \"Bearer\"",
            )));
        }
        string(answer.access_token).ok_or(Error::new(Kind::Malformed(
            "it has no \"access_token\" string",
        )))?
    } else {
        string(answer.token).ok_or(Error::new(Kind::Malformed("it has no \"token\" string")))?
    };
    let header = bearer(&token)?;
    let lifetime = match answer.expires_in.map(RawValue::get) {
        None | Some("null") => match jwt_exp(&token) {
            Some(exp) => seconds_until(exp, now)?,
            None => DEFAULT_LIFETIME,
        },
        Some(raw) => lifetime_from_secs(expires_in(raw)?)?,
    };
    // A scope that is not a string is no scope said (RFC 6749 §5.1 makes it one).
    let scope = if oauth { string(answer.scope) } else { None };
    Ok(Issued {
        header,
        lifetime,
        scope,
    })
}

/// `expires_in` as seconds: a JSON number, or a string holding one (`"86400"`), as some
/// servers send it.
fn expires_in(raw: &str) -> Result<f64, Error> {
    let not_a_number = || Error::new(Kind::Malformed("\"expires_in\" is not a number"));
    let text = match raw.strip_prefix('"') {
        Some(_) => serde_json::from_str::<String>(raw).map_err(|_| not_a_number())?,
        None => raw.to_owned(),
    };
    let text = text.trim();
    // JSON's number grammar (which `f64::from_str` accepts) and nothing else: no `inf`, `NaN`,
    // or `0x..` hidden in a string.
    let numeric = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    let secs: f64 = match text.parse() {
        Ok(secs) if numeric => secs,
        _ => return Err(not_a_number()),
    };
    if secs.is_finite() {
        Ok(secs)
    } else {
        Err(Error::new(Kind::Malformed(
            "\"expires_in\" is too large to be a number of seconds",
        )))
    }
}

/// `Bearer <token>` as a sensitive header value, if the token is an RFC 6750 `b64token`:
/// no spaces, no control characters, nothing a header could be split or smuggled with.
pub(crate) fn bearer(token: &str) -> Result<HeaderValue, Error> {
    let body = token.trim_end_matches('=');
    let valid = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !valid {
        return Err(Error::new(Kind::UnsendableToken));
    }
    let mut value = HeaderValue::from_maybe_shared(Bytes::from(format!("Bearer {token}")))
        .map_err(|_| Error::new(Kind::UnsendableToken))?;
    value.set_sensitive(true);
    Ok(value)
}

fn lifetime_from_secs(secs: f64) -> Result<Duration, Error> {
    if secs >= MIN_LIFETIME.as_secs_f64() {
        Ok(Duration::from_secs_f64(
            secs.min(MAX_LIFETIME.as_secs_f64()),
        ))
    } else {
        // NaN cannot reach here: every caller passes a finite number.
        Err(Error::new(Kind::Malformed(
            "the token expires in less than one second",
        )))
    }
}

fn seconds_until(exp: f64, now: SystemTime) -> Result<Duration, Error> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if !exp.is_finite() {
        return Err(Error::new(Kind::Malformed(
            "the token's \"exp\" is too large to be a time",
        )));
    }
    lifetime_from_secs(exp - now)
}

/// The `exp` claim (seconds since the Unix epoch) of a JWT, read without verifying the
/// signature: the layer only needs to know when to renew, and the API checks the token anyway.
///
/// Hand-written rather than a JWT crate: those verify signatures with keys we do not have, and
/// reading one claim is a split and a base64 decode.
pub(crate) fn jwt_exp(token: &str) -> Option<f64> {
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    #[derive(Deserialize)]
    struct Claims {
        exp: Option<serde_json::Value>,
    }
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let claims: Claims = serde_json::from_slice(&ENGINE.decode(payload).ok()?).ok()?;
    claims.exp?.as_f64()
}

#[cfg(test)]
mod tests;
