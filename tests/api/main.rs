//! Integration tests: a real server on a random loopback port, spoken to
//! over gRPC, on SQLite always and on PostgreSQL when configured.

mod admin;
mod events;
mod helpers;
mod link_connection;
mod server;
