//! Integration tests: a real server on a random loopback port, spoken to
//! over gRPC, on SQLite always and on PostgreSQL when configured.

mod admin;
mod concurrency;
mod crash;
mod end_to_end;
mod events;
mod helpers;
mod hostile_input;
mod link_connection;
mod outage;
mod pg_cluster;
mod process;
mod remove_connection;
mod resource_bounds;
mod security;
mod server;
mod trace_context;
mod unlink_account;
