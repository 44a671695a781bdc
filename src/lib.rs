//! `connections`: a gRPC service that removes the links between user accounts
//! and their social / external logins, and publishes one `ConnectionRemoved`
//! event per removed identity through a transactional outbox.
//!
//! # Layout
//!
//! - [`cli`]: the `connections` command line (`serve`, `migrate`, `token`).
//! - [`token_admin`]: what `connections token create|list|revoke` does.
//! - [`config`]: typed settings built from flags and environment variables.
//! - [`app`]: wires database, services, reflection and health; runs the server.
//! - [`telemetry`]: logs, traces and metrics: the subscriber, the per-call
//!   layer (call id, span, trace context), OTLP export, `/metrics`.
//! - [`domain`]: the rules (validation, provider registry, ways to log in);
//!   plain Rust with no I/O.
//! - [`storage`]: SeaORM entities, migrations and the repository that owns
//!   every SQL statement and transaction.
//! - [`events`]: the outbox's sequencer, per-replica live fan-out, Subscribe
//!   stream tasks and retention.
//! - [`grpc`]: thin tonic adapters; proto types end there. Errors become
//!   statuses in `grpc::status` only. `grpc::auth_layer` authenticates
//!   callers (bearer tokens), checks permissions and applies abuse limits.
//! - [`relay`]: the JetStream door: publishes every event to NATS JetStream
//!   in position order, one leader per database (`--nats-url`).
//! - [`proto`]: code generated from `proto/connections/v1`.

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod relay;
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
