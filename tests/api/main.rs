//! Integration tests against a real PostgreSQL (see helpers.rs). One binary, one module per feature.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod abuse;
mod alerts;
mod cache;
mod cache_gateway;
mod egress;
mod events;
mod gateway;
mod helpers;
mod http_basics;
mod hygiene;
mod keys;
mod logs;
mod models;
mod openapi;
mod outage;
mod providers;
mod replicas;
mod responses;
mod rotation;
mod secrets;
mod startup;
mod streaming;
mod surface;
