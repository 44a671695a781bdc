//! Request strings parsed once into newtypes: past the doors nothing
//! handles a raw, unchecked identifier.

use super::DomainError;

/// Largest value of an "integer of at most 11 digits".
pub const MAX_ELEVEN_DIGITS: i64 = 99_999_999_999;

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Checks a required free-form identifier: present, bounded, printable.
fn checked_text(field: &'static str, value: &str, max_chars: usize) -> Result<String, DomainError> {
    if value.is_empty() {
        return Err(DomainError::MissingParameter { field });
    }
    if value.chars().count() > max_chars {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if has_control(value) {
        return Err(DomainError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    if value.trim() != value {
        return Err(DomainError::invalid(
            field,
            "must not start or end with white space",
        ));
    }
    Ok(value.to_owned())
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(field: &'static str, value: &str) -> Result<Self, DomainError> {
                checked_text(field, value, Self::MAX_CHARS).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_id!(
    /// A site's API key.
    ApiKey,
    128
);
text_id!(
    /// An account's id within its site.
    Uid,
    256
);
text_id!(
    /// The user's id at the provider.
    ProviderUid,
    256
);
text_id!(
    /// An email or username.
    LoginIdValue,
    256
);
text_id!(
    /// A context id (`cid`): a reporting category, at most 100 characters.
    ContextId,
    100
);
text_id!(
    /// An idempotency key (AIP-155).
    RequestId,
    128
);
text_id!(
    /// A durable event consumer's name.
    ConsumerName,
    128
);

impl ApiKey {
    /// API keys are opaque tokens: no white space at all.
    pub fn parse_key(field: &'static str, value: &str) -> Result<Self, DomainError> {
        let key = Self::parse(field, value)?;
        if key.0.chars().any(char::is_whitespace) {
            return Err(DomainError::invalid(field, "must not contain white space"));
        }
        Ok(key)
    }
}

/// Parses an optional idempotency key: empty means none.
pub fn optional_request_id(value: &str) -> Result<Option<RequestId>, DomainError> {
    if value.is_empty() {
        Ok(None)
    } else {
        RequestId::parse("request_id", value).map(Some)
    }
}

/// A positive integer of at most 11 digits (vhost, integer uid).
pub fn eleven_digit_id(field: &'static str, value: i64) -> Result<i64, DomainError> {
    match value {
        0 => Err(DomainError::MissingParameter { field }),
        v if v < 0 => Err(DomainError::invalid(field, "must be a positive integer")),
        v if v > MAX_ELEVEN_DIGITS => Err(DomainError::invalid(
            field,
            "must be an integer of at most 11 digits",
        )),
        v => Ok(v),
    }
}

/// A site's vhost: the integer id UnlinkAccount addresses it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vhost(i64);

impl Vhost {
    pub fn parse(field: &'static str, value: i64) -> Result<Self, DomainError> {
        eleven_digit_id(field, value).map(Self)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// The integer uid of UnlinkAccount, as the account's decimal `Uid`.
pub fn numeric_uid(field: &'static str, value: i64) -> Result<Uid, DomainError> {
    eleven_digit_id(field, value).map(|v| Uid(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_ids_refuse_empty_long_and_control_characters() {
        assert_eq!(
            Uid::parse("uid", ""),
            Err(DomainError::MissingParameter { field: "uid" })
        );
        assert!(Uid::parse("uid", &"x".repeat(257)).is_err());
        assert!(Uid::parse("uid", "a\nb").is_err());
        assert!(Uid::parse("uid", " a").is_err());
        assert_eq!(
            Uid::parse("uid", "u-1").map(Uid::into_string),
            Ok("u-1".into())
        );
    }

    #[test]
    fn cid_allows_exactly_one_hundred_characters() {
        assert!(ContextId::parse("cid", &"c".repeat(100)).is_ok());
        assert!(ContextId::parse("cid", &"c".repeat(101)).is_err());
        // Characters, not bytes.
        assert!(ContextId::parse("cid", &"é".repeat(100)).is_ok());
    }

    #[test]
    fn api_keys_have_no_white_space() {
        assert!(ApiKey::parse_key("api_key", "3_abc def").is_err());
        assert!(ApiKey::parse_key("api_key", "3_abc").is_ok());
    }

    #[test]
    fn eleven_digit_ids_are_positive_and_bounded() {
        assert!(Vhost::parse("vhost", 0).is_err());
        assert!(Vhost::parse("vhost", -5).is_err());
        assert!(Vhost::parse("vhost", 100_000_000_000).is_err());
        assert_eq!(
            Vhost::parse("vhost", MAX_ELEVEN_DIGITS).map(Vhost::get),
            Ok(MAX_ELEVEN_DIGITS)
        );
        assert_eq!(
            numeric_uid("uid", 42).map(Uid::into_string),
            Ok("42".into())
        );
    }
}
