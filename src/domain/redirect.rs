//! Redirect safety for UnlinkAccount (no open redirects) and the site
//! setting it is checked against.

use url::Url;

use super::{DomainError, error::shown};

pub const MAX_REDIRECT_CHARS: usize = 100;

/// A redirect target that passed the checks: a local path or an allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectTarget(String);

impl RedirectTarget {
    /// `redirect_url` is a path starting with a single `/`, or an absolute
    /// http(s) URL whose origin is one of `allowed_origins` (normalised, as
    /// `normalize_origin` returns them).
    pub fn parse(value: &str, allowed_origins: &[String]) -> Result<Self, DomainError> {
        const FIELD: &str = "redirect_url";
        if value.is_empty() {
            return Err(DomainError::MissingParameter { field: FIELD });
        }
        if value.chars().count() > MAX_REDIRECT_CHARS {
            return Err(DomainError::invalid(
                FIELD,
                format!("must be at most {MAX_REDIRECT_CHARS} characters"),
            ));
        }
        let refuse = |why: &str| DomainError::RedirectNotAllowed {
            description: why.to_owned(),
        };
        // Browsers treat `\` as `/` and drop tabs and newlines, which turns
        // harmless-looking paths into protocol-relative URLs.
        if value
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
        {
            return Err(refuse(
                "must not contain white space, control characters or backslashes",
            ));
        }
        if let Some(rest) = value.strip_prefix('/') {
            if rest.starts_with('/') {
                return Err(refuse("a path must start with a single '/'"));
            }
            return Ok(Self(value.to_owned()));
        }
        let url = Url::parse(value)
            .map_err(|_| refuse("must be a path starting with '/' or an absolute http(s) URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse("only http and https URLs are allowed"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("must not contain credentials"));
        }
        let origin = url.origin().ascii_serialization();
        if !allowed_origins.contains(&origin) {
            return Err(refuse(
                "the URL's origin is not in the site's allowed_redirect_origins",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Longest allowed origin: a DNS name is at most 253 characters.
pub const MAX_ORIGIN_CHARS: usize = 300;

/// Normalises a site's allowed origin (`scheme://host[:port]`, http or https,
/// nothing else) to the form `RedirectTarget::parse` compares against.
pub fn normalize_origin(value: &str) -> Result<String, DomainError> {
    normalize_origin_of("allowed_redirect_origins", value)
}

/// [`normalize_origin`] for an origin list of another field (e.g.
/// `allowed_browser_origins`); also the form a browser's `Origin` header
/// is compared in.
pub fn normalize_origin_of(field: &'static str, value: &str) -> Result<String, DomainError> {
    let invalid = || {
        DomainError::invalid(
            field,
            format!(
                "{} is not an origin of the form scheme://host[:port] with scheme http or https \
                 (no wildcards)",
                shown(value)
            ),
        )
    };
    if value.chars().count() > MAX_ORIGIN_CHARS
        || value
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err(invalid());
    }
    let url = Url::parse(value).map_err(|_| invalid())?;
    let bare = url.path() == "/" && !value.ends_with('/');
    if !matches!(url.scheme(), "http" | "https")
        || url.host().is_none()
        // `*` is no wildcard here: such an origin could never match, so it is
        // a configuration mistake, refused like `*` alone.
        || url.host_str().is_some_and(|h| h.contains('*'))
        || !url.username().is_empty()
        || url.password().is_some()
        || !bare
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(invalid());
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec![
            normalize_origin("https://www.Example.com").unwrap(),
            normalize_origin("http://localhost:8080").unwrap(),
        ]
    }

    #[test]
    fn local_paths_and_allowed_origins_pass() {
        for ok in [
            "/userprofile",
            "/",
            "/a/b?x=1#frag",
            "https://www.example.com/profile",
            "https://WWW.EXAMPLE.COM:443/x",
            "http://localhost:8080/done",
        ] {
            assert_eq!(
                RedirectTarget::parse(ok, &allowed()).map(RedirectTarget::into_string),
                Ok(ok.to_owned()),
                "{ok}"
            );
        }
    }

    #[test]
    fn hostile_redirects_are_refused() {
        for bad in [
            "//evil.com",
            "//evil.com/path",
            "/\\evil.com",
            "\\\\evil.com",
            "/\t/evil.com",
            "/\n/evil.com",
            "/ /evil.com",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "vbscript:msgbox",
            "https://evil.com/",
            "https://www.example.com.evil.com/",
            "https://evil.com#https://www.example.com",
            "https://user:pass@www.example.com/",
            "https://www.example.com@evil.com/",
            "http://www.example.com/",
            "https://www.example.com:8443/",
            "ftp://www.example.com/",
            "userprofile",
            "evil.com",
            "http:/evil.com",
            "https:evil.com",
            "http://localhost:8081/",
            "/x\u{0}y",
            "/x\u{7f}",
            "/x\u{2028}",
        ] {
            let result = RedirectTarget::parse(bad, &allowed());
            assert!(
                matches!(result, Err(DomainError::RedirectNotAllowed { .. })),
                "{bad:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn empty_and_overlong_redirects_name_the_field() {
        assert_eq!(
            RedirectTarget::parse("", &allowed()),
            Err(DomainError::MissingParameter {
                field: "redirect_url"
            })
        );
        let long = format!("/{}", "a".repeat(100));
        assert!(matches!(
            RedirectTarget::parse(&long, &allowed()),
            Err(DomainError::InvalidParameter {
                field: "redirect_url",
                ..
            })
        ));
        assert!(RedirectTarget::parse(&format!("/{}", "a".repeat(99)), &allowed()).is_ok());
    }

    #[test]
    fn origins_are_normalised_and_must_be_bare() {
        assert_eq!(
            normalize_origin("HTTPS://Example.COM:443"),
            Ok("https://example.com".into())
        );
        assert_eq!(
            normalize_origin("http://example.com:8080"),
            Ok("http://example.com:8080".into())
        );
        for bad in [
            "example.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://x.com/",
            "https://u@x.com",
            "https://x.com?q",
            "javascript:x",
            "*",
            "https://*",
            "https://*.example.com",
            "http://*:8080",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
        let huge = format!("https://{}.com/path", "a".repeat(5000));
        let message = normalize_origin(&huge).unwrap_err().to_string();
        assert!(message.len() < 300, "{message}");
    }
}
