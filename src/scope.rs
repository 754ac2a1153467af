//! Which requests get the token: the origin rules.

use crate::error::Error;
use http::{uri::Scheme, Uri};
use std::{fmt, net::IpAddr};

/// The host suffixes of the Patchworks API, trusted over `https` only.
const PATCHWORKS_DOMAINS: [&str; 2] = [".wearepatchworks.com", ".pwks.co"];

/// The origins the token may be sent to: Patchworks hosts over `https`, the login URL's origin,
/// and the origins the layer was told to trust ([`AuthLayer::trust_origin`]).
///
/// [`AuthLayer::trust_origin`]: crate::AuthLayer::trust_origin
#[derive(Clone, Debug)]
pub(crate) struct Scope {
    /// The login URL's origin first.
    origins: Vec<Origin>,
}

#[derive(Clone, Debug)]
struct Origin {
    https: bool,
    /// The authority as it was spelled (it carries no user information): a request spelled the
    /// same way is matched by one comparison, before the host and port are parsed.
    authority: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of `uri` (`what`, in messages), if the token and the credentials may go
    /// there: an absolute `https` URL, or `http` to a loopback host, without user information.
    fn of(uri: &Uri, what: &str) -> Result<Origin, Error> {
        let shown = Redacted(uri);
        let https = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTPS => Some(true),
            Some(scheme) if *scheme == Scheme::HTTP => Some(false),
            _ => None,
        };
        let (Some(https), Some(authority), Some(host)) = (https, uri.authority(), uri.host())
        else {
            return Err(Error::config(format!(
                "{what} {shown} is not an absolute http(s) URL; use https://host/..."
            )));
        };
        if authority.as_str().contains('@') {
            return Err(Error::config(format!(
                "{what} {shown} carries a user name or password; the layer sends the \
                 credentials itself: remove them from the URL"
            )));
        }
        let host = normalize(host).to_ascii_lowercase();
        if !https && !is_loopback(&host) {
            return Err(Error::config(format!(
                "{what} {shown} is plain-text HTTP to a host that is not loopback, which would \
                 send the credentials or the token unencrypted; use https://"
            )));
        }
        Ok(Origin {
            https,
            authority: authority.as_str().to_owned(),
            host,
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }

    #[inline]
    fn matches(&self, uri: &Uri, https: bool, authority: &str, host: &str) -> bool {
        self.https == https
            && (self.authority == authority
                || (self.host.eq_ignore_ascii_case(host)
                    && self.port == uri.port_u16().unwrap_or(if https { 443 } else { 80 })))
    }
}

impl Scope {
    /// The scope for this login URL and these trusted origins, if each is one the layer may
    /// send credentials or the token to (see [`Origin::of`]).
    pub(crate) fn new(login_url: &Uri, trusted: &[Uri]) -> Result<Scope, Error> {
        let mut origins = vec![Origin::of(login_url, "the login URL")?];
        for origin in trusted {
            origins.push(Origin::trusted(origin)?);
        }
        Ok(Scope { origins })
    }

    /// Whether a request to `uri` gets the token: a relative URI, a Patchworks host over
    /// `https`, the login URL's origin or a trusted one.
    #[inline]
    pub(crate) fn contains(&self, uri: &Uri) -> bool {
        let Some(authority) = uri.authority() else {
            // Relative: resolved against a base the caller chose, below this layer. Not a
            // network-path reference (`//host/..`, which names another host) nor `*`.
            return uri.scheme().is_none()
                && uri.path().starts_with('/')
                && !uri.path().starts_with("//");
        };
        let https = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTPS => true,
            Some(scheme) if *scheme == Scheme::HTTP => false,
            _ => return false,
        };
        let authority = authority.as_str();
        if https && patchworks_tail(authority) {
            return true;
        }
        let host = normalize(host(authority));
        (https
            && PATCHWORKS_DOMAINS
                .iter()
                .any(|domain| ends_with_ignore_case(host, domain)))
            || self
                .origins
                .iter()
                .any(|origin| origin.matches(uri, https, authority, host))
    }
}

/// Whether `origin` may be trusted ([`AuthLayer::trust_origin`]), and if not, why.
///
/// [`AuthLayer::trust_origin`]: crate::AuthLayer::trust_origin
pub(crate) fn trusted_origin(origin: &Uri) -> Result<(), Error> {
    Origin::trusted(origin).map(drop)
}

