//! LinkConnection's rules (SPEC section 6): re-activate a soft-removed
//! mapping, refuse an identity or login ID owned by another account, and
//! the re-link policy (a hard-removed identity has no row left, so it is
//! free to be linked to any account of the site; a soft-removed one keeps
//! its row and stays bound to its account).

use super::{AccountView, DomainError, IdentityState, IdentityView};

/// What LinkConnection did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOutcome {
    pub identity: IdentityView,
    pub reactivated: bool,
    pub account: AccountView,
}

/// The stored mapping of the provider identity being linked, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExistingMapping {
    pub identity_id: i64,
    pub account_id: i64,
    pub state: IdentityState,
}

/// What LinkConnection writes for the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    /// No mapping exists: insert a new active identity.
    Create,
    /// The account's own mapping: make it active and refresh its data.
    Refresh { identity_id: i64, reactivated: bool },
}

/// Decides how `account_id` links a provider identity whose stored mapping
/// is `existing`.
pub fn plan_link(
    account_id: i64,
    existing: Option<ExistingMapping>,
) -> Result<LinkAction, DomainError> {
    match existing {
        None => Ok(LinkAction::Create),
        // Active and soft-removed mappings both stay bound to their account.
        Some(mapping) if mapping.account_id != account_id => {
            Err(DomainError::IdentityLinkedElsewhere)
        }
        Some(mapping) => Ok(LinkAction::Refresh {
            identity_id: mapping.identity_id,
            reactivated: mapping.state == IdentityState::SoftRemoved,
        }),
    }
}

/// Whether the login ID an identity brings must be added to the account:
/// `owner` is the account that has it now, if any. Another account's login
/// ID is refused.
pub fn login_id_needs_adding(
    account_id: i64,
    login_id: &str,
    owner: Option<i64>,
) -> Result<bool, DomainError> {
    match owner {
        None => Ok(true),
        Some(owner) if owner == account_id => Ok(false),
        Some(_) => Err(DomainError::LoginIdTaken {
            login_id: login_id.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(account_id: i64, state: IdentityState) -> Option<ExistingMapping> {
        Some(ExistingMapping {
            identity_id: 7,
            account_id,
            state,
        })
    }

    #[test]
    fn a_new_identity_is_created() {
        assert_eq!(plan_link(1, None), Ok(LinkAction::Create));
    }

    #[test]
    fn a_soft_removed_mapping_of_the_same_account_is_reactivated() {
        assert_eq!(
            plan_link(1, mapping(1, IdentityState::SoftRemoved)),
            Ok(LinkAction::Refresh {
                identity_id: 7,
                reactivated: true
            })
        );
        assert_eq!(
            plan_link(1, mapping(1, IdentityState::Active)),
            Ok(LinkAction::Refresh {
                identity_id: 7,
                reactivated: false
            })
        );
    }

    #[test]
    fn another_accounts_mapping_is_refused_even_when_soft_removed() {
        for state in [IdentityState::Active, IdentityState::SoftRemoved] {
            assert_eq!(
                plan_link(1, mapping(2, state)),
                Err(DomainError::IdentityLinkedElsewhere)
            );
        }
    }

    #[test]
    fn login_ids_of_other_accounts_are_refused() {
        assert_eq!(login_id_needs_adding(1, "a@x", None), Ok(true));
        assert_eq!(login_id_needs_adding(1, "a@x", Some(1)), Ok(false));
        assert!(matches!(
            login_id_needs_adding(1, "a@x", Some(2)),
            Err(DomainError::LoginIdTaken { .. })
        ));
    }
}
