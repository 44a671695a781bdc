//! Request parameters as `application/x-www-form-urlencoded` pairs (the
//! query string of a GET, the body of a POST), decoded strictly: a broken
//! percent escape or bytes that are not UTF-8 make the request malformed
//! instead of being silently replaced. Names are case-sensitive (`UID`,
//! `apiKey`), as the Gigya API has them.

/// The decoded pairs, in the order they came; duplicates kept (the
/// signature covers every pair).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// Decodes `a=1&b=x+y&c=%C3%A9`; empty segments are skipped.
    pub fn decode(input: &[u8]) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for segment in input.split(|b| *b == b'&') {
            if segment.is_empty() {
                continue;
            }
            let (name, value) = match segment.iter().position(|b| *b == b'=') {
                Some(at) => (&segment[..at], &segment[at + 1..]),
                None => (segment, &b""[..]),
            };
            pairs.push((decode_component(name)?, decode_component(value)?));
        }
        Ok(Self(pairs))
    }

    /// Appends other pairs (a POST's query string after its body).
    pub fn extend(&mut self, other: Self) {
        self.0.extend(other.0);
    }

    /// The value of `name`; a parameter sent twice is refused, since its
    /// two values could be read differently by a proxy and by us.
    pub fn get(&self, name: &'static str) -> Result<Option<&str>, Duplicate> {
        let mut found = self.0.iter().filter(|(n, _)| n == name);
        match (found.next(), found.next()) {
            (Some((_, value)), None) => Ok(Some(value.as_str())),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(Duplicate(name)),
        }
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// A parameter that appeared more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate(pub &'static str);

/// One name or value: `+` is a space, `%XX` a byte; the bytes must be UTF-8.
fn decode_component(input: &[u8]) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(input.len());
    let mut at = 0;
    while let Some(&byte) = input.get(at) {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = input
                    .get(at + 1..at + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "malformed percent-encoding in the parameters".to_owned())?;
                bytes.push(hex);
                at += 2;
            }
            other => bytes.push(other),
        }
        at += 1;
    }
    String::from_utf8(bytes).map_err(|_| "parameters must be UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(input: &str) -> Vec<(String, String)> {
        Params::decode(input.as_bytes()).unwrap().0
    }

    #[test]
    fn pairs_decode_with_plus_and_percent_escapes() {
        assert_eq!(
            pairs("UID=a+b&apiKey=3_%C3%A9&&flag&empty="),
            [
                ("UID".into(), "a b".into()),
                ("apiKey".into(), "3_é".into()),
                ("flag".into(), String::new()),
                ("empty".into(), String::new()),
            ]
        );
        assert_eq!(pairs("a=%2B%26%3D"), [("a".into(), "+&=".into())]);
    }

    #[test]
    fn broken_escapes_and_non_utf8_are_malformed() {
        for bad in [&b"a=%zz"[..], b"a=%4", b"a=%", b"a=%FF", b"\xff=1"] {
            assert!(Params::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_case_sensitive_and_duplicates_refused() {
        let params = Params::decode(b"uid=lower&UID=upper&x=1&x=2").unwrap();
        assert_eq!(params.get("UID"), Ok(Some("upper")));
        assert_eq!(params.get("missing"), Ok(None));
        assert_eq!(params.get("x"), Err(Duplicate("x")));
    }
}
