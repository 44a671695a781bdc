//! The provider registry: which provider names exist, their aliases, their
//! family (which RPC removes them) and flags. It is data, built from defaults
//! and extendable by configuration, not a match arm per provider.

use std::collections::BTreeMap;

use super::DomainError;

/// Which RPC addresses a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderFamily {
    /// Social and SAML providers: RemoveConnection.
    Social,
    /// External-id providers: UnlinkAccount.
    ExternalId,
}

/// A provider resolved through the registry; `name` is canonical (lower case,
/// aliases replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub family: ProviderFamily,
    /// Ending the connection should also end the session at the provider.
    pub logout_requested: bool,
    /// Identities of this provider carry a sub-provider (Janrain).
    pub has_sub_providers: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    family: ProviderFamily,
    logout_requested: bool,
    has_sub_providers: bool,
}

pub const SAML_PREFIX: &str = "saml-";
pub const MAX_SUB_PROVIDER_CHARS: usize = 50;

const SOCIAL: &[&str] = &[
    "amazon",
    "blogger",
    "facebook",
    "foursquare",
    "googleplus",
    "instagram",
    "kakao",
    "line",
    "linkedin",
    "livedoor",
    "microsoft",
    "mixi",
    "naver",
    "netlog",
    "odnoklassniki",
    "orangefr",
    "paypaloauth",
    "qq",
    "renren",
    "sina",
    "spiceworks",
    "twitter",
    "vkontakte",
    "wechat",
    "wordpress",
    "xing",
    "yahoo",
    "yahoojapan",
];
const EXTERNAL_ID: &[&str] = &["sheridan", "sheridan staff", "janrain", "gigya"];
const WITH_SUB_PROVIDERS: &[&str] = &["janrain"];
const LOGOUT_REQUESTED: &[&str] = &["facebook", "yahoo", "googleplus", "linkedin"];
const ALIASES: &[(&str, &str)] = &[("messenger", "microsoft")];

/// Known providers and aliases.
#[derive(Debug, Clone)]
pub struct ProviderRegistry {
    providers: BTreeMap<String, Entry>,
    aliases: BTreeMap<String, String>,
}

impl Default for ProviderRegistry {
    fn default() -> Self {
        let mut registry = Self {
            providers: BTreeMap::new(),
            aliases: BTreeMap::new(),
        };
        for name in SOCIAL {
            registry.add(name, ProviderFamily::Social, false);
        }
        for name in EXTERNAL_ID {
            registry.add(name, ProviderFamily::ExternalId, false);
        }
        for name in WITH_SUB_PROVIDERS {
            if let Some(entry) = registry.providers.get_mut(*name) {
                entry.has_sub_providers = true;
            }
        }
        for name in LOGOUT_REQUESTED {
            if let Some(entry) = registry.providers.get_mut(*name) {
                entry.logout_requested = true;
            }
        }
        for (alias, target) in ALIASES {
            registry.aliases.insert((*alias).into(), (*target).into());
        }
        registry
    }
}

impl ProviderRegistry {
    /// Adds (or replaces) a provider.
    pub fn add(&mut self, name: &str, family: ProviderFamily, logout_requested: bool) {
        self.providers.insert(
            name.to_lowercase(),
            Entry {
                family,
                logout_requested,
                has_sub_providers: false,
            },
        );
    }

    /// Extends the registry from a configuration spec: comma-separated
    /// `name[:social|external][:logout]` items, e.g. `apple,okta:external`.
    pub fn extend_from_spec(&mut self, spec: &str) -> Result<(), String> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut parts = item.split(':');
            let name = parts.next().unwrap_or_default().to_lowercase();
            if name.is_empty() || name.len() > 64 {
                return Err(format!("bad provider name in {item:?}"));
            }
            let mut family = ProviderFamily::Social;
            let mut logout = false;
            for flag in parts {
                match flag {
                    "social" => family = ProviderFamily::Social,
                    "external" => family = ProviderFamily::ExternalId,
                    "logout" => logout = true,
                    other => return Err(format!("unknown provider flag {other:?} in {item:?}")),
                }
            }
            self.add(&name, family, logout);
        }
        Ok(())
    }

    /// Resolves a provider name given in a request: case-insensitive, aliases
    /// applied, `saml-<name>` accepted as social. `family` restricts the result
    /// to one family; a name of the other family is unknown to that RPC.
    pub fn resolve(
        &self,
        field: &'static str,
        input: &str,
        family: Option<ProviderFamily>,
    ) -> Result<Provider, DomainError> {
        if input.is_empty() {
            return Err(DomainError::MissingParameter { field });
        }
        let unknown = || DomainError::UnknownProvider {
            field,
            name: input.chars().take(64).collect(),
        };
        let lowered = input.to_lowercase();
        let canonical = self.aliases.get(&lowered).cloned().unwrap_or(lowered);
        let provider = if let Some(entry) = self.providers.get(&canonical) {
            Provider {
                name: canonical,
                family: entry.family,
                logout_requested: entry.logout_requested,
                has_sub_providers: entry.has_sub_providers,
            }
        } else if is_saml(&canonical) {
            // SAML sessions can be forcibly logged out (the JS seed).
            Provider {
                name: canonical,
                family: ProviderFamily::Social,
                logout_requested: true,
                has_sub_providers: false,
            }
        } else {
            return Err(unknown());
        };
        match family {
            Some(wanted) if wanted != provider.family => Err(unknown()),
            _ => Ok(provider),
        }
    }

    /// The canonical provider of a stored identity, if the registry knows it.
    pub fn lookup(&self, canonical: &str) -> Option<Provider> {
        self.resolve("provider", canonical, None).ok()
    }

    /// Whether a stored identity's provider belongs to `family`. Providers no
    /// longer in the registry count as social, so "remove all" still reaches them.
    pub fn family_of(&self, canonical: &str) -> ProviderFamily {
        self.lookup(canonical)
            .map_or(ProviderFamily::Social, |p| p.family)
    }

    pub fn logout_requested(&self, canonical: &str) -> bool {
        self.lookup(canonical).is_some_and(|p| p.logout_requested)
    }
}

