//! `connections`: a gRPC service that removes the links between user accounts
//! and their social / external logins, and publishes one `ConnectionRemoved`
//! event per removed identity through a transactional outbox.
//!
//! # Layout
//!
//! ```text
//! doors:      grpc/ (tonic)   http/ (axum: REST, CORS, SDK script)   relay/ (JetStream)
//!                 |  convert protocol <-> service types, map errors
//! services:   service/  one function per use case: request + CallContext -> result
//!                 |  uses access/ (callers, tokens, scopes, limits, call context)
//! domain:     domain/   rules, validation, plans; no I/O
//! storage:    storage/  SQL and transactions (the only place that knows the ORM)
//! events:     events/   sequencer, fan-out, subscriptions over storage
//! telemetry:  telemetry/ logs, traces, metrics; imports no door
//! ```
//!
//! Arrows point down only: a door imports services, access, domain and
//! `proto`; services import access, domain, storage and events; access
//! imports domain and storage (tokens); storage and events import domain and
//! telemetry; domain imports nothing of the crate.
//!
//! - [`cli`], [`config`]: the command line and typed settings.
//! - [`app`]: builds the database, services and doors; runs them until a
//!   shutdown signal.
//! - [`token_admin`]: `connections token create|list|revoke` and
//!   `connections user-token create|revoke`.
//! - [`app_key_admin`]: `connections app-key create|list|revoke`.
//! - [`action_link_admin`]: `connections action-link` (a signed unlink link).
//! - [`grpc`]: the gRPC door (handlers, conversions, the status map, the
//!   per-call and security layers, the path-to-permission table).
//! - [`http`]: the HTTP door (Gigya-compatible REST `socialize.removeConnection`,
//!   its error-code table, the per-call layer, CORS for the sites' browser
//!   origins, the browser SDK at `/sdk/connections.js`; Prometheus `/metrics`).
//! - [`relay`]: the JetStream door: publishes every event to NATS JetStream
//!   in position order, one leader per database (`--nats-url`).
//! - [`service`]: the application services every door calls.
//! - [`access`]: who is calling and what they may do; the call context.
//! - [`domain`]: the rules (SPEC sections 3 to 8) as plain functions.
//! - [`storage`]: entities, migrations, the repository.
//! - [`events`]: outbox sequencing and delivery to Subscribe streams.
//! - [`telemetry`]: subscriber, OTLP export, metrics, trace context.
//! - [`proto`]: code generated from `proto/connections/v1`, and the event
//!   codec shared by every door that sends events as protobuf.

pub mod access;
pub mod action_link_admin;
pub mod app;
pub mod app_key_admin;
pub mod cli;
pub mod config;
pub mod domain;
pub(crate) mod events;
pub(crate) mod grpc;
pub(crate) mod http;
pub mod relay;
pub(crate) mod service;
pub mod storage;
pub mod telemetry;
pub mod token_admin;

/// Generated protobuf and gRPC code.
pub mod proto {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("connections.v1");
    }

    pub mod codec;

    /// Encoded descriptors of `proto/`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/connections_descriptor.bin"));
}
