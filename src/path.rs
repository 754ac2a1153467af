//! A request path joined to a base URL's path, normalized as RFC 3986 §6.2.2 does, and refused
//! if it would leave the base.
//!
//! Everything here handles a caller's path, so nothing here may panic. Hand-written: the `url`
//! crate resolves a reference against a base (`/flows` would replace the base's path, not
//! follow it) and leaves `%2e` alone, and `http::Uri` does not normalize at all.

/// `path_and_query` (a request's, starting with `/`) appended to the path of the base URL
/// `base`, its path normalized: percent-encoded unreserved characters decoded (`%2e` is `.`,
/// in either case), other percent-encodings in upper case, then `.` and `..` segments removed
/// (RFC 3986 §6.2.2.1, §6.2.2.2, §5.2.4). The query is kept as it is.
///
/// # Errors
///
/// What is wrong, when the normalized path no longer starts with the base's own (normalized)
/// path at a segment boundary, or holds what some servers read as a separator or a dot segment
/// and RFC 3986 does not: a backslash, an encoded `/` or `\` (`%2F`, `%5C`, or encoded twice,
/// `%252F`), a segment that is `.` or `..` once decoded twice (`%252e%252e`), or one with a `;`
/// parameter (`..;`, which Tomcat and Jetty read as `..`). Servers disagree on those, so the
/// layer cannot tell where such a path goes.
pub(crate) fn join(base: &str, path_and_query: &str) -> Result<String, &'static str> {
    let (path, query) = match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    };
    if !path.starts_with('/') {
        return Err("it is not a path starting with `/`");
    }
    let base = normalize(base.trim_end_matches('/'))?;
    let base = base.trim_end_matches('/');
    let joined = normalize(&format!("{base}{path}"))?;
    let inside = joined == base
        || joined
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'));
    if !inside {
        return Err("it has `..` segments that leave the base URL's path");
    }
    Ok(joined + query)
}

/// `path` normalized (see [`join`]), or why it cannot be.
fn normalize(path: &str) -> Result<String, &'static str> {
    if path.contains('\\') {
        return Err("it has a backslash, which some servers read as `/`");
    }
    let decoded = decode_unreserved(path);
    let segments: Vec<&str> = decoded.split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." && out.len() > 1 {
                    out.pop();
                }
                // A dot segment at the end leaves a directory: `/a/b/..` is `/a/`.
                if i + 1 == segments.len() {
                    out.push("");
                }
            }
            _ => {
                // What a server that decodes more than once, or reads `;` parameters, sees.
                let plain = decoded_fully(segment);
                if plain.contains(&b'/') || plain.contains(&b'\\') {
                    return Err("it has an encoded `/` or `\\` (`%2F`, `%5C`), which some \
                                servers decode before they split the path");
                }
                let bare = plain.split(|b| *b == b';').next().unwrap_or_default();
                if bare == b"." || bare == b".." {
                    return Err("it has a segment that some servers read as `.` or `..` \
                                (encoded twice, or with a `;` parameter)");
                }
                out.push(segment);
            }
        }
    }
    let joined = out.join("/");
    Ok(if joined.starts_with('/') || joined.is_empty() {
        joined
    } else {
        format!("/{joined}")
    })
}

/// `path` with each `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) decoded and every
/// other `%XX` in upper case; a `%` not followed by two hex digits is kept as it is.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(bytes, i + 1), hex(bytes, i + 2)) {
            (b'%', Some(high), Some(low)) => {
                let byte = high * 16 + low;
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(byte));
                } else {
                    out.push_str(&format!("%{byte:02X}"));
                }
                i += 3;
            }
            (b'%', ..) => {
                out.push('%');
                i += 1;
            }
            _ => {
                // Up to the next `%`: `i` is on a char boundary (only ASCII was stepped over).
                let next = path[i..].find('%').map_or(path.len(), |at| i + at);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    out
}

/// `segment` percent-decoded until nothing changes (each round that changes it shortens it).
fn decoded_fully(segment: &str) -> Vec<u8> {
    let mut bytes = segment.as_bytes().to_vec();
    loop {
        let decoded = percent_decode(&bytes);
        if decoded == bytes {
            return decoded;
        }
        bytes = decoded;
    }
}

/// `bytes` with every `%XX` decoded; a `%` not followed by two hex digits is kept.
pub(crate) fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(bytes, i + 1), hex(bytes, i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push(high * 16 + low);
                i += 3;
            }
            (byte, ..) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The value of the hex digit at `at`, if there is one.
fn hex(bytes: &[u8], at: usize) -> Option<u8> {
    let digit = char::from(*bytes.get(at)?).to_digit(16)?;
    u8::try_from(digit).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_follows_the_base_and_never_leaves_it() {
        let base = "/api/v1/";
        for (path, joined) in [
            ("/flows?page=2", "/api/v1/flows?page=2"),
            ("/", "/api/v1/"),
            ("/./flows", "/api/v1/flows"),
            ("/a/../flows", "/api/v1/flows"),
            ("/%66lows", "/api/v1/flows"),
            ("/a%2e/b", "/api/v1/a./b"),
            ("/caf%c3%a9", "/api/v1/caf%C3%A9"),
            ("/a/..", "/api/v1/"),
            ("/%zz", "/api/v1/%zz"),
            ("/\u{543}%41\u{543}%", "/api/v1/\u{543}A\u{543}%"),
            ("/flows?next=../..", "/api/v1/flows?next=../.."),
        ] {
            assert_eq!(join(base, path).as_deref(), Ok(joined), "{path}");
        }
        assert_eq!(join("", "/flows").as_deref(), Ok("/flows"));
        assert_eq!(join("/", "/../flows").as_deref(), Ok("/flows"));
        for path in [
            "/..",
            "/../admin",
            "/%2e%2e/admin",
            "/.%2E/admin",
            "/%2E./admin",
            "/a/../../admin",
            "/..%2fadmin",
            "/..%2Fadmin",
            "/..\\admin",
            "/..%5cadmin",
            "/..;/admin",
            "/.;x/admin",
            "/%252e%252e/admin",
            "/..%252fadmin",
            "/%2e%2e%3b/admin",
            "flows",
            "*",
        ] {
            assert!(join(base, path).is_err(), "{path}");
        }
        // The base's own dot segments count as normalized.
        assert_eq!(join("/api/./v1", "/flows").as_deref(), Ok("/api/v1/flows"));
        assert!(join("/api/v1", "/../v10/x").is_err(), "a segment boundary");
    }
}
