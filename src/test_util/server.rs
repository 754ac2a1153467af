//! The fake's HTTP server: what it answers to logins and API calls.

use super::*;

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in the set, so dropping the server (aborting this task) ends them.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move {
                    // `None`: drop the connection without an answer.
                    handle(&shared, request)
                        .await
                        .ok_or_else(|| io::Error::other("connection dropped on purpose"))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if request.uri().path() == STATS_PATH {
        let state = shared.state();
        let stats = serde_json::json!({
            "logins": state.logins,
            "api_calls": state.api_calls,
            "unauthorized": state.unauthorized,
        });
        return Some(json(StatusCode::OK, stats));
    }
    if let Some(refused) = over_rate(&mut shared.state()) {
        return Some(refused);
    }
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (authorization, content_type) = (text(header::AUTHORIZATION), text(header::CONTENT_TYPE));
    let path = parts.uri.path().to_owned();
    {
        let mut state = shared.state();
        if state.seen.len() < SEEN_CAP {
            state.seen.push(Seen {
                method: parts.method.clone(),
                path: path.clone(),
                query: parts.uri.query().map(str::to_owned),
                authorization: authorization.clone(),
                content_type,
                body: body.clone(),
                received_at: Instant::now(),
            });
        }
    }
    let form = match path.as_str() {
        LOGIN_PATH => Some(Form::Email),
        USERNAME_LOGIN_PATH => Some(Form::Username),
        TOKEN_PATH => Some(Form::Client(authorization.clone())),
        _ => None,
    };
    match (form, &parts.method) {
        (Some(form), &Method::POST) => return login(shared, &body, form).await,
        // The token endpoint as Patchworks' Inbound API documents it: a `GET`, the form in the
        // query and the client in Basic.
        (Some(form @ Form::Client(_)), &Method::GET) => {
            let query = parts.uri.query().unwrap_or_default().as_bytes().to_vec();
            return login(shared, &query, form).await;
        }
        _ => {}
    }
    let gateway = shared.state().gateway.get(&path).copied();
    match gateway {
        // A gateway that never answers.
        Some(None) => return std::future::pending().await,
        Some(Some(status)) => {
            shared.state().api_calls += 1;
            let mut response = json(status, serde_json::json!({"message": "Gateway."}));
            if status == StatusCode::TOO_MANY_REQUESTS {
                let one = header::HeaderValue::from_static("1");
                response.headers_mut().insert(header::RETRY_AFTER, one);
            }
            return Some(response);
        }
        None => {}
    }
    {
        let mut state = shared.state();
        if state.dropped > 0 {
            state.dropped -= 1;
            state.api_calls += 1;
            return None;
        }
    }
    let response = api(
        shared,
        &parts.method,
        &path,
        authorization.as_deref(),
        body.len(),
    );
    let delay = shared.state().api_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Some(response)
}

/// A `429` if this request, arriving now, is over the rate limit; counts it otherwise.
fn over_rate(state: &mut FakeState) -> Option<Response<Full<Bytes>>> {
    let now = Instant::now();
    let (limit, per, arrived) = state.rate.as_mut()?;
    while arrived
        .front()
        .is_some_and(|at| now.duration_since(*at) >= *per)
    {
        arrived.pop_front();
    }
    if arrived.len() < *limit {
        arrived.push_back(now);
        return None;
    }
    state.too_many += 1;
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"{\"message\":\"Too Many Requests\"}",
    )));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    Some(response)
}

/// The login's body: `email` at [`LOGIN_PATH`], `username` at [`USERNAME_LOGIN_PATH`].
#[derive(serde::Deserialize)]
struct LoginBody {
    email: Option<String>,
    username: Option<String>,
    password: String,
}

/// Where the fake tells its counts (logins, API calls, 401s), for a test in another process:
/// not recorded, not counted, no token needed.
pub(super) const STATS_PATH: &str = "/fake/stats";

/// Which login a request is: by its path, and for the token endpoint its `Authorization`.
enum Form {
    Email,
    Username,
    Client(Option<String>),
}

