//! Property tests over what the network controls: the answer's bytes and the token's claims.

use crate::login::*;
use base64::Engine as _;
use proptest::prelude::*;
use std::time::SystemTime;

/// Whatever it is given, the parser answers a usable token or an error, and never panics.
fn check(body: &[u8]) {
    let now = SystemTime::now();
    match parse_answer(body, now) {
        Ok(issued) => {
            assert!(issued.header.is_sensitive());
            assert!(issued
                .header
                .to_str()
                .is_ok_and(|v| v.starts_with("Bearer ")));
            assert!(issued.lifetime >= MIN_LIFETIME && issued.lifetime <= MAX_LIFETIME);
        }
        Err(error) => assert!(error.is_malformed() || error.is_unsendable_token()),
    }
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:e}")),
        "-?[0-9]{1,400}(\\.[0-9]{1,20})?(e[+-]?[0-9]{1,4})?",
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&body);
    }

    #[test]
    fn arbitrary_expires_in(expires_in in json_number(), token in "[A-Za-z0-9._~+/=-]{0,64}") {
        check(format!(r#"{{"token":"{token}","expires_in":{expires_in}}}"#).as_bytes());
    }

    #[test]
    fn header_hostile_tokens(token in "\\PC{0,40}|[\\x00-\\x20\\x7f]{1,5}") {
        let body = serde_json::json!({"token": token, "expires_in": 60}).to_string();
        check(body.as_bytes());
        if let Ok(issued) = parse_answer(body.as_bytes(), SystemTime::now()) {
            // What was accepted is exactly what will be sent.
            let expected = format!("Bearer {token}");
            prop_assert_eq!(issued.header.as_bytes(), expected.as_bytes());
            prop_assert!(!token.bytes().any(|b| b.is_ascii_control() || b == b' '));
        }
    }

    #[test]
    fn deep_and_wide_json(depth in 0usize..4096, value in json_number()) {
        let body = format!(
            r#"{{"token":"t","expires_in":{}{}{}}}"#,
            "[".repeat(depth),
            value,
            "]".repeat(depth)
        );
        check(body.as_bytes());
    }

    #[test]
    fn arbitrary_jwt_claims(
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        exp in json_number(),
    ) {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let raw = format!("h.{}.s", engine.encode(&payload));
        let _ = jwt_exp(&raw);
        let claims = format!(r#"{{"exp":{exp}}}"#);
        let token = format!("h.{}.s", engine.encode(claims));
        let _ = jwt_exp(&token);
        check(format!(r#"{{"token":"{token}"}}"#).as_bytes());
    }
}
