//! Running actions on this machine.
//!
//! - `executor`: the pipeline of one Execute request, from cache lookup
//!   through the fair queue (`crate::scheduler`) and the sandbox
//!   (`crate::sandbox`, `crate::cgroup`) to the cached result;
//! - `operation`: the long-running operations clients watch, joined by
//!   identical requests;
//! - `action`: loading and checking an action's Action and Command;
//! - `placement`: an action's platform properties read against this
//!   worker's offer (limits, network, toolchain);
//! - `platform`: matching an action's platform against this worker's;
//! - `inputs`: validating an input tree and laying it out by hard link;
//! - `stamps`: the fixed times of the laid-out tree;
//! - `toolchain`: the read-only paths in effect and their identity;
//! - `outputs`: ingesting outputs into the store by rename;
//! - `limits`: limits an action asks for that this host cannot enforce;
//! - `logs`: the output of a running action, streamed while it runs;
//! - `check`: running cached actions again to compare their results;
//! - `uids`: host uids for running actions;
//! - `action_dir`: the per-action directory and its output streams;
//! - `supervise`: one sandboxed run, from spawn to cgroup removal;
//! - `result`: the ActionResult, its timeline and message;
//! - `error`: why an action produced no result.

pub mod action;
pub mod action_dir;
pub mod check;
pub mod command;
pub mod disk_limit;
pub mod error;
pub mod executor;
pub mod inputs;
pub mod limits;
pub mod logs;
pub mod operation;
pub mod outputs;
pub mod placement;
pub mod platform;
pub mod result;
pub mod run;
pub mod stamps;
pub mod supervise;
pub mod toolchain;
pub mod uids;