/// The client of an RFC 6749 §4.4 token request (from HTTP Basic, each part form-decoded, or
/// from the body), or the §5.2 error to answer.
fn oauth_client(
    authorization: Option<&str>,
    body: &[u8],
) -> Result<(String, String), Box<Response<Full<Bytes>>>> {
    let error = |status, code: &str| {
        Box::new(json(
            status,
            serde_json::json!({"error": code, "error_description": "The client could not be authenticated."}),
        ))
    };
    let fields: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    if fields.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return Err(error(StatusCode::BAD_REQUEST, "unsupported_grant_type"));
    }
    let decode = |text: &str| -> String {
        form_urlencoded::parse(format!("x={text}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    };
    let basic = authorization
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .and_then(|pair| String::from_utf8(pair).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            Some((decode(id), decode(secret)))
        });
    let in_body = fields.get("client_id").zip(fields.get("client_secret"));
    match (basic, in_body) {
        (Some(client), None) => Ok(client),
        (None, Some((id, secret))) => Ok((id.clone(), secret.clone())),
        _ => Err(error(StatusCode::UNAUTHORIZED, "invalid_client")),
    }
}

/// The answer to a login, or `None` to drop the connection.
async fn login(shared: &Shared, body: &[u8], form: Form) -> Option<Response<Full<Bytes>>> {
    let (delay, queued, answer) = {
        let mut state = shared.state();
        state.logins += 1;
        match state.login_queue.pop_front() {
            Some(answer) => (state.login_delay, true, answer),
            None => (state.login_delay, false, state.login_answer.clone()),
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let _ = shared.gate.subscribe().wait_for(|held| !held).await;
    match &answer {
        LoginAnswer::Drop => return None,
        LoginAnswer::Hang => std::future::pending().await,
        LoginAnswer::Status(status) if queued => {
            return Some(json(
                *status,
                serde_json::json!({"message": "Login failed."}),
            ))
        }
        LoginAnswer::Throttled { retry_after } => {
            let mut response = json(
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({"message": "Too Many Attempts."}),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(*retry_after));
            return Some(response);
        }
        LoginAnswer::Redirect(to) => {
            let mut response = json(StatusCode::TEMPORARY_REDIRECT, serde_json::json!({}));
            if let Ok(location) = header::HeaderValue::from_str(to) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            return Some(response);
        }
        _ => {}
    }
    let (account, password, oauth) = match form {
        Form::Client(authorization) => match oauth_client(authorization.as_deref(), body) {
            Ok((id, secret)) => (id, secret, true),
            Err(refused) => return Some(*refused),
        },
        Form::Email | Form::Username => {
            let login = serde_json::from_slice::<LoginBody>(body).ok();
            let Some((account, login)) = login.and_then(|login| {
                let account = match form {
                    Form::Username => login.username.clone(),
                    _ => login.email.clone(),
                };
                account.map(|account| (account, login))
            }) else {
                return Some(json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"message": "The given data was invalid.", "errors": {}}),
                ));
            };
            (account, login.password, false)
        }
    };
    let answered = answer_login(&mut shared.state(), &account, &password, answer, oauth);
    match answered {
        Some(response) => Some(response),
        None => std::future::pending().await,
    }
}

