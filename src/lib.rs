//! reliablegpt: a reliability gateway for LLM apps. See `docs/ARCHITECTURE.md` for how the modules fit.

pub mod alerts;
pub mod api;
mod bounded;
pub mod cache;
pub mod config;
pub mod db;
pub mod egress;
pub mod engine;
pub mod mock_upstream;
pub mod object;
pub mod startup;
pub mod telemetry;
pub mod vault;
