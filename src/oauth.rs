//! What is OAuth 2's own in a login: the client's Basic credentials and the `GET` form's query
//! (RFC 6749 §2.3.1, Patchworks' Inbound API), what the layer reads of a token endpoint's error
//! answer (§5.2) and the forms of the secret it scrubs from it, and the granted scope's warning.
//!
//! Everything here handles bytes the network sent, so nothing here may panic.

use base64::Engine as _;
use http::{HeaderValue, Uri};
use serde::Deserialize;

/// `text` with every byte but RFC 3986's unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
///
/// RFC 6749 §2.3.1 says to form-encode the client id and secret before Basic, which writes a
/// space as `+`; a server that percent-decodes them (as many do) reads that `+` as a plus and
/// refuses the client. With only unreserved bytes left bare, a form decoder and a percent
/// decoder read the same text: a space is `%20`, a plus `%2B`, a colon `%3A`, a percent `%25`.
pub(crate) fn percent(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The longest `error_description` kept, in characters.
const MAX_DESCRIPTION: usize = 200;
/// The longest `error` code kept, in bytes (the codes RFC 6749 defines are under 30).
const MAX_CODE: usize = 64;

/// RFC 6749 §5.2's `error` and `error_description` of a failed token answer, and nothing else
/// of it: the code if it is made of §5.2's characters (`%x20-21 / %x23-5B / %x5D-7E`) and short,
/// the description printable and at most 200 characters. Every form of the client's secret
/// that the layer sent is scrubbed from both first ([`Scrub`]).
pub(crate) fn oauth_error(body: &[u8], client: (&str, &str)) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct OAuthError {
        error: Option<serde_json::Value>,
        error_description: Option<serde_json::Value>,
    }
    let Ok(answer) = serde_json::from_slice::<OAuthError>(body) else {
        return (None, None);
    };
    let text = |value: Option<serde_json::Value>| match value {
        Some(serde_json::Value::String(text)) => Some(text),
        _ => None,
    };
    let scrub = Scrub::new(client);
    // A code with a secret in it is no code.
    let code = text(answer.error).filter(|code| {
        scrub.apply(code) == *code
            && !code.is_empty()
            && code.len() <= MAX_CODE
            && code
                .bytes()
                .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E))
    });
    let description = text(answer.error_description).map(|text| {
        let text = scrub.apply(&text);
        text.chars()
            .filter(|c| !c.is_control())
            .take(MAX_DESCRIPTION)
            .collect()
    });
    (code, description)
}

/// Every form of a client's secret that the layer itself sends, to be cut out of what a token
/// endpoint says back: the secret raw, form-encoded (the body), percent-encoded (Basic's
/// parts), JSON-escaped (with `\/` and `\uXXXX` as some encoders write them), and the Basic
/// value of the id and secret in each encoding (with and without padding). Matched without
/// regard to ASCII case, so that `%2b` and `%2B` are both found.
pub(crate) struct Scrub {
    needles: Vec<String>,
}

impl Scrub {
    pub(crate) fn new((id, secret): (&str, &str)) -> Scrub {
        let mut needles = Vec::new();
        if secret.is_empty() {
            return Scrub { needles };
        }
        let form =
            |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
        let json = serde_json::to_string(secret).unwrap_or_default();
        let json = json.trim_matches('"').to_owned();
        let ascii_json: String = json
            .chars()
            .map(|c| match c {
                ' '..='~' => c.to_string(),
                c => c
                    .encode_utf16(&mut [0; 2])
                    .iter()
                    .map(|unit| format!("\\u{unit:04x}"))
                    .collect(),
            })
            .collect();
        needles.extend([secret.to_owned(), form(secret), percent(secret)]);
        for text in [json, ascii_json] {
            needles.push(text.replace('/', "\\/"));
            needles.push(text);
        }
        let engine = base64::engine::general_purpose::STANDARD;
        for pair in [
            format!("{}:{}", percent(id), percent(secret)),
            format!("{}:{}", form(id), form(secret)),
            format!("{id}:{secret}"),
        ] {
            let basic = engine.encode(pair);
            let basic = basic.trim_end_matches('=');
            needles.push(basic.replace('/', "\\/"));
            needles.push(basic.to_owned());
        }
        needles.retain(|needle| !needle.is_empty());
        needles.iter_mut().for_each(|n| n.make_ascii_lowercase());
        needles.sort();
        needles.dedup();
        Scrub { needles }
    }

