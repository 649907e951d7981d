//! Processes the agent runs: their stdio, spawning, and exit handling.

pub mod stdio;

pub use stdio::Stdio;
