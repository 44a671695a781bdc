//! Integration tests: a real server on a random loopback port, spoken to
//! over gRPC, on SQLite always and on PostgreSQL when configured.

mod action_link;
mod admin;
mod browser;
mod browser_sdk;
mod concurrency;
mod crash;
mod deadlines;
mod disk_full;
mod end_to_end;
mod events;
mod group_commit;
mod helpers;
mod hostile_input;
mod link_connection;
mod logs;
mod outage;
mod pg_cluster;
mod pool;
mod process;
mod relay;
mod remove_connection;
mod resource_bounds;
mod rest;
mod security;
mod server;
mod startup_errors;
mod trace_context;
mod unlink_account;
mod unreadable_event;
mod write_batch;
