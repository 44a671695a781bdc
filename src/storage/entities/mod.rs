//! SeaORM entities, one per table.

pub mod account;
pub mod action_secret;
pub mod api_token;
pub mod app_key;
pub mod consumer;
pub mod context_id;
pub mod event;
pub mod event_sequence;
pub mod idempotency_key;
pub mod identity;
pub mod login_id;
pub mod request_nonce;
pub mod site;