impl Origin {
    /// A trusted origin: as the login URL's, and nothing after the authority but `/`.
    fn trusted(origin: &Uri) -> Result<Origin, Error> {
        let checked = Origin::of(origin, "the trusted origin")?;
        if origin.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(Error::config(format!(
                "the trusted origin {} has a path; an origin is a scheme, a host and a port: \
                 use {}://{}",
                Redacted(origin),
                if checked.https { "https" } else { "http" },
                checked.authority
            )));
        }
        Ok(checked)
    }
}

/// A URI for messages and `Debug`: its user name and password, if any, replaced.
pub(crate) struct Redacted<'a>(pub(crate) &'a Uri);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        match uri.authority() {
            Some(authority) if authority.as_str().contains('@') => {
                if let Some(scheme) = uri.scheme_str() {
                    write!(f, "{scheme}://")?;
                }
                let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
                write!(f, "<redacted>@{host_port}")?;
                if let Some(path) = uri.path_and_query() {
                    write!(f, "{path}")?;
                }
                Ok(())
            }
            _ => write!(f, "{uri}"),
        }
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The host of an authority (`[userinfo@]host[:port]`), as `Authority::host` gives it.
///
/// Written out because this runs on every request, and `Authority::host`'s generic string
/// splitting costs several times the rest of the origin check.
#[inline]
fn host(authority: &str) -> &str {
    let start = authority
        .bytes()
        .rposition(|b| b == b'@')
        .map_or(0, |at| at + 1);
    let host_port = &authority[start..];
    let end = if host_port.starts_with('[') {
        host_port
            .bytes()
            .position(|b| b == b']')
            .map(|close| close + 1)
    } else {
        host_port.bytes().position(|b| b == b':')
    };
    &host_port[..end.unwrap_or(host_port.len())]
}

/// Whether an authority ends in a Patchworks host with no port: then that is its host, and
/// the request gets the token without the host being split out (a quarter of a warm request's
/// instructions, callgrind in BENCHMARKS.md). Any other authority is judged by its host.
#[inline]
fn patchworks_tail(authority: &str) -> bool {
    let bare = normalize(authority).as_bytes();
    PATCHWORKS_DOMAINS.iter().any(|domain| {
        let domain = domain.as_bytes();
        let Some(tail) = bare.len().checked_sub(domain.len() + 1) else {
            return false;
        };
        // Hosts come in lower case: one comparison of bytes before the one that ignores case.
        let (before, tail) = (bare[tail], &bare[tail + 1..]);
        before != b'@' && (tail == domain || tail.eq_ignore_ascii_case(domain))
    })
}

