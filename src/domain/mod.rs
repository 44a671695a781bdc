//! Domain rules: plain Rust, no I/O, no tonic, no SeaORM, no tokio.

pub mod account;
pub mod call;
pub mod error;
pub mod event;
pub mod ids;
pub mod input;
pub mod link;
pub mod providers;
pub mod redirect;
pub mod removal;

pub use account::{
    Account, AccountView, Identity, IdentityState, IdentityView, LoginId, NewIdentity, NewLoginId,
    ProviderSession, Site, SiteSettings,
};
pub use call::CallOrigin;
pub use error::DomainError;
pub use event::{
    ConnectionRemoved, EventFilter, EventSource, RemovalMode, SequencedEvent, StartFrom, StreamItem,
};
pub use ids::{ApiKey, ConsumerName, ContextId, LoginIdValue, ProviderUid, RequestId, Uid, Vhost};
pub use providers::{Provider, ProviderFamily, ProviderRegistry};
pub use redirect::RedirectTarget;