    /// `text` with every needle found in it (ASCII case ignored) replaced by `<redacted>`.
    pub(crate) fn apply(&self, text: &str) -> String {
        // ASCII lowercasing keeps every byte where it was, so positions carry over.
        let lower = text.to_ascii_lowercase();
        let mut cut = vec![false; text.len()];
        for needle in &self.needles {
            let mut from = 0;
            while let Some(at) = lower
                .get(from..)
                .and_then(|rest| rest.find(needle.as_str()))
            {
                let start = from + at;
                cut[start..start + needle.len()].fill(true);
                // The next char boundary after `start`: a match starts on one.
                from = start + lower[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        let mut out = String::with_capacity(text.len());
        let mut in_cut = false;
        for (at, c) in text.char_indices() {
            match (cut[at], in_cut) {
                (true, false) => out.push_str("<redacted>"),
                (true, true) => {}
                (false, _) => out.push(c),
            }
            in_cut = cut[at];
        }
        out
    }
}

/// Warns, once for the layer, when the token endpoint granted less than the `asked` scope: the
/// narrowing would otherwise show only later, as refusals from the API.
pub(crate) fn warn_if_narrower(
    asked: Option<&str>,
    granted: &str,
    warned: &std::sync::atomic::AtomicBool,
) {
    let granted: Vec<&str> = granted.split_ascii_whitespace().collect();
    let missing: Vec<&str> = asked
        .unwrap_or_default()
        .split_ascii_whitespace()
        .filter(|scope| !granted.contains(scope))
        .collect();
    if !missing.is_empty() && !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            target: "patchworks_auth",
            missing = %missing.join(" "),
            granted = %granted.join(" "),
            "the token endpoint granted a narrower scope than asked: requests that need the rest \
             will be refused; check the client's grants"
        );
    }
}

/// `url` with `query` added to its own query, if any.
pub(crate) fn with_query(url: &Uri, query: &str) -> Uri {
    let mut parts = url.clone().into_parts();
    let joined = match url.query() {
        Some(own) if !own.is_empty() => format!("{}?{own}&{query}", url.path()),
        _ => format!("{}?{query}", url.path()),
    };
    // A path and a form-encoded query make a valid path and query.
    parts.path_and_query = joined.parse().ok().or(parts.path_and_query);
    Uri::from_parts(parts).unwrap_or_else(|_| url.clone())
}

/// `Basic <base64(id:secret)>`, each percent-encoded first (RFC 6749 §2.3.1), marked sensitive.
pub(crate) fn basic_auth(client_id: &str, client_secret: &str) -> Option<HeaderValue> {
    let pair = format!("{}:{}", percent(client_id), percent(client_secret));
    let engine = base64::engine::general_purpose::STANDARD;
    let mut value = HeaderValue::try_from(format!("Basic {}", engine.encode(pair))).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Basic's parts read the same under both decoder families: a form decoder (`+` is a
    /// space) and a percent decoder (`+` is a plus), whatever reserved character they hold.
    #[test]
    fn basic_parts_read_the_same_under_form_and_percent_decoders() {
        let reserved = " :+%&=/?#[]@!$'()*,;\"\\<>^`{|}~é\u{1F511}";
        for c in reserved.chars() {
            let text = format!("a{c}b{c}");
            let encoded = percent(&text);
            let form: String = form_urlencoded::parse(format!("x={encoded}").as_bytes())
                .next()
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default();
            assert_eq!(form, text, "form decoder, {c:?}: {encoded}");
            // A percent decoder (RFC 3986), as many servers read Basic's parts.
            let decoded = crate::path::percent_decode(encoded.as_bytes());
            assert_eq!(decoded, text.as_bytes(), "{c:?}: {encoded}");
        }
        assert_eq!(percent("se cret:+%"), "se%20cret%3A%2B%25");
    }

    /// Every form the layer sends a secret in is cut out, in any ASCII case, and nothing else.
    #[test]
    fn scrub_cuts_each_form_and_keeps_the_rest() {
        let scrub = Scrub::new(("id", "s3 cr+t/é"));
        for form in [
            "s3 cr+t/é",
            "s3+cr%2Bt%2F%C3%A9",
            "s3%20cr%2bt%2f%c3%a9",
            "s3 cr+t\\/é",
        ] {
            let text = format!("before {form} after");
            assert_eq!(scrub.apply(&text), "before <redacted> after", "{form}");
        }
        assert_eq!(scrub.apply("nothing secret"), "nothing secret");
        assert_eq!(Scrub::new(("id", "")).apply("id:"), "id:");
    }
}
