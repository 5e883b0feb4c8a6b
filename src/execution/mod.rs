//! Running actions: laying out their inputs and collecting their outputs.

pub mod executor;
pub mod inputs;
pub mod operation;
pub mod outputs;