fn is_saml(name: &str) -> bool {
    name.strip_prefix(SAML_PREFIX).is_some_and(|rest| {
        (1..=64).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    })
}

/// Validates a sub-provider name for an identity of `provider` (LinkConnection):
/// required for providers with sub-providers, empty for all others.
pub fn sub_provider_for(
    field: &'static str,
    provider: &Provider,
    input: &str,
) -> Result<String, DomainError> {
    if !provider.has_sub_providers {
        return if input.is_empty() {
            Ok(String::new())
        } else {
            Err(DomainError::invalid(
                field,
                format!("{} has no sub-providers; leave it empty", provider.name),
            ))
        };
    }
    sub_provider_name(field, input)
}

/// A sub-provider name: lower case, at most 50 characters, no white space
/// or control characters.
pub fn sub_provider_name(field: &'static str, input: &str) -> Result<String, DomainError> {
    if input.is_empty() {
        return Err(DomainError::MissingParameter { field });
    }
    if input.chars().count() > MAX_SUB_PROVIDER_CHARS {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {MAX_SUB_PROVIDER_CHARS} characters"),
        ));
    }
    if input
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c.is_uppercase())
    {
        return Err(DomainError::invalid(
            field,
            "must be a lower-case name without white space",
        ));
    }
    Ok(input.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn social(name: &str) -> Result<Provider, DomainError> {
        ProviderRegistry::default().resolve("provider", name, Some(ProviderFamily::Social))
    }

    #[test]
    fn social_names_match_case_insensitively_and_report_lower_case() {
        assert_eq!(social("FaceBook").map(|p| p.name), Ok("facebook".into()));
    }

    #[test]
    fn messenger_is_an_alias_of_microsoft() {
        assert_eq!(social("Messenger").map(|p| p.name), Ok("microsoft".into()));
    }

    #[test]
    fn saml_providers_need_a_valid_name() {
        assert_eq!(
            social("SAML-Okta_1").map(|p| p.name),
            Ok("saml-okta_1".into())
        );
        assert!(social("saml-").is_err());
        assert!(social("saml-a b").is_err());
        assert!(social(&format!("saml-{}", "a".repeat(65))).is_err());
        assert!(social(&format!("saml-{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn unknown_and_other_family_names_are_unknown_providers() {
        assert!(matches!(
            social("myspace"),
            Err(DomainError::UnknownProvider { .. })
        ));
        assert!(matches!(
            social("janrain"),
            Err(DomainError::UnknownProvider { .. })
        ));
        let registry = ProviderRegistry::default();
        assert!(
            registry
                .resolve("p", "facebook", Some(ProviderFamily::ExternalId))
                .is_err()
        );
        assert!(
            registry
                .resolve("p", "Sheridan Staff", Some(ProviderFamily::ExternalId))
                .is_ok()
        );
    }

    #[test]
    fn logout_is_requested_for_four_social_providers_and_every_saml_provider() {
        let registry = ProviderRegistry::default();
        let flagged: Vec<_> = SOCIAL
            .iter()
            .filter(|p| registry.logout_requested(p))
            .collect();
        assert_eq!(flagged, [&"facebook", &"googleplus", &"linkedin", &"yahoo"]);
        assert!(registry.logout_requested("saml-okta"));
        assert!(registry.logout_requested("saml-a_b-1"));
        assert!(!registry.logout_requested("janrain"));
    }

    #[test]
    fn only_janrain_has_sub_providers() {
        let registry = ProviderRegistry::default();
        let janrain = registry.lookup("janrain").unwrap();
        let gigya = registry.lookup("gigya").unwrap();
        assert_eq!(sub_provider_for("s", &janrain, "yahoo"), Ok("yahoo".into()));
        assert!(sub_provider_for("s", &janrain, "").is_err());
        assert!(sub_provider_for("s", &janrain, "Yahoo").is_err());
        assert_eq!(sub_provider_for("s", &gigya, ""), Ok(String::new()));
        assert!(sub_provider_for("s", &gigya, "yahoo").is_err());
    }

    #[test]
    fn configuration_extends_the_registry() {
        let mut registry = ProviderRegistry::default();
        registry
            .extend_from_spec("apple:logout, okta:external")
            .unwrap();
        assert!(registry.logout_requested("apple"));
        assert_eq!(registry.family_of("okta"), ProviderFamily::ExternalId);
        assert!(registry.extend_from_spec("x:weird").is_err());
    }
}
