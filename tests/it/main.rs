//! Integration tests: one binary (as in ripgrep), one module per concern.

mod checkpoint;
mod compare;
mod explain;
mod golden;
mod hostile;
mod model_check;
mod parallel;
mod properties;
mod restate;
mod secrets;
