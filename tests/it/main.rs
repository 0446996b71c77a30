//! Integration tests: one binary (as in ripgrep), one module per concern.

mod golden;
