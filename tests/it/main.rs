//! Integration tests: one binary (as in ripgrep), one module per concern.

mod checkpoint;
mod compare;
mod golden;
mod hostile;
mod model_check;
mod properties;
mod secrets;
