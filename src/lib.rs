//! nativelink-lre: a local Bazel Remote Execution API v2 service.
//!
//! One shared content-addressed store per machine, an action cache with a
//! multi-user trust model, and hermetic execution of each action in
//! its own namespaces and cgroup. See README.md for the tour.

pub mod action_cache;
pub mod activation;
pub mod activity;
pub mod authority;
pub mod cas;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod config;
pub mod connection;
pub mod digest;
pub mod doctor;
pub mod execution;
pub mod instance;
pub mod io_error;
pub mod listener;
pub mod logging;
pub mod lookups;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod per_user;
pub mod private_dir;
pub mod proto;
pub mod quote;
pub mod resource;
pub mod sandbox;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod state_dir;

pub(crate) mod status;
pub mod trust;
pub mod umask;
pub mod uploads;
pub mod upstream;
