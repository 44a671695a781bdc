//! Domain rules: plain Rust, no I/O, no tonic, no SeaORM.

pub mod account;
pub mod call;
pub mod error;
pub mod event;
pub mod ids;
pub mod providers;
pub mod redirect;
pub mod removal;

pub use account::{
    Account, Identity, IdentityState, LoginId, NewIdentity, NewLoginId, ProviderSession, Site,
    SiteSettings,
};
pub use call::CallContext;
pub use error::DomainError;
pub use event::{
    ConnectionRemoved, EventFilter, EventSource, RemovalMode, SequencedEvent, StartFrom, StreamItem,
};
pub use ids::{ApiKey, ConsumerName, ContextId, LoginIdValue, ProviderUid, RequestId, Uid, Vhost};
pub use providers::{Provider, ProviderFamily, ProviderRegistry};
pub use redirect::RedirectTarget;
