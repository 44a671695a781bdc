//! `connections`: a gRPC service that removes the links between user accounts
//! and their social / external logins, and publishes one `ConnectionRemoved`
//! event per removed identity through a transactional outbox.
//!
//! # Layout
//!
//! - [`cli`]: the `connections` command line (`serve`, `migrate`).
//! - [`config`]: typed settings built from flags and environment variables.
//! - [`app`]: wires database, services, reflection and health; runs the server.
//! - [`telemetry`]: the tracing subscriber.
//! - [`domain`]: the rules (validation, provider registry, ways to log in);
//!   plain Rust with no I/O.
//! - [`storage`]: SeaORM entities, migrations and the repository that owns
//!   every SQL statement and transaction.
//! - [`events`]: the outbox's sequencer, per-replica live fan-out, Subscribe
//!   stream tasks and retention.
//! - [`grpc`]: thin tonic adapters; proto types end there. Errors become
//!   statuses in `grpc::status` only.
//! - [`proto`]: code generated from `proto/connections/v1`.

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod storage;
pub mod telemetry;

/// Generated protobuf and gRPC code.
pub mod proto {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("connections.v1");
    }

    /// Encoded descriptors of `proto/`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/connections_descriptor.bin"));
}
