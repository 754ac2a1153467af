//! What a 401's `WWW-Authenticate` says about the token (RFC 7235 challenges, RFC 6750 errors).
//!
//! An API that refuses a request for lack of permission says so with
//! `Bearer error="insufficient_scope"`; one that refuses the token says
//! `Bearer error="invalid_token"`, or nothing. Only the second kind is worth a login.
//!
//! Everything here reads bytes the network sent, so nothing here may panic.
//!
//! Hand-written: the `headers` crate does not parse `WWW-Authenticate`, and the crates that do
//! are unmaintained. The grammar is small: a comma-separated list whose elements are either a
//! new challenge (`scheme`, `scheme token68`, `scheme name=value`) or one more parameter of the
//! current challenge (`name=value`), values being tokens or quoted strings.

use http::{
    header::{RETRY_AFTER, WWW_AUTHENTICATE},
    HeaderMap,
};
use std::time::{Duration, SystemTime};

/// What a 401's challenges say about the token that was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A `Bearer` challenge names an error other than `invalid_token` (`insufficient_scope`,
    /// `invalid_request`, ...): the API refuses the request, not the token.
    RequestRefused,
    /// A `Bearer` challenge says `invalid_token`: the token is the problem.
    UnsendableToken,
    /// No `Bearer` error is named (no header, another scheme, unreadable): the 401 may be the
    /// token's or the request's.
    Unknown,
}

/// Reads every `WWW-Authenticate` value of a 401; the first `Bearer` error named decides.
pub(crate) fn verdict(headers: &HeaderMap) -> Verdict {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .find_map(|value| bearer_error(value.as_bytes()))
        .map_or(Verdict::Unknown, |error| {
            if error.eq_ignore_ascii_case(b"invalid_token") {
                Verdict::UnsendableToken
            } else {
                Verdict::RequestRefused
            }
        })
}

/// The `error` parameter of the first `Bearer` challenge in one header value that has one.
pub(crate) fn bearer_error(value: &[u8]) -> Option<Vec<u8>> {
    let mut in_bearer = false;
    for element in elements(value) {
        let element = trim(element);
        if element.is_empty() {
            continue; // RFC 7230 list syntax allows empty elements
        }
        let (name, rest) = token(element);
        if name.is_empty() {
            return None; // not a challenge list: stop rather than guess
        }
        let param = if trim_start(rest).first() == Some(&b'=') {
            // `name = value`: one more parameter of the current challenge.
            Some(element)
        } else {
            // `scheme [ token68 | name=value ]`: a new challenge.
            in_bearer = name.eq_ignore_ascii_case(b"bearer");
            let rest = trim(rest);
            (!rest.is_empty()).then_some(rest)
        };
        if let (true, Some(param)) = (in_bearer, param) {
            if let Some((key, value)) = parameter(param) {
                if key.eq_ignore_ascii_case(b"error") {
                    return Some(value);
                }
            }
        }
    }
    None
}

/// Splits a list on the commas outside quoted strings.
fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut cuts = Vec::new();
    for (i, &b) in value.iter().enumerate() {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, _, b'"') => quoted = !quoted,
            (false, _, b',') => {
                cuts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    cuts.push(&value[start..]);
    cuts.into_iter()
}

/// `name BWS "=" BWS ( token / quoted-string )` and nothing after it.
fn parameter(param: &[u8]) -> Option<(&[u8], Vec<u8>)> {
    let (name, rest) = token(param);
    let rest = trim_start(rest).strip_prefix(b"=")?;
    let rest = trim_start(rest);
    let (value, rest) = if let Some(quoted) = rest.strip_prefix(b"\"") {
        quoted_string(quoted)?
    } else {
        let (value, rest) = token(rest);
        (value.to_vec(), rest)
    };
    (!name.is_empty() && trim(rest).is_empty()).then_some((name, value))
}

/// The rest of a quoted string after its opening quote: its unescaped content, and what follows
/// the closing quote.
fn quoted_string(quoted: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut content = Vec::new();
    let mut bytes = quoted.iter().enumerate();
    while let Some((i, &b)) = bytes.next() {
        match b {
            b'"' => return Some((content, &quoted[i + 1..])),
            b'\\' => content.push(*bytes.next()?.1),
            _ => content.push(b),
        }
    }
    None // unterminated
}

/// The longest prefix of `tchar`s (RFC 7230), and the rest.
fn token(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
        .unwrap_or(s.len());
    s.split_at(end)
}

fn trim_start(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    &s[start..]
}

fn trim(s: &[u8]) -> &[u8] {
    let s = trim_start(s);
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &s[..end]
}

/// The wait a `Retry-After` asks for: delay-seconds or an HTTP date (`now` is the wall clock).
/// At most a day: a longer wait is taken as a day.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or_default()
        }
    };
    Some(wait.min(Duration::from_secs(24 * 60 * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn error(value: &str) -> Option<String> {
        bearer_error(value.as_bytes()).map(|e| String::from_utf8(e).unwrap())
    }

    #[test]
    fn reads_the_bearer_error() {
        for (value, expected) in [
            (
                r#"Bearer error="insufficient_scope""#,
                Some("insufficient_scope"),
            ),
            (
                r#"Bearer realm="x", error="invalid_token", error_description="expired""#,
                Some("invalid_token"),
            ),
            (
                r#"bearer ERROR = insufficient_scope"#,
                Some("insufficient_scope"),
            ),
            (
                r#"Basic realm="a, b", Bearer scope="x y", error="insufficient_scope""#,
                Some("insufficient_scope"),
            ),
            (
                r#"Bearer realm="error=\"invalid_token\"", error="invalid_request""#,
                Some("invalid_request"),
            ),
            (r#"Bearer error="a\"b""#, Some("a\"b")),
            (r#", ,Bearer ,error="x""#, Some("x")),
            ("Bearer", None),
            (r#"Bearer realm="patchworks""#, None),
            (r#"Basic error="insufficient_scope""#, None),
            (r#"Basic realm="x", Bearer"#, None),
            (
                r#"Bearer error="insufficient_scope", Basic error="x""#,
                Some("insufficient_scope"),
            ),
            (
                r#"Bearer abc123==, error="not-this-one""#,
                Some("not-this-one"),
            ),
            (r#"Bearer error="unterminated"#, None),
            ("", None),
            ("=", None),
            ("\"", None),
        ] {
            assert_eq!(error(value).as_deref(), expected, "{value}");
        }
    }

    #[test]
    fn the_first_named_error_in_any_header_decides() {
        let mut headers = HeaderMap::new();
        assert_eq!(verdict(&headers), Verdict::Unknown);
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="x""#),
        );
        assert_eq!(verdict(&headers), Verdict::Unknown);
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="insufficient_scope""#),
        );
        assert_eq!(verdict(&headers), Verdict::RequestRefused);
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="Invalid_Token""#),
        );
        assert_eq!(verdict(&headers), Verdict::UnsendableToken);
    }
}
