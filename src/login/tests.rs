use super::*;

fn jwt(claims: &str) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.sig",
        engine.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        engine.encode(claims)
    )
}

fn parse(body: &str) -> Result<Issued, Error> {
    parse_answer(body.as_bytes(), UNIX_EPOCH + Duration::from_secs(1_000_000))
}

#[test]
fn reads_token_and_expires_in() {
    let issued = parse(r#"{"message":"ok","token":"abc.def.ghi","expires_in":86400}"#).unwrap();
    assert_eq!(issued.header, "Bearer abc.def.ghi");
    assert!(issued.header.is_sensitive());
    assert_eq!(issued.lifetime, Duration::from_secs(86400));
}

#[test]
fn falls_back_to_jwt_exp_then_to_a_day() {
    let token = jwt(r#"{"sub":"x","exp":1003600}"#);
    let issued = parse(&format!(r#"{{"token":"{token}"}}"#)).unwrap();
    assert_eq!(issued.lifetime, Duration::from_secs(3600));

    let issued = parse(&format!(r#"{{"token":"{token}","expires_in":null}}"#)).unwrap();
    assert_eq!(issued.lifetime, Duration::from_secs(3600));

    let issued = parse(r#"{"token":"opaque-token"}"#).unwrap();
    assert_eq!(issued.lifetime, DEFAULT_LIFETIME);

    let expired = jwt(r#"{"exp":999000}"#);
    assert!(parse(&format!(r#"{{"token":"{expired}"}}"#))
        .unwrap_err()
        .is_malformed());
}

#[test]
fn refuses_unusable_expiries() {
    for (expires_in, fault) in [
        ("0", "less than one second"),
        ("-5", "less than one second"),
        ("0.5", "less than one second"),
        ("\"0.5\"", "less than one second"),
        ("true", "not a number"),
        ("\"soon\"", "not a number"),
        ("\"inf\"", "not a number"),
        ("\"NaN\"", "not a number"),
        ("\"\"", "not a number"),
        ("[86400]", "not a number"),
        ("1e400", "too large"),
        ("\"1e400\"", "too large"),
    ] {
        let body = format!(r#"{{"token":"t","expires_in":{expires_in}}}"#);
        let error = parse(&body).unwrap_err();
        assert!(error.is_malformed(), "{expires_in}");
        assert!(error.to_string().contains(fault), "{expires_in}: {error}");
    }
    for expires_in in ["\"86400\"", "\" 86400 \"", "86400.0", "8.64e4"] {
        let body = format!(r#"{{"token":"t","expires_in":{expires_in}}}"#);
        assert_eq!(
            parse(&body).unwrap().lifetime,
            Duration::from_secs(86400),
            "{expires_in}"
        );
    }
    let huge = parse(r#"{"token":"t","expires_in":1e300}"#).unwrap();
    assert_eq!(huge.lifetime, MAX_LIFETIME);
    let fractional = parse(r#"{"token":"t","expires_in":1.5}"#).unwrap();
    assert_eq!(fractional.lifetime, Duration::from_millis(1500));
}

#[test]
fn refuses_header_hostile_tokens() {
    for token in [
        "",
        "a b",
        "a\\r\\nX-Evil: 1",
        "tab\\there",
        "caf\u{e9}",
        "=",
        "a=b",
    ] {
        let body = format!(r#"{{"token":"{token}","expires_in":60}}"#);
        assert!(parse(&body).unwrap_err().is_unsendable_token(), "{token:?}");
    }
    assert!(parse(r#"{"token":"YWJj==","expires_in":60}"#).is_ok());
}

#[test]
fn refuses_what_is_not_an_answer() {
    for body in [
        "",
        "null",
        "[]",
        "{",
        "\u{0}",
        r#"{"token":5}"#,
        r#"{"message":"hi"}"#,
    ] {
        assert!(parse(body).unwrap_err().is_malformed(), "{body:?}");
    }
    for (body, fault) in [
        (r#"{"token":"a","token":"b"}"#, "a field twice"),
        (
            r#"{"token":"a","expires_in":60,"expires_in":61}"#,
            "a field twice",
        ),
        ("[]", "not a JSON object"),
        ("{", "not valid JSON"),
        (r#"{"token":"a","message":1e400}"#, ""),
    ] {
        match parse(body) {
            Err(error) => assert!(error.to_string().contains(fault), "{body}: {error}"),
            Ok(_) => assert!(fault.is_empty(), "{body} was accepted"),
        }
    }
    let deep = "[".repeat(100_000);
    assert!(parse(&deep).unwrap_err().is_malformed());
    assert!(parse_answer(&[0xff, 0xfe, 0x00], SystemTime::now()).is_err());
}

#[test]
fn jwt_exp_ignores_what_is_not_a_jwt() {
    assert_eq!(jwt_exp("opaque"), None);
    assert_eq!(jwt_exp("a.b"), None);
    assert_eq!(jwt_exp("a.!!!.c"), None);
    assert_eq!(jwt_exp("a.b.c.d"), None);
    assert_eq!(jwt_exp(&jwt(r#"{"exp":"soon"}"#)), None);
    assert_eq!(jwt_exp(&jwt(r#"{"exp":42}"#)), Some(42.0));
}
