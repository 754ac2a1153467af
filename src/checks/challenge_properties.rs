//! Property tests over what the network controls: the header's bytes.

use crate::challenge::*;
use proptest::prelude::*;

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(value in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = bearer_error(&value);
    }

    /// A `Bearer` challenge with its `error` among other parameters, after other challenges,
    /// with any spacing and quoting: the error is found, exactly.
    #[test]
    fn the_error_is_found_wherever_it_stands(
        before in proptest::collection::vec(("[a-z]{1,8}", "[ -~]{0,12}"), 0..4),
        after in proptest::collection::vec(("[a-z]{1,8}", "[ -~]{0,12}"), 0..4),
        error in "[a-z_]{1,20}",
        quoted in any::<bool>(),
        other_scheme in proptest::option::of(("[A-Za-z]{1,8}", "[ -~]{0,12}")),
        space in "[ \t]{0,3}",
    ) {
        let mut elements = Vec::new();
        if let Some((scheme, realm)) = &other_scheme {
            if !scheme.eq_ignore_ascii_case("bearer") {
                elements.push(format!("{scheme} realm={}", quote(realm)));
            }
        }
        let mut params: Vec<String> = before
            .iter()
            .filter(|(k, _)| k != "error")
            .map(|(k, v)| format!("{k}{space}={space}{}", quote(v)))
            .collect();
        let error_value = if quoted { quote(&error) } else { error.clone() };
        params.push(format!("error={error_value}"));
        params.extend(
            after.iter().filter(|(k, _)| k != "error").map(|(k, v)| format!("{k}={}", quote(v))),
        );
        elements.push(format!("Bearer {}", params.join(&format!(",{space}"))));
        let value = elements.join(", ");
        prop_assert_eq!(bearer_error(value.as_bytes()), Some(error.into_bytes()), "{}", value);
    }
}