/// A host without the trailing dot of a fully qualified name.
#[inline]
fn normalize(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

#[inline]
fn ends_with_ignore_case(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len()
        && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

fn is_loopback(host: &str) -> bool {
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(login: &str) -> Result<Scope, Error> {
        Scope::new(&login.parse().unwrap(), &[])
    }

    fn contains(scope: &Scope, uri: &str) -> bool {
        scope.contains(&uri.parse().unwrap())
    }

    /// `scope` gives the token to each of `yes` and to none of `no`.
    fn assert_scope(scope: &Scope, yes: &[&str], no: &[&str]) {
        for uri in yes {
            assert!(contains(scope, uri), "{uri}");
        }
        for uri in no {
            assert!(!contains(scope, uri), "{uri}");
        }
    }

    #[test]
    fn login_url_must_be_https_or_loopback() {
        assert!(scope("https://svc-fabric.pwks.co/api/v1/login").is_ok());
        assert!(scope("http://127.0.0.1:8080/api/v1/login").is_ok());
        assert!(scope("http://127.9.9.9/login").is_ok());
        assert!(scope("http://localhost:3000/login").is_ok());
        assert!(scope("http://[::1]:3000/login").is_ok());
        for bad in [
            "http://svc-fabric.pwks.co/api/v1/login",
            "http://10.0.0.1/login",
            "http://localhost.evil.com/login",
            "http://127.0.0.1.nip.io/login",
            "/api/v1/login",
            "ftp://svc-fabric.pwks.co/login",
        ] {
            let err = scope(bad).unwrap_err();
            assert!(err.is_config(), "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn patchworks_hosts_over_https_only() {
        let scope = scope("https://svc-fabric.pwks.co/api/v1/login").unwrap();
        let yes = [
            "https://core.wearepatchworks.com/api/v1/flows",
            "https://START.WeArePatchworks.com/x",
            "https://app.wearepatchworks.com./x",
            "https://core.wearepatchworks.com:8443/x",
            "https://svc-fabric.pwks.co/api/v1/anything",
            "/api/v1/flows",
            "/",
        ];
        let no = [
            "http://core.wearepatchworks.com/api/v1/flows",
            "https://wearepatchworks.com.evil.com/x",
            "https://evilwearepatchworks.com/x",
            "https://wearepatchworks.com/x",
            "https://example.com/x",
            "https://user@example.com/x",
            "https://pwks.co.example.com/x",
            "//evil.example/api/v1/flows",
            "//core.wearepatchworks.com/api/v1/flows",
            "*",
        ];
        assert_scope(&scope, &yes, &no);
    }

    #[test]
    fn a_login_url_with_userinfo_is_refused_and_never_shown() {
        for url in [
            "https://ops:hunter2@svc-fabric.pwks.co/api/v1/login",
            "http://hunter2@127.0.0.1:8080/login",
        ] {
            let err = scope(url).unwrap_err();
            assert!(err.is_config());
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(err.to_string().contains("<redacted>@"), "{err}");
            let shown = Redacted(&url.parse().unwrap()).to_string();
            assert!(
                !shown.contains("hunter2") && shown.ends_with("/login"),
                "{shown}"
            );
        }
        let plain: Uri = "https://svc-fabric.pwks.co/api/v1/login".parse().unwrap();
        assert_eq!(Redacted(&plain).to_string(), plain.to_string());
    }

    #[test]
    fn the_patchworks_tail_is_only_ever_a_patchworks_host() {
        // The fast path says yes only where the host, split out, would.
        for authority in [
            "core.wearepatchworks.com",
            "CORE.WeArePatchworks.COM.",
            "u@core.wearepatchworks.com",
            "u:p@x.pwks.co",
            "u@.wearepatchworks.com",
            "@.pwks.co",
            ".pwks.co",
            "evil.com@x.pwks.co",
            "x.pwks.co@evil.com",
            "x.pwks.co:443",
            "wearepatchworks.com",
        ] {
            let host = normalize(host(authority));
            let by_host = PATCHWORKS_DOMAINS
                .iter()
                .any(|domain| ends_with_ignore_case(host, domain));
            assert!(!patchworks_tail(authority) || by_host, "{authority}");
        }
        assert!(patchworks_tail("core.wearepatchworks.com"));
        assert!(!patchworks_tail("u@.wearepatchworks.com"));
    }

    #[test]
    fn host_matches_http() {
        for uri in [
            "https://core.wearepatchworks.com/x",
            "https://core.wearepatchworks.com:8443/x",
            "https://user:pw@core.wearepatchworks.com:8443/x",
            "https://a@b@example.com/x",
            "http://[::1]:3000/x",
            "http://[::1]/x",
            "http://127.0.0.1/x",
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(
                host(uri.authority().unwrap().as_str()),
                uri.host().unwrap(),
                "{uri}"
            );
        }
    }

    #[test]
    fn the_login_origin_is_trusted_with_its_port() {
        let scope = scope("http://127.0.0.1:4000/api/v1/login").unwrap();
        assert!(contains(&scope, "http://127.0.0.1:4000/api/v1/flows"));
        assert!(!contains(&scope, "http://127.0.0.1:4001/api/v1/flows"));
        assert!(!contains(&scope, "https://127.0.0.1:4000/api/v1/flows"));
        assert!(!contains(&scope, "http://localhost:4000/api/v1/flows"));

        let scope = self::scope("https://auth.example.com/login").unwrap();
        assert!(contains(&scope, "https://auth.example.com:443/api"));
        assert!(!contains(&scope, "http://auth.example.com/api"));
    }

    #[test]
    fn the_login_origin_spelled_otherwise_is_the_same_origin() {
        // Spelled as the login URL: matched by one comparison. Spelled otherwise: by host and
        // port. Either way the same answers.
        let scope = scope("https://Auth.Example.com:443/login").unwrap();
        let yes = [
            "https://Auth.Example.com:443/api",
            "https://auth.example.com/api",
            "https://AUTH.EXAMPLE.COM./api",
        ];
        let no = [
            "http://Auth.Example.com:443/api",
            "https://Auth.Example.com:4430/api",
            "https://Auth.Example.co/api",
        ];
        assert_scope(&scope, &yes, &no);
        // A builder's `HTTPS` is not the standard scheme (`http` compares it unequal to
        // `Scheme::HTTPS`), and a connector need not encrypt it: no token.
        let built = Uri::builder()
            .scheme("HTTPS")
            .authority("Auth.Example.com:443")
            .path_and_query("/api")
            .build()
            .unwrap();
        assert!(!scope.contains(&built));
    }
}