/// The answer to a login (`oauth`: at the token endpoint, with its field names), or `None` to
/// hang.
fn answer_login(
    state: &mut FakeState,
    account: &str,
    password: &str,
    answer: LoginAnswer,
    oauth: bool,
) -> Option<Response<Full<Bytes>>> {
    if answer == LoginAnswer::Hang {
        return None;
    }
    let accepted = if oauth {
        state
            .clients
            .iter()
            .any(|(id, secret)| (id.as_str(), secret.as_str()) == (account, password))
    } else {
        (state.credentials.0.as_str(), state.credentials.1.as_str()) == (account, password)
    };
    if !accepted {
        return Some(if oauth {
            json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "invalid_client", "error_description": "Client authentication failed."}),
            )
        } else {
            json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"message": "Invalid credentials."}),
            )
        });
    }
    // The token's field: `access_token` at the token endpoint, with its `token_type`.
    let token_answer = |token: &str, expires_in: Option<u64>| {
        let mut answer = if oauth {
            serde_json::json!({"access_token": token, "token_type": "Bearer"})
        } else {
            serde_json::json!({"message": "You have successfully logged in.", "token": token})
        };
        if let Some(expires_in) = expires_in {
            answer["expires_in"] = expires_in.into();
        }
        json(StatusCode::OK, answer)
    };
    let lifetime = state.lifetime;
    let expires_in = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
    state.issued += 1;
    let token = jwt(account, expires_in, state.issued);
    Some(match answer {
        LoginAnswer::Token => {
            state
                .tokens
                .insert(token.clone(), Instant::now() + lifetime);
            token_answer(&token, Some(expires_in))
        }
        LoginAnswer::TokenWithoutExpiresIn => {
            state
                .tokens
                .insert(token.clone(), Instant::now() + lifetime);
            token_answer(&token, None)
        }
        LoginAnswer::RawToken(raw) => {
            state.tokens.insert(raw.clone(), Instant::now() + lifetime);
            token_answer(&raw, Some(expires_in))
        }
        LoginAnswer::Status(status) => {
            json(status, serde_json::json!({"message": "Login failed."}))
        }
        LoginAnswer::Body(body) => Response::new(Full::new(body)),
        LoginAnswer::Hang
        | LoginAnswer::Drop
        | LoginAnswer::Throttled { .. }
        | LoginAnswer::Redirect(_) => return None,
    })
}

fn api(
    shared: &Shared,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    body_bytes: usize,
) -> Response<Full<Bytes>> {
    let mut state = shared.state();
    state.api_calls += 1;
    if let Some(to) = state.redirects.get(path) {
        let mut response = json(StatusCode::MOVED_PERMANENTLY, serde_json::json!({}));
        if let Ok(location) = header::HeaderValue::from_str(to) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return response;
    }
    let token = authorization.and_then(|value| value.strip_prefix("Bearer "));
    let valid = match token.and_then(|token| state.tokens.get(token)) {
        Some(expires_at) if Instant::now() < *expires_at => true,
        Some(_) => {
            state.expired_seen += 1;
            false
        }
        None => authorization.is_some() && authorization == state.api_key.as_deref(),
    };
    if !valid {
        state.unauthorized += 1;
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"message": "Unauthenticated."}),
        );
    }
    if let Some(token) = token {
        if !state.used.contains(token) {
            state.used.insert(token.to_owned());
        }
    }
    let forbidden = state.forbidden.get(path).or_else(|| {
        let mut prefixes = state.forbidden.iter();
        prefixes.find_map(|(p, c)| {
            p.strip_suffix('*')
                .filter(|p| path.starts_with(p))
                .map(|_| c)
        })
    });
    if let Some(challenge) = forbidden {
        let mut response = json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"message": "This action is unauthorized."}),
        );
        if let Some(value) = challenge
            .as_deref()
            .and_then(|c| header::HeaderValue::from_str(c).ok())
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        return response;
    }
    if let Some(status) = state.api_status {
        return json(status, serde_json::json!({"message": "Refused."}));
    }
    if state.api_failures.0 > 0 {
        state.api_failures.0 -= 1;
        let (_, status, retry_after) = state.api_failures;
        let mut response = json(status, serde_json::json!({"message": "Try again later."}));
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        return response;
    }
    json(
        StatusCode::OK,
        serde_json::json!({"method": method.as_str(), "path": path, "body_bytes": body_bytes}),
    )
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A JWT-shaped token (unsigned) whose `exp` claim matches `expires_in`.
fn jwt(email: &str, expires_in: u64, serial: u64) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let header = engine.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let claims = serde_json::json!({"sub": email, "exp": now + expires_in, "jti": serial});
    let payload = engine.encode(claims.to_string());
    format!("{header}.{payload}.fake-signature-{serial}")
}
